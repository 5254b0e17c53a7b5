//! The stage end to end against a real Kafka-protocol broker: records in the bridge's format
//! go in, and the exact alert events come out on the `alerts` topic and in the store. Time is
//! a manual clock, so "31 s of silence" takes no time at all.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use common::*;
use dlog_alerting::{alert_id, kafka_source, run_with, AlerterConfig, ManualClock};
use dlog_core::names::{HEARTBEAT_EVENT, REGISTRATION_EVENT};
use dlog_proto::alert::v1::{AlertEvent, AlertState, Severity};
use dlog_storage::{AlertQuery, StoreConfig};
use dlog_testkit::Kafka;
use tokio::task::JoinHandle;

const SEC: u64 = 1_000_000_000;

fn hex(id: [u8; 16]) -> String {
    dlog_core::encoding::hex_id(&id)
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), dlog_alerting::AlerterError>>,
}

async fn start(config: AlerterConfig, clock: &ManualClock) -> Running {
    let source = kafka_source(&config).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_with(
        config,
        source,
        Arc::new(clock.clone()),
        stop.clone(),
    ));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn find<'a>(events: &'a [AlertEvent], rule: &str, state: AlertState) -> &'a AlertEvent {
    events
        .iter()
        .find(|e| e.rule == rule && e.state == state as i32)
        .unwrap_or_else(|| panic!("no {rule} {state:?} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_raises_the_exact_alerts_on_kafka_and_in_the_store() {
    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let mut config = config(&kafka, &topics, state_dir.path());
    config.outputs.store.enabled = true;
    config.outputs.store.backend = StoreConfig::embedded(store_dir.path());
    let admin = config.admin;
    let clock = ManualClock::new(T0);
    let stage = start(config, &clock).await;
    let p = Producer::new(&kafka);
    let a = resource("svc-a", "a-1", &["svc-b"]);
    let b = resource("svc-b", "b-1", &[]);

    // B registers with a 10 s heartbeat; A with a long one, so only B goes silent.
    p.logs(
        &topics.heartbeats,
        "b-1",
        &logs(
            b.clone(),
            vec![announce(REGISTRATION_EVENT, "UP", 10_000, T0)],
        ),
    )
    .await;
    p.logs(
        &topics.heartbeats,
        "a-1",
        &logs(
            a.clone(),
            vec![announce(REGISTRATION_EVENT, "UP", 600_000, T0)],
        ),
    )
    .await;
    // Rule 1: an ERROR record. Rule 7: A calls svc-z, which it did not declare.
    let (t1, t2) = ([0x11; 16], [0x22; 16]);
    p.logs(
        &topics.logs,
        &hex(t1),
        &logs(
            a.clone(),
            vec![error_log(
                "checkout failed",
                "E500",
                "database timeout",
                t1,
                T0,
            )],
        ),
    )
    .await;
    p.logs(
        &topics.logs,
        &hex(t2),
        &logs(
            a.clone(),
            vec![service_call("svc-a", "svc-z", true, t2, T0)],
        ),
    )
    .await;
    wait_evaluated(admin, &topics.heartbeats, 2).await;
    wait_evaluated(admin, &topics.logs, 2).await;

    // Rule 4: 31 s of silence from B: delayed (> 20 s) and down (> 30 s).
    clock.advance(Duration::from_secs(31));
    read_alerts(&kafka, &topics.alerts, |e| e.len() >= 4).await;

    // Rules 3 and 6: A's calls into B fail, logged and traced; B is down, so they become one
    // incident naming B rather than separate failed-call alerts.
    let at = clock_now(&clock);
    for i in 0..3u8 {
        let trace = [0x30 + i; 16];
        p.logs(
            &topics.logs,
            &hex(trace),
            &logs(
                a.clone(),
                vec![service_call("svc-a", "svc-b", false, trace, at)],
            ),
        )
        .await;
    }
    let t4 = [0x44; 16];
    p.traces(
        &topics.traces,
        &hex(t4),
        &failed_client_span(a.clone(), "svc-b", t4, [9; 8], at),
    )
    .await;
    wait_evaluated(admin, &topics.logs, 5).await;
    wait_evaluated(admin, &topics.traces, 1).await;

    // B comes back.
    let at = clock_now(&clock);
    p.logs(
        &topics.heartbeats,
        "b-1",
        &logs(b.clone(), vec![announce(HEARTBEAT_EVENT, "UP", 10_000, at)]),
    )
    .await;
    wait_evaluated(admin, &topics.heartbeats, 3).await;
    // One more second: the tick reports updates (occurrence counts) to the store.
    clock.advance(Duration::from_secs(1));
    // A sentinel: once it is on the topic, everything emitted before it is too.
    let c = resource("svc-c", "c-1", &[]);
    let t5 = [0x55; 16];
    p.logs(
        &topics.logs,
        &hex(t5),
        &logs(c, vec![error_log("sentinel", "E999", "sentinel", t5, at)]),
    )
    .await;
    let events = read_alerts(&kafka, &topics.alerts, |e| {
        e.iter().any(|e| e.summary.contains("sentinel"))
    })
    .await;

    assert_eq!(
        sequence(&events),
        seq(&[
            ("error_log", "firing"),
            ("dependency_drift", "firing"),
            ("heartbeat_delayed", "firing"),
            ("heartbeat_down", "firing"),
            ("incident", "firing"),
            ("heartbeat_down", "resolved"),
            ("heartbeat_delayed", "resolved"),
            ("error_log", "firing"),
        ]),
        "{events:#?}"
    );

    let error = &events[0];
    assert_eq!(error.id, alert_id("error_log", "svc-a|E500"));
    assert_eq!(error.severity, Severity::Critical as i32);
    assert_eq!(
        (error.service.as_str(), error.instance.as_str()),
        ("svc-a", "a-1")
    );
    assert_eq!(error.summary, "svc-a ERROR E500: database timeout");
    assert_eq!(error.labels["error_code"], "E500");
    assert_eq!(error.labels["error_message"], "database timeout");
    assert_eq!(error.example_trace_ids, vec![hex(t1)]);
    assert_eq!((error.first_seen_unix_nano, error.occurrences), (T0, 1));

    let drift = &events[1];
    assert_eq!(drift.severity, Severity::Info as i32);
    assert_eq!(
        drift.summary,
        "svc-a calls svc-z, which is not among its declared dependencies (svc-b)"
    );

    let delayed = find(&events, "heartbeat_delayed", AlertState::Firing);
    assert_eq!(delayed.severity, Severity::Warning as i32);
    assert_eq!(
        (delayed.service.as_str(), delayed.instance.as_str()),
        ("svc-b", "b-1")
    );
    assert_eq!(
        delayed.summary,
        "svc-b (b-1) heartbeat delayed: no heartbeat for 31 s (interval 10 s)"
    );
    assert_eq!(delayed.first_seen_unix_nano, T0 + 31 * SEC);
    let down = find(&events, "heartbeat_down", AlertState::Firing);
    assert_eq!(down.severity, Severity::Critical as i32);
    assert_eq!(
        down.summary,
        "svc-b (b-1) is down: no heartbeat for 31 s (interval 10 s)"
    );

    let incident = find(&events, "incident", AlertState::Firing);
    assert_eq!(incident.id, alert_id("incident", "svc-b"));
    assert_eq!(
        (incident.service.as_str(), incident.root_cause.as_str()),
        ("svc-b", "svc-b")
    );
    assert_eq!(incident.incident_id, incident.id);
    assert_eq!(incident.labels["cause"], "heartbeat_down");
    assert_eq!(incident.labels["dependents"], "svc-a");
    assert_eq!(
        incident.summary,
        "svc-b is down: probable root cause of 1 failure in svc-a"
    );
    // The first failure the stage evaluated (spans and logs are separate topics).
    let failures = [hex([0x30; 16]), hex([0x31; 16]), hex([0x32; 16]), hex(t4)];
    assert_eq!(incident.example_trace_ids.len(), 1);
    assert!(
        failures.contains(&incident.example_trace_ids[0]),
        "{incident:?}"
    );

    let back = find(&events, "heartbeat_down", AlertState::Resolved);
    assert_eq!(back.id, down.id);
    assert_eq!(
        back.summary,
        "svc-b (b-1) is back: heartbeat after 31 s of silence"
    );
    assert!(back.revision > down.revision);
    // Nothing fired twice, and no failed call was shown on its own.
    let mut keys: Vec<(String, u64)> = events.iter().map(|e| (e.id.clone(), e.revision)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), events.len());
    assert!(events.iter().all(|e| e.rule != "failed_call"));

    // The store holds the same alerts, with the incident's final count and B's down alert
    // attached to the incident.
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let docs = loop {
        let docs = store
            .list_alerts(&AlertQuery {
                service: Some("svc-b".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let counted = docs
            .iter()
            .any(|d| d.rule == "incident" && d.occurrences == 4);
        if counted || Instant::now() > deadline {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let incident_doc = docs
        .iter()
        .find(|d| d.rule == "incident")
        .expect("incident in the store");
    assert_eq!(
        (incident_doc.state.as_str(), incident_doc.occurrences),
        ("firing", 4),
        "{docs:#?}"
    );
    assert_eq!(incident_doc.root_cause.as_deref(), Some("svc-b"));
    assert_eq!(incident_doc.example_trace_ids.len(), 4);
    let down_doc = docs.iter().find(|d| d.rule == "heartbeat_down").unwrap();
    assert_eq!(down_doc.state, "resolved");
    assert_eq!(down_doc.incident_id.as_deref(), Some(incident.id.as_str()));
    assert_eq!(down_doc.instance.as_deref(), Some("b-1"));

    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    stage.stop().await;
}

fn clock_now(clock: &ManualClock) -> u64 {
    use dlog_alerting::Clock;
    clock.now_unix_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_incident_neither_loses_nor_repeats_the_alert() {
    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = config(&kafka, &topics, state_dir.path());
    let clock = ManualClock::new(T0);
    let p = Producer::new(&kafka);
    let a = resource("svc-a", "a-1", &["svc-b"]);
    let b = resource("svc-b", "b-1", &[]);

    let first = start(config.clone(), &clock).await;
    p.logs(
        &topics.heartbeats,
        "b-1",
        &logs(
            b.clone(),
            vec![announce(REGISTRATION_EVENT, "UP", 10_000, T0)],
        ),
    )
    .await;
    wait_evaluated(config.admin, &topics.heartbeats, 1).await;
    clock.advance(Duration::from_secs(31));
    read_alerts(&kafka, &topics.alerts, |e| e.len() >= 2).await;
    let trace = [0x61; 16];
    p.logs(
        &topics.logs,
        &hex(trace),
        &logs(
            a.clone(),
            vec![service_call(
                "svc-a",
                "svc-b",
                false,
                trace,
                clock_now(&clock),
            )],
        ),
    )
    .await;
    read_alerts(&kafka, &topics.alerts, |e| {
        e.iter().any(|e| e.rule == "incident")
    })
    .await;

    // Crash: the task is dropped wherever it is, without a graceful stop.
    first.task.abort();
    let _ = first.task.await;

    // While it is down, A keeps failing into B and time passes.
    clock.advance(Duration::from_secs(5));
    for i in 0..2u8 {
        let trace = [0x70 + i; 16];
        p.logs(
            &topics.logs,
            &hex(trace),
            &logs(
                a.clone(),
                vec![service_call(
                    "svc-a",
                    "svc-b",
                    false,
                    trace,
                    clock_now(&clock),
                )],
            ),
        )
        .await;
    }
    // The restarted stage (same state directory and group) catches up: the failures fold
    // into the incident, and B's alerts do not fire again.
    let mut config2 = config.clone();
    config2.admin =
        std::net::SocketAddr::from(([127, 0, 0, 1], dlog_testkit::free_port().unwrap()));
    let second = start(config2.clone(), &clock).await;
    wait_evaluated(config2.admin, &topics.logs, 2).await;
    clock.advance(Duration::from_secs(1));
    // B comes back: the resolution is not lost.
    p.logs(
        &topics.heartbeats,
        "b-1",
        &logs(
            b,
            vec![announce(HEARTBEAT_EVENT, "UP", 10_000, clock_now(&clock))],
        ),
    )
    .await;
    wait_evaluated(config2.admin, &topics.heartbeats, 1).await;
    let c = resource("svc-c", "c-1", &[]);
    let t = [0x99; 16];
    p.logs(
        &topics.logs,
        &hex(t),
        &logs(
            c,
            vec![error_log(
                "sentinel",
                "E999",
                "sentinel",
                t,
                clock_now(&clock),
            )],
        ),
    )
    .await;
    let events = read_alerts(&kafka, &topics.alerts, |e| {
        e.iter().any(|e| e.summary.contains("sentinel"))
    })
    .await;
    assert_eq!(
        sequence(&events),
        seq(&[
            ("heartbeat_delayed", "firing"),
            ("heartbeat_down", "firing"),
            ("incident", "firing"),
            ("heartbeat_down", "resolved"),
            ("heartbeat_delayed", "resolved"),
            ("error_log", "firing"),
        ]),
        "{events:#?}"
    );
    let down = find(&events, "heartbeat_down", AlertState::Resolved);
    assert_eq!(
        down.summary,
        "svc-b (b-1) is back: heartbeat after 37 s of silence"
    );
    second.stop().await;

    // The saved state shows the incident still firing with all three failures.
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir.path().join(dlog_alerting::state::STATE_FILE)).unwrap(),
    )
    .unwrap();
    let incident = &saved["engine"]["alerts"][alert_id("incident", "svc-b")]["alert"];
    assert_eq!(incident["occurrences"], 3, "{incident:#}");
    assert_eq!(saved["outbox"].as_array().map(Vec::len), Some(0));
}

/// Regression: an ERROR log of about 500 KB (its body and message quoted three times) made an
/// alert event over the 1 MB message limit; the Kafka output retried it forever, so alerting
/// stopped for good and the saved outbox replayed the failure at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_oversized_error_log_does_not_wedge_alerting() {
    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = config(&kafka, &topics, state_dir.path());
    let clock = ManualClock::new(T0);
    let stage = start(config.clone(), &clock).await;
    let p = Producer::new(&kafka);
    let a = resource("svc-a", "a-1", &[]);
    let huge = "x".repeat(400_000);
    let trace = [0x0b; 16];
    p.logs(
        &topics.logs,
        &hex(trace),
        &logs(a.clone(), vec![error_log(&huge, "E500", &huge, trace, T0)]),
    )
    .await;
    // A sentinel after it: alerting still runs once it is through.
    let sentinel = [0x0c; 16];
    p.logs(
        &topics.logs,
        &hex(sentinel),
        &logs(
            a,
            vec![error_log("sentinel", "E999", "sentinel", sentinel, T0)],
        ),
    )
    .await;
    let events = read_alerts(&kafka, &topics.alerts, |e| {
        e.iter().any(|e| e.summary.contains("sentinel"))
    })
    .await;
    assert_eq!(
        sequence(&events),
        seq(&[("error_log", "firing"), ("error_log", "firing")]),
        "{:#?}",
        events.iter().map(|e| &e.labels).collect::<Vec<_>>()
    );
    let big = &events[0];
    assert_eq!(big.id, alert_id("error_log", "svc-a|E500"));
    assert!(big.summary.starts_with("svc-a ERROR E500: xxx"));
    assert!(big.summary.len() <= 4096, "{}", big.summary.len());
    assert!(big.summary.ends_with("more bytes cut]"));
    for (k, v) in &big.labels {
        assert!(v.len() <= 4096, "label {k}: {} bytes", v.len());
    }
    stage.stop().await;
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir.path().join(dlog_alerting::state::STATE_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["outbox"].as_array().map(Vec::len), Some(0));
}
