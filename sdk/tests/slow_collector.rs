//! Export against a collector that answers slowly: a real OTLP/gRPC server in the test holds
//! every answer back, and counts what it received and how many requests it held at once.

mod support;

use std::time::{Duration, Instant};

use distributed_logger::Telemetry;
use support::Receiver;

/// How long the slow receiver holds each answer.
const ANSWER_DELAY: Duration = Duration::from_millis(200);
/// Offered load: `CHUNK` spans every `TICK`, i.e. 6,000 spans/s. One export of 512 spans at a
/// time against 200 ms answers carries at most 2,560 spans/s, so the old exporter's queue of
/// 2,048 overflowed within a second; four in flight carry up to 10,240 spans/s.
const CHUNK: usize = 300;
const TICK: Duration = Duration::from_millis(50);
const TICKS: usize = 40;

fn emit_spans(telemetry: &Telemetry, count: usize) {
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        for n in 0..count {
            tracing::info_span!("unit", n).in_scope(|| {});
        }
    });
}

/// Regression (issue 9, SDK export): a service offering 6,000 spans/s to a collector that
/// answers after 200 ms lost most of them, because one export was in flight at a time. With
/// the default settings every span now arrives and none is dropped.
#[test]
fn regression_slow_collector_gets_every_span_at_6000_per_second() {
    let receiver = Receiver::start_slow("127.0.0.1:0".parse().unwrap(), ANSWER_DELAY);
    let telemetry = Telemetry::builder("slow-collector")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .with_shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Paced, never catching up in a burst: a stalled test thread offers less, not more.
    let mut next = Instant::now();
    for _ in 0..TICKS {
        emit_spans(&telemetry, CHUNK);
        next += TICK;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    let emitted = (CHUNK * TICKS) as u64;

    let report = telemetry.shutdown();
    assert_eq!(report.stats.dropped_spans, 0, "{report}");
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.stats.exported_spans, emitted, "{report}");
    assert_eq!(
        receiver.span_count() as u64,
        emitted,
        "the collector received every span once"
    );
    assert!(
        receiver.max_span_requests_held() > 1,
        "exports overlapped: at most {} at once",
        receiver.max_span_requests_held()
    );
}

/// Several exports are in flight at once, and never more than configured: the receiver
/// counts the requests it holds at the same time.
#[test]
fn exports_overlap_up_to_the_configured_limit() {
    // Long enough that every batch of the burst is sent before the first answer comes.
    let receiver = Receiver::start_slow("127.0.0.1:0".parse().unwrap(), Duration::from_secs(1));
    let telemetry = Telemetry::builder("overlap")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .with_max_export_batch(100)
        .with_max_concurrent_exports(3)
        // Only full batches (and the final flush) trigger exports.
        .with_export_interval(Duration::from_secs(60))
        .with_shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    emit_spans(&telemetry, 1_000);
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");
    assert_eq!(receiver.span_count(), 1_000);
    let requests = receiver.trace_requests();
    assert!(
        requests.iter().all(|r| {
            r.resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum::<usize>()
                <= 100
        }),
        "no batch above the largest batch size"
    );
    assert_eq!(
        receiver.max_span_requests_held(),
        3,
        "three span exports in flight at once, and never more"
    );
}

/// With one export in flight (the old behaviour, still available) the receiver never holds
/// two span requests at once.
#[test]
fn one_export_in_flight_when_configured() {
    let receiver = Receiver::start_slow("127.0.0.1:0".parse().unwrap(), Duration::from_millis(100));
    let telemetry = Telemetry::builder("serial")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .with_max_export_batch(100)
        .with_max_concurrent_exports(1)
        .with_export_interval(Duration::from_secs(60))
        .with_shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    emit_spans(&telemetry, 500);
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");
    assert_eq!(receiver.span_count(), 500);
    assert_eq!(receiver.trace_requests().len(), 5);
    assert_eq!(receiver.max_span_requests_held(), 1);
}
