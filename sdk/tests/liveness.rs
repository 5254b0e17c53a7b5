//! Liveness behind a full queue: heartbeats and registrations are not lost, nor held back,
//! when application logs fill the log queue while the collector stalls.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distributed_logger::Telemetry;
use dlog_core::model::{Heartbeat, HeartbeatKind, LogItem, ServiceStatus};
use support::{wait_for, Receiver};

const CAPACITY: usize = 64;

fn heartbeats(receiver: &Receiver) -> Vec<Heartbeat> {
    receiver
        .logs()
        .into_iter()
        .filter_map(|item| match item {
            LogItem::Heartbeat(hb) => Some(hb),
            LogItem::Log(_) => None,
        })
        .collect()
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Regression (issue 7, liveness behind a full queue): heartbeats shared the log queue with
/// application logs, so a burst of logs while the collector was slow dropped them and a
/// healthy service looked dead. They now have a lane of their own: while the queue is full
/// they wait beside it, and once the collector answers again every one of them arrives,
/// followed by the DOWN registration at shutdown.
#[test]
fn regression_heartbeats_survive_a_log_burst_while_the_collector_stalls() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    receiver.pause();
    let telemetry = Telemetry::builder("liveness")
        .with_instance_id("liveness-1")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .with_queue_capacity(CAPACITY)
        .with_max_export_batch(8)
        .with_max_concurrent_exports(2)
        .with_export_interval(Duration::from_millis(10))
        .with_heartbeat_interval(Duration::from_millis(100))
        .with_export_timeout(Duration::from_secs(60))
        .with_shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let logger = telemetry.logger();

    // Application logs fill both export slots (held by the stalled collector), then the queue.
    let mut burst = 0;
    let fill_until_a_drop = |burst: &mut u64| {
        let dropped = telemetry.stats().dropped_logs;
        while telemetry.stats().dropped_logs == dropped {
            logger.info("burst");
            *burst += 1;
            assert!(*burst < 100_000, "the log queue never filled");
        }
    };
    fill_until_a_drop(&mut burst);
    wait_for("both export slots held", Duration::from_secs(30), || {
        receiver.requests_held() == 2
    });
    // The worker can take nothing more now: what it took is refilled, and the queue is full.
    fill_until_a_drop(&mut burst);
    let full_since = unix_nanos(SystemTime::now());
    let full = telemetry.stats().queued_logs;
    // Heartbeats keep coming while the queue stays full, and wait beside it. (At most one
    // heartbeat can have been created before `full_since` and queued after `full`.)
    wait_for(
        "four liveness records waiting beside the full queue",
        Duration::from_secs(30),
        || telemetry.stats().queued_logs >= full + 4,
    );
    let stalled_until = unix_nanos(SystemTime::now());
    assert_eq!(
        receiver.logs().len(),
        0,
        "nothing was answered during the stall"
    );

    receiver.resume();
    let report = telemetry.shutdown();
    assert!(!report.timed_out, "{report}");
    assert_eq!(report.stats.failed_logs, 0, "{report}");
    assert_eq!(report.stats.queued_logs, 0, "{report}");

    let beats = heartbeats(&receiver);
    let mut mine: Vec<&Heartbeat> = beats
        .iter()
        .filter(|hb| hb.service.instance_key() == "liveness-1")
        .collect();
    mine.sort_by_key(|hb| hb.time_unix_nano);
    let registrations: Vec<ServiceStatus> = mine
        .iter()
        .filter(|hb| hb.kind == HeartbeatKind::Registration)
        .map(|hb| hb.status)
        .collect();
    assert_eq!(
        registrations,
        [ServiceStatus::Up, ServiceStatus::Down],
        "UP and DOWN both arrive, once each"
    );
    assert_eq!(
        mine.first().map(|hb| hb.kind),
        Some(HeartbeatKind::Registration)
    );
    assert_eq!(
        mine.last().map(|hb| (hb.kind, hb.status)),
        Some((HeartbeatKind::Registration, ServiceStatus::Down))
    );
    let during_stall = mine
        .iter()
        .filter(|hb| hb.kind == HeartbeatKind::Heartbeat)
        .filter(|hb| (full_since..=stalled_until).contains(&hb.time_unix_nano))
        .count();
    assert!(
        during_stall >= 3,
        "the heartbeats emitted while the queue was full arrived: {during_stall} of them"
    );
    // Every record is accounted for: application logs were dropped, liveness records were not.
    let stats = report.stats;
    let app_logs_received = receiver
        .logs()
        .iter()
        .filter(|item| matches!(item, LogItem::Log(_)))
        .count() as u64;
    let emitted_app_logs = burst;
    assert_eq!(
        app_logs_received + stats.dropped_logs,
        emitted_app_logs,
        "every drop was an application log: {report}"
    );
    assert_eq!(
        stats.exported_logs,
        app_logs_received + mine.len() as u64,
        "{report}"
    );
}
