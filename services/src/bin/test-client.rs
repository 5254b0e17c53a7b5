//! Drives load through the demo services and prints what it saw.
//!
//! It first checks `/health` of every target and names any that is down (exit code 2). Then
//! it sends requests at a rate (open loop: on schedule whatever earlier ones are doing, with
//! latency counted from the scheduled time) or at a concurrency, for a duration or a count,
//! over a weighted mix of endpoints, with a progress bar on a terminal. It ends with a table
//! per service and endpoint (requests, success rate, p50/p95/p99) and the trace ids of the
//! slowest and failed requests, as viewer links when a viewer is up.
//!
//! Exit code: 0 when the run happened (whatever the services answered), 2 when it could not
//! (bad flags, a target down), 1 on any other error.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dlog_services::client::{check_health, run_load, Endpoint, LoadPlan, Pace};
use dlog_services::{Role, Topology};

#[derive(Debug, Parser)]
#[command(name = "test-client", about = "Drives load through the demo services")]
struct Args {
    /// An endpoint of the mix, SERVICE=URL[*WEIGHT] (repeatable; env: comma-separated)
    /// [default: service-a's /work *8, service-b's and service-c's *1; with --topology large
    /// also every other service's *1].
    #[arg(long = "target", env = "TEST_CLIENT_TARGETS", value_delimiter = ',')]
    targets: Vec<String>,
    /// Which demo services the default mix and health checks cover: small (A, B, C) or large
    /// (also inventory, payment, notification, auth, cache).
    #[arg(
        long,
        env = "TEST_CLIENT_TOPOLOGY",
        value_enum,
        default_value = "small"
    )]
    topology: Topology,
    /// Another service whose /health must answer before the run, NAME=BASE_URL (repeatable).
    #[arg(long = "check", env = "TEST_CLIENT_CHECKS", value_delimiter = ',')]
    checks: Vec<String>,
    /// Requests per second, sent on schedule (open loop) [default: 10 unless --concurrency].
    #[arg(long, env = "TEST_CLIENT_RATE", conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Requests outstanding at once, each sent when one returns (closed loop).
    #[arg(long, env = "TEST_CLIENT_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Number of requests [default: 100 unless --duration].
    #[arg(long, env = "TEST_CLIENT_REQUESTS")]
    requests: Option<u64>,
    /// Seconds to send for (with --requests, whichever ends first).
    #[arg(long, env = "TEST_CLIENT_DURATION_SECS")]
    duration_secs: Option<f64>,
    /// At a rate: most requests outstanding; a request due while this many are outstanding
    /// waits, and the wait counts in its latency.
    #[arg(long, env = "TEST_CLIENT_MAX_IN_FLIGHT", default_value_t = 1000)]
    max_in_flight: usize,
    /// Timeout of one request, seconds.
    #[arg(long, env = "TEST_CLIENT_TIMEOUT_SECS", default_value_t = 30.0)]
    timeout_secs: f64,
    /// Viewer base URL for trace links [default: http://127.0.0.1:16686 when it answers].
    #[arg(long, env = "TEST_CLIENT_VIEWER")]
    viewer: Option<String>,
    /// OTLP/gRPC endpoint for the client's own spans [default: OTEL_EXPORTER_OTLP_ENDPOINT,
    /// else http://127.0.0.1:4317].
    #[arg(long)]
    endpoint: Option<String>,
    /// Send no telemetry (the report then has no trace ids).
    #[arg(long, env = "TEST_CLIENT_NO_TELEMETRY")]
    no_telemetry: bool,
}

const DEFAULT_VIEWER: &str = "http://127.0.0.1:16686";

fn base_url(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}")
}

fn main() -> std::process::ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<u8> {
    let endpoints: Vec<Endpoint> = if args.targets.is_empty() {
        let roles: &[Role] = match args.topology {
            Topology::Small => &[Role::A, Role::B, Role::C],
            Topology::Large => &Role::ALL,
        };
        roles
            .iter()
            .map(|r| Endpoint {
                service: r.name().to_string(),
                url: format!("http://127.0.0.1:{}/work", r.port()),
                weight: if *r == Role::A { 8 } else { 1 },
            })
            .collect()
    } else {
        match args
            .targets
            .iter()
            .map(|t| Endpoint::parse(t))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(e) => e,
            Err(reason) => {
                eprintln!("error: --target {reason}");
                return Ok(2);
            }
        }
    };
    // Every service the mix sends to, and those named by --check, answer /health first.
    let mut health: Vec<(String, String)> = Vec::new();
    for e in &endpoints {
        let target = (e.service.clone(), base_url(&e.url));
        if !health.contains(&target) {
            health.push(target);
        }
    }
    for c in &args.checks {
        let Some((name, url)) = c.split_once('=') else {
            eprintln!("error: --check `{c}` is not NAME=BASE_URL");
            return Ok(2);
        };
        let target = (name.to_string(), url.trim_end_matches('/').to_string());
        if !health.contains(&target) {
            health.push(target);
        }
    }
    if args.targets.is_empty() && args.checks.is_empty() && args.topology == Topology::Large {
        // Services only reached through others must be up too.
        for r in Role::ALL {
            let target = (
                r.name().to_string(),
                format!("http://127.0.0.1:{}", r.port()),
            );
            if !health.contains(&target) {
                health.push(target);
            }
        }
    }
    let down = check_health(&health, Duration::from_secs(3)).await;
    if !down.is_empty() {
        for (name, why) in &down {
            eprintln!("{name} is down: {why}");
        }
        eprintln!(
            "cannot run: {} of {} targets are down",
            down.len(),
            health.len()
        );
        return Ok(2);
    }
    eprintln!("{} targets healthy", health.len());

    let pace = match (args.rate, args.concurrency) {
        (_, Some(0)) => {
            eprintln!("error: --concurrency must be at least 1");
            return Ok(2);
        }
        (_, Some(n)) => Pace::Concurrency(n),
        (Some(r), None) if !(r > 0.0 && r.is_finite()) => {
            eprintln!("error: --rate must be above 0");
            return Ok(2);
        }
        (Some(r), None) => Pace::Rate(r),
        (None, None) => Pace::Rate(10.0),
    };
    let duration = match args.duration_secs {
        Some(s) if !(s > 0.0 && s.is_finite()) => {
            eprintln!("error: --duration-secs must be above 0");
            return Ok(2);
        }
        other => other.map(Duration::from_secs_f64),
    };
    let requests = match (args.requests, duration) {
        (None, None) => Some(100),
        (r, _) => r,
    };
    let plan = LoadPlan {
        endpoints,
        pace,
        requests,
        duration,
        max_in_flight: args.max_in_flight.max(1),
        timeout: Duration::from_secs_f64(args.timeout_secs.clamp(0.001, 3600.0)),
    };

    let telemetry = if args.no_telemetry {
        None
    } else {
        let mut builder = distributed_logger::Telemetry::builder("test-client")
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_dependencies(health.iter().map(|(name, _)| name.clone()))
            .with_heartbeat_interval(Duration::from_secs(10));
        if let Some(endpoint) = &args.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        Some(builder.init().context("set up telemetry")?.0)
    };

    let bar = if std::io::stderr().is_terminal() {
        let bar = match (requests, duration) {
            (Some(n), _) => indicatif::ProgressBar::new(n),
            (None, _) => indicatif::ProgressBar::no_length(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let report = {
        let (bar, failures) = (bar.clone(), failures.clone());
        run_load(&plan, move |o| {
            if !o.ok() {
                let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} failed"));
            }
            bar.inc(1);
        })
        .await
    };
    bar.finish_and_clear();

    let viewer = match args.viewer {
        Some(v) => Some(v),
        None => viewer_up(DEFAULT_VIEWER)
            .await
            .then(|| DEFAULT_VIEWER.to_string()),
    };
    print!("{}", report.render(viewer.as_deref()));
    if let Some(guard) = telemetry {
        let shutdown = tokio::task::spawn_blocking(move || guard.shutdown())
            .await
            .context("telemetry shutdown")?;
        eprintln!("{shutdown}");
    }
    Ok(0)
}

/// Whether something answers HTTP at `url` (a viewer that is up).
async fn viewer_up(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap_or_default();
    client.get(url).send().await.is_ok()
}
