//! Cost on the application's thread per `tracing` event and per span: this SDK's setup next
//! to the stock `tracing-opentelemetry` + `opentelemetry-appender-tracing` setup with the
//! SDK's stock batch processors, in the same run, both exporting to a sink that discards.
//!
//! A second table shows delivery against a slow collector: spans offered at a fixed rate to an
//! exporter that answers after 200 ms, with the default queue, for 1 (the stock processors'
//! behaviour) and more exports in flight.
//!
//! Run: `cargo bench -p distributed-logger --bench overhead`. Prints Markdown tables; the
//! figures are recorded in `docs/benchmarks/sdk.md`. Nothing is asserted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_logger::Telemetry;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{BatchLogProcessor, LogBatch, LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

/// Operations per measured round.
const OPS: u64 = 20_000;
/// Measured rounds per setup and workload (after one warm-up round). The minimum and the
/// median are reported: on a shared 2-core machine other processes only ever add time, so
/// the minimum is the steadiest comparison.
const ROUNDS: usize = 21;
/// Queue capacity of both setups: a round fits, so neither setup drops (drops are cheaper
/// than exports and would flatter whoever drops more).
const QUEUE: usize = 65_536;

#[derive(Debug, Clone, Default)]
struct DiscardSpans(Arc<AtomicU64>);

impl SpanExporter for DiscardSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct DiscardLogs(Arc<AtomicU64>);

impl LogExporter for DiscardLogs {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        self.0
            .fetch_add(batch.iter().count() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Answers every export after `SLOW_ANSWER`, counting what it accepted.
#[derive(Debug, Clone, Default)]
struct SlowSpans(Arc<AtomicU64>);

/// Answer time of the slow collector.
const SLOW_ANSWER: Duration = Duration::from_millis(200);
/// Offered rate and duration of the slow-collector runs.
const SLOW_RATE_PER_SEC: u64 = 6_000;
const SLOW_SECONDS: u64 = 3;

impl SpanExporter for SlowSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        tokio::time::sleep(SLOW_ANSWER).await;
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Offers `SLOW_RATE_PER_SEC` spans/s for `SLOW_SECONDS` to a collector answering after
/// `SLOW_ANSWER`, with the default queue; returns (offered, delivered, dropped).
fn slow_collector(concurrent_exports: usize) -> (u64, u64, u64) {
    let sink = SlowSpans::default();
    let telemetry = Telemetry::builder("bench-slow")
        .with_span_exporter(sink.clone())
        .with_log_exporter(DiscardLogs::default())
        .with_max_concurrent_exports(concurrent_exports)
        .with_stderr(false)
        .with_shutdown_timeout(Duration::from_secs(60))
        .build()
        .expect("build telemetry");
    let tick = Duration::from_millis(10);
    let per_tick = SLOW_RATE_PER_SEC / 100;
    let mut offered = 0;
    let mut next = Instant::now();
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        for _ in 0..SLOW_SECONDS * 100 {
            for _ in 0..per_tick {
                tracing::info_span!("operation").in_scope(|| {});
                offered += 1;
            }
            next += tick;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    });
    let report = telemetry.shutdown();
    (
        offered,
        sink.0.load(Ordering::Relaxed),
        report.stats.dropped_spans,
    )
}

struct Setup {
    name: &'static str,
    dispatch: Dispatch,
    spans: DiscardSpans,
    logs: DiscardLogs,
    flush: Box<dyn Fn()>,
    // Keeps the pipeline alive.
    _keep: Box<dyn std::any::Any>,
}

fn resource() -> Resource {
    Resource::builder_empty().with_service_name("bench").build()
}

fn stock() -> Setup {
    let spans = DiscardSpans::default();
    let logs = DiscardLogs::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(spans.clone())
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(QUEUE)
                        .build(),
                )
                .build(),
        )
        .with_resource(resource())
        .build();
    let logger_provider = SdkLoggerProvider::builder()
        .with_log_processor(
            BatchLogProcessor::builder(logs.clone())
                .with_batch_config(
                    opentelemetry_sdk::logs::BatchConfigBuilder::default()
                        .with_max_queue_size(QUEUE)
                        .build(),
                )
                .build(),
        )
        .with_resource(resource())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("bench")))
        .with(OpenTelemetryTracingBridge::new(&logger_provider));
    let (tp, lp) = (tracer_provider.clone(), logger_provider.clone());
    Setup {
        name: "stock",
        dispatch: Dispatch::new(subscriber),
        spans,
        logs,
        flush: Box::new(move || {
            let _ = tp.force_flush();
            let _ = lp.force_flush();
        }),
        _keep: Box::new((tracer_provider, logger_provider)),
    }
}

fn ours(tracked_inactivity: bool) -> Setup {
    let spans = DiscardSpans::default();
    let logs = DiscardLogs::default();
    let telemetry = Arc::new(
        Telemetry::builder("bench")
            .with_tracked_inactivity(tracked_inactivity)
            .with_span_exporter(spans.clone())
            .with_log_exporter(logs.clone())
            .with_queue_capacity(QUEUE)
            .with_stderr(false)
            .with_env_filter("info")
            .with_heartbeat_interval(Duration::from_secs(3600))
            .build()
            .expect("build telemetry"),
    );
    let flusher = Arc::clone(&telemetry);
    Setup {
        name: if tracked_inactivity {
            "distributed_logger (busy/idle tracked)"
        } else {
            "distributed_logger"
        },
        dispatch: telemetry.dispatch().clone(),
        spans,
        logs,
        flush: Box::new(move || {
            flusher.flush(Duration::from_secs(30));
        }),
        _keep: Box::new(telemetry),
    }
}

#[derive(Clone, Copy)]
enum Workload {
    /// `info!` with two fields inside an entered span.
    Event,
    /// A child span with one field: create, enter, exit, close.
    Span,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Event => "log event (`info!` + 2 fields, in a span)",
            Workload::Span => "span (`info_span!` + 1 field, enter/exit/close)",
        }
    }
}

fn run(setup: &Setup, workload: Workload) -> f64 {
    let started = tracing::dispatcher::with_default(&setup.dispatch, || {
        let root = tracing::info_span!("bench-root");
        let _root = root.enter();
        let started = Instant::now();
        match workload {
            Workload::Event => {
                for i in 0..OPS {
                    tracing::info!(user = "alice", attempt = i, "request handled");
                }
            }
            Workload::Span => {
                for i in 0..OPS {
                    let span = tracing::info_span!("operation", attempt = i);
                    let _entered = span.enter();
                }
            }
        }
        started.elapsed()
    });
    (setup.flush)();
    started.as_nanos() as f64 / OPS as f64
}

fn minimum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// User + system CPU time of the whole process (all threads), from /proc/self/stat.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux.
}

fn main() {
    // The third setup records busy_ns/idle_ns on spans as the stock layer does by default, so
    // that span content is the same as stock's; the SDK's default leaves them out.
    let setups = [stock(), ours(false), ours(true)];
    println!("{OPS} operations per round, {ROUNDS} rounds per setup (interleaved); ns per operation on the calling thread,");
    println!("minimum and median over the rounds;");
    println!("CPU = user+system time of the whole process (all threads, export workers included) per operation.\n");
    println!("| workload | setup | min ns/op | vs stock | median ns/op | vs stock | CPU ns/op (all threads) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for workload in [Workload::Event, Workload::Span] {
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        let mut cpu = vec![Duration::ZERO; setups.len()];
        for round in 0..=ROUNDS {
            // Rotate the order each round so no setup always runs first or last.
            for k in 0..setups.len() {
                let i = (round + k) % setups.len();
                let before = process_cpu();
                let ns = run(&setups[i], workload);
                if round > 0 {
                    wall[i].push(ns);
                    if let (Some(b), Some(a)) = (before, process_cpu()) {
                        cpu[i] += a.saturating_sub(b);
                    }
                }
            }
        }
        let per_op = |d: Duration| d.as_nanos() as f64 / (OPS as f64 * ROUNDS as f64);
        let (stock_min, stock_med) = (minimum(&wall[0]), median(wall[0].clone()));
        for (i, setup) in setups.iter().enumerate() {
            let (min, med) = (minimum(&wall[i]), median(wall[i].clone()));
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} |",
                workload.name(),
                setup.name,
                min,
                min / stock_min,
                med,
                med / stock_med,
                per_op(cpu[i]),
            );
        }
    }
    println!(
        "\nSlow collector: {SLOW_RATE_PER_SEC} spans/s offered for {SLOW_SECONDS} s to an exporter \
         answering after {SLOW_ANSWER:?}; default queue (2048) and batch (512).\n"
    );
    println!("| exports in flight | offered | delivered | dropped |");
    println!("|---:|---:|---:|---:|");
    for concurrent in [1, 2, distributed_logger::DEFAULT_MAX_CONCURRENT_EXPORTS, 8] {
        let (offered, delivered, dropped) = slow_collector(concurrent);
        println!("| {concurrent} | {offered} | {delivered} | {dropped} |");
    }
    println!();
    for setup in &setups {
        println!(
            "{}: exported {} spans and {} logs to the discarding sink",
            setup.name,
            setup.spans.0.load(Ordering::Relaxed),
            setup.logs.0.load(Ordering::Relaxed),
        );
    }
}
