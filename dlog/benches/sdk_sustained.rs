//! One service's SDK, default settings (queue of 2,048), offering a sustained 5,000 spans/s
//! and 5,000 log events/s to `dlog up` in this process: do the SDK's queues keep up, and does
//! every exported record reach the store?
//!
//! Each 10 ms tick emits 50 spans, each holding one `info!` event (a log record). The emitting
//! thread is paced and never catches up in a burst. At the end it prints the SDK's own report
//! (exported, dropped, failed) and the spans and logs the embedded store holds once the
//! stages caught up. It prints figures and asserts nothing.
//!
//! Run: `cargo bench -p dlog --bench sdk_sustained`. Knobs (env): `BENCH_SECS` (default 60),
//! `BENCH_SPANS_PER_SEC` (default 5000; as many log events).

use std::time::{Duration, Instant};

use distributed_logger::Telemetry;

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let rate: u64 = std::env::var("BENCH_SPANS_PER_SEC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = tempfile::tempdir().expect("temp dir");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let running = runtime
        .block_on(dlog::start(dlog::Config {
            data_dir: data.path().to_path_buf(),
            otlp_grpc: any,
            otlp_http: any,
            bridge_admin: any,
            indexer_admin: any,
            alerter_admin: any,
            ..dlog::Config::default()
        }))
        .expect("start dlog");
    let telemetry = Telemetry::builder("sustained")
        .with_endpoint(format!("http://{}", running.grpc_addr()))
        .with_stderr(false)
        .with_shutdown_timeout(Duration::from_secs(60))
        .build()
        .expect("telemetry");

    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let ticks = secs * 100;
    let started = Instant::now();
    let mut next = started;
    let mut late_ticks = 0u64;
    let mut emitted = 0u64;
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        for t in 0..ticks {
            for n in 0..per_tick {
                tracing::info_span!("GET /api/orders/{id}", order = t * per_tick + n).in_scope(
                    || {
                        tracing::info!(order = t * per_tick + n, "order looked up");
                    },
                );
            }
            emitted += per_tick;
            next += tick;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                late_ticks += 1;
                next = now;
            }
            if (t + 1) % 1000 == 0 {
                let stats = telemetry.stats();
                println!(
                    "{:>4} s: emitted {emitted} spans + {emitted} logs; exported {} / {}; dropped {} / {}; queued {} / {}",
                    (t + 1) / 100,
                    stats.exported_spans,
                    stats.exported_logs,
                    stats.dropped_spans,
                    stats.dropped_logs,
                    stats.queued_spans,
                    stats.queued_logs
                );
            }
        }
    });
    let offered_in = started.elapsed();
    let report = telemetry.shutdown();
    let caught_up = runtime.block_on(running.processed(Duration::from_secs(300)));
    let store_dir = data.path().join("store");
    let stored_spans = dlog_storage::embedded::count_rows(&store_dir, "spans").unwrap_or(0);
    let stored_logs = dlog_storage::embedded::count_rows(&store_dir, "logs").unwrap_or(0);
    println!(
        "offered {emitted} spans and {emitted} log events in {:.1} s ({:.0}/s each; {late_ticks} of {ticks} ticks late)",
        offered_in.as_secs_f64(),
        emitted as f64 / offered_in.as_secs_f64()
    );
    println!(
        "SDK report: exported {} spans / {} logs, dropped {} / {}, failed {} / {}",
        report.stats.exported_spans,
        report.stats.exported_logs,
        report.stats.dropped_spans,
        report.stats.dropped_logs,
        report.stats.failed_spans,
        report.stats.failed_logs
    );
    println!(
        "store: {stored_spans} spans, {stored_logs} logs (stages caught up: {caught_up}; logs include the SDK's own registration and heartbeat events)"
    );
    runtime.block_on(running.shutdown()).expect("shutdown dlog");
}
