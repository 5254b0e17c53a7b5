//! Issue 2, test 3: with no collector listening, the application is not slowed down or
//! broken; drops are counted; export resumes once a collector appears on that port.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use distributed_logger::Telemetry;
use dlog_core::model::LogItem;
use support::{wait_for, Receiver};

/// A loopback address nothing listens on (the port was free a moment ago).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn unreachable_collector_drops_counted_records_then_export_resumes() {
    let addr = closed_port();
    let telemetry = Telemetry::builder("offline-svc")
        .with_endpoint(format!("http://{addr}"))
        .with_queue_capacity(1024)
        .with_export_interval(Duration::from_millis(50))
        .with_export_timeout(Duration::from_secs(2))
        .with_heartbeat_interval(Duration::from_millis(100))
        .with_shutdown_timeout(Duration::from_secs(10))
        .with_stderr(false)
        .build()
        .unwrap();
    let logger = telemetry.logger();

    // The application's loop: 50k spans, each with an event, plus logger calls. It must
    // simply finish; with the collector down nearly all of it is dropped.
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        for i in 0..50_000_u64 {
            let span = tracing::info_span!("work", i);
            let _entered = span.enter();
            tracing::info!(i, "tick");
            if i % 1000 == 0 {
                logger.warn("slow tick", i, 10);
            }
        }
    });
    let stats = telemetry.stats();
    assert!(stats.dropped_spans > 0, "{stats:?}");
    assert!(stats.dropped_logs > 0, "{stats:?}");
    // The export worker is still moving records from `queued` to `failed` here, and the
    // counters are read one by one: live, only bounds hold (a record in motion may be seen in
    // both counts, never in neither). The exact identity is checked after shutdown.
    let outcomes = stats.dropped_spans + stats.failed_spans + stats.exported_spans;
    assert!(outcomes <= 50_000, "more outcomes than spans: {stats:?}");
    assert!(
        outcomes + stats.queued_spans >= 50_000,
        "a span is missing from every count: {stats:?}"
    );
    assert_eq!(stats.exported_spans, 0, "{stats:?}");
    wait_for("a failed export", Duration::from_secs(20), || {
        telemetry.stats().failed_exports > 0
    });

    // A collector appears on the same port: what is queued goes out, and so does new data.
    let receiver = Receiver::start(addr);
    wait_for("export to resume", Duration::from_secs(30), || {
        !receiver.spans().is_empty() && !receiver.logs().is_empty()
    });
    // New data gets through too. It is re-sent on every poll because, while the backlog
    // drains, a queue can still be full for a moment and drop it (as designed).
    let mut recovery_spans = 0_u64;
    wait_for("a new span and log", Duration::from_secs(30), || {
        recovery_spans += 1;
        tracing::dispatcher::with_default(telemetry.dispatch(), || {
            let span = tracing::info_span!("after-recovery");
            let _entered = span.enter();
            tracing::info!("collector is back");
        });
        receiver.spans().iter().any(|s| s.name == "after-recovery")
            && receiver
                .logs()
                .iter()
                .any(|l| matches!(l, LogItem::Log(e) if e.body == "collector is back"))
    });
    let report = telemetry.shutdown();
    assert!(
        report.stats.exported_spans > 0 && report.stats.exported_logs > 0,
        "{report}"
    );
    assert!(
        report.undelivered_spans() > 0,
        "the outage's drops stay reported: {report}"
    );
    assert!(!report.timed_out, "{report}");
    // Nothing moves after shutdown: every span is in exactly one count.
    let s = report.stats;
    assert_eq!(
        s.dropped_spans + s.failed_spans + s.queued_spans + s.exported_spans,
        50_000 + recovery_spans,
        "every span is accounted for exactly once: {report}"
    );
    assert_eq!(telemetry.stats(), s, "the counts are final: {report}");
}
