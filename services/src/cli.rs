//! The shared `main` of the demo services.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use distributed_logger::Telemetry;

use crate::{Chaos, Role, ServiceSpec, Topology};

/// Flags of every demo service. Each behaviour flag overrides the role's default (see
/// [`Chaos::defaults`]) and can be changed later through `POST /chaos`.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// Which service to run (`demo-service` only; `service-a`.. know who they are).
    #[arg(long, env = "DEMO_ROLE", value_enum)]
    pub role: Option<Role>,
    /// Which services service-a calls: `small` (B and C) or `large` (also auth, inventory,
    /// payment, which call cache and notification).
    #[arg(long, env = "DEMO_TOPOLOGY", value_enum, default_value = "small")]
    pub topology: Topology,
    /// Address to listen on [default: 127.0.0.1 and the service's demo port].
    #[arg(long, env = "DEMO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// OTLP/gRPC endpoint [default: OTEL_EXPORTER_OTLP_ENDPOINT, else http://127.0.0.1:4317].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Base URL of service-b [default: http://127.0.0.1:5001].
    #[arg(long, env = "DEMO_SERVICE_B")]
    pub service_b: Option<String>,
    /// Base URL of service-c [default: http://127.0.0.1:5002].
    #[arg(long, env = "DEMO_SERVICE_C")]
    pub service_c: Option<String>,
    /// Base URL of any other service, NAME=URL (repeatable; env: comma-separated)
    /// [default: 127.0.0.1 and the service's demo port].
    #[arg(long = "peer", env = "DEMO_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Heartbeat interval in seconds.
    #[arg(long, env = "DEMO_HEARTBEAT_SECS", default_value_t = 10.0)]
    pub heartbeat_secs: f64,
    /// Capacity of the SDK's span and log queues; beyond it records are dropped and counted
    /// [default: the SDK's, 2048].
    #[arg(long, env = "DEMO_OTLP_QUEUE_CAPACITY")]
    pub otlp_queue_capacity: Option<usize>,
    /// Time budget of one OTLP export call, retries included, ms [default: the SDK's, 10000].
    #[arg(long, env = "DEMO_OTLP_EXPORT_TIMEOUT_MS")]
    pub otlp_export_timeout_ms: Option<u64>,
    /// Factor applied to every simulated delay (e.g. 0.01 for fast tests) [default: 1].
    #[arg(long, env = "DEMO_LATENCY_SCALE")]
    pub latency_scale: Option<f64>,
    /// Shortest simulated work per request, ms [B: 100, C: 10].
    #[arg(long, env = "DEMO_LATENCY_MIN_MS")]
    pub latency_min_ms: Option<u64>,
    /// Longest simulated work per request, ms [B: 400, C: 30].
    #[arg(long, env = "DEMO_LATENCY_MAX_MS")]
    pub latency_max_ms: Option<u64>,
    /// Share of requests with an extra slow delay [B: 0.3, others 0].
    #[arg(long, env = "DEMO_SLOW_RATE")]
    pub slow_rate: Option<f64>,
    /// Shortest extra delay of a slow request, ms [default: 500].
    #[arg(long, env = "DEMO_SLOW_MIN_MS")]
    pub slow_min_ms: Option<u64>,
    /// Longest extra delay of a slow request, ms [default: 1000].
    #[arg(long, env = "DEMO_SLOW_MAX_MS")]
    pub slow_max_ms: Option<u64>,
    /// Share of requests that fail with 500 [B: 0.2, payment and notification 0.05,
    /// inventory 0.02, auth 0.01, others 0].
    #[arg(long, env = "DEMO_ERROR_RATE")]
    pub error_rate: Option<f64>,
    /// Response time above which a WARN is logged, ms [A: 1000, B: 800, others 500].
    #[arg(long, env = "DEMO_THRESHOLD_MS")]
    pub threshold_ms: Option<u64>,
    /// Start answering 503 to everything [default: false].
    #[arg(long, env = "DEMO_DOWN")]
    pub down: bool,
    /// Starting load level, 0-100 [C: 40, others 0].
    #[arg(long, env = "DEMO_LOAD")]
    pub load: Option<f64>,
    /// Load level the walk is pulled back toward [C: 40, others 0].
    #[arg(long, env = "DEMO_LOAD_BASELINE")]
    pub load_baseline: Option<f64>,
    /// Largest load step per tick, either way [C: 12, others 0].
    #[arg(long, env = "DEMO_LOAD_STEP")]
    pub load_step: Option<f64>,
    /// Share of the distance to the baseline the load moves back per tick [C: 0.05].
    #[arg(long, env = "DEMO_LOAD_PULL")]
    pub load_pull: Option<f64>,
    /// How often the load moves, ms [default: 1000].
    #[arg(long, env = "DEMO_LOAD_TICK_MS")]
    pub load_tick_ms: Option<u64>,
    /// Extra latency per point of load, ms [C: 4].
    #[arg(long, env = "DEMO_LOAD_LATENCY_MS")]
    pub load_latency_ms: Option<f64>,
    /// Load above which the service is overloaded [default: 80].
    #[arg(long, env = "DEMO_OVERLOAD_THRESHOLD")]
    pub overload_threshold: Option<f64>,
    /// Share of requests failing with OVERLOAD_ERROR (503) while overloaded [default: 0.2].
    #[arg(long, env = "DEMO_OVERLOAD_ERROR_RATE")]
    pub overload_error_rate: Option<f64>,
}

impl ServiceArgs {
    /// The role's defaults with the flags given on top, checked.
    pub fn chaos(&self, role: Role) -> anyhow::Result<Chaos> {
        let mut c = Chaos::defaults(role);
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field { c.$field = v; }
            )*};
        }
        set!(
            latency_scale,
            latency_min_ms,
            latency_max_ms,
            slow_rate,
            slow_min_ms,
            slow_max_ms,
            error_rate,
            threshold_ms,
            load,
            load_baseline,
            load_step,
            load_pull,
            load_tick_ms,
            load_latency_ms,
            overload_threshold,
            overload_error_rate
        );
        c.down |= self.down;
        if let Err(reason) = c.validate() {
            bail!("{reason} (flags and DEMO_* variables)");
        }
        Ok(c)
    }

    /// The base URL of `role`.
    pub fn url_of(&self, role: Role) -> anyhow::Result<String> {
        for peer in &self.peers {
            let Some((name, url)) = peer.split_once('=') else {
                bail!("--peer `{peer}` is not NAME=URL");
            };
            if Role::from_name(name).is_none() {
                bail!("--peer `{peer}`: no service is called `{name}`");
            }
            if name == role.name() {
                return Ok(url.trim_end_matches('/').to_string());
            }
        }
        let given = match role {
            Role::B => self.service_b.clone(),
            Role::C => self.service_c.clone(),
            _ => None,
        };
        Ok(given
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", role.port())))
    }
}

/// Parses flags, sets up telemetry, serves until Ctrl-C/SIGTERM, then shuts telemetry down
/// (DOWN registration, flush) and prints what could not be delivered. `role` is the
/// binary's own; `demo-service` passes none and takes `--role`.
pub async fn service_main(role: Option<Role>) -> anyhow::Result<()> {
    let args = ServiceArgs::parse();
    let role = match (role, args.role) {
        (Some(own), Some(asked)) if own != asked => {
            bail!(
                "this binary is {}; --role {} is for demo-service",
                own.name(),
                asked.name()
            )
        }
        (Some(role), _) | (None, Some(role)) => role,
        (None, None) => bail!("--role is required (service-a, service-b, ..., cache)"),
    };
    let chaos = args.chaos(role)?;
    let downstream = role
        .calls(args.topology)
        .into_iter()
        .map(|r| Ok((r.name().to_string(), args.url_of(r)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut builder = Telemetry::builder(role.name())
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_dependencies(role.declares(args.topology).iter().map(|r| r.name()))
        .with_heartbeat_interval(Duration::from_secs_f64(args.heartbeat_secs))
        .with_stderr(true);
    if let Some(endpoint) = &args.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(capacity) = args.otlp_queue_capacity {
        builder = builder.with_queue_capacity(capacity);
    }
    if let Some(ms) = args.otlp_export_timeout_ms {
        builder = builder.with_export_timeout(Duration::from_millis(ms));
    }
    let (guard, logger) = builder.init().context("set up telemetry")?;
    let spec = ServiceSpec {
        role,
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], role.port()))),
        downstream,
        chaos,
    };
    let served = crate::serve(spec, logger, shutdown_signal()).await;
    let report = tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .context("telemetry shutdown")?;
    eprintln!("{report}");
    served.context("serve")
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
