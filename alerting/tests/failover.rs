//! Failover against a real broker (tansu) and real `dlog-alerter` processes: two alerters of
//! one group run with `standby = true`; the first holds the lease and evaluates, the second
//! stands by (`/healthz` says `standby`). Mid-incident the active one is killed (SIGKILL);
//! the standby takes the lease over, resumes from the state the first one checkpointed to
//! the state topic, and carries the incident on: it resolves the alert the first one fired,
//! under the same id, without firing it again, with revisions that continue where the first
//! one stopped, and without heartbeat alerts, though services kept heartbeating throughout.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use dlog_proto::alert::v1::AlertEvent;
use dlog_testkit::{free_port, unique_name, Kafka};
use prost::Message as _;

/// A `dlog-alerter` process whose stderr goes to a file; killed on drop.
struct Alerter {
    child: Child,
    log: PathBuf,
    admin: String,
}

impl Alerter {
    fn start(dir: &Path, name: &str, config: &Path) -> Alerter {
        let log = dir.join(format!("{name}.log"));
        let admin = format!("127.0.0.1:{}", free_port().unwrap());
        let child = Command::new(env!("CARGO_BIN_EXE_dlog-alerter"))
            .args(["--config", config.to_str().unwrap(), "--admin", &admin])
            .args([
                "--state-dir",
                dir.join(format!("{name}-state")).to_str().unwrap(),
            ])
            .env("DLOG_ALERTER_LOG", "info,rdkafka=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start dlog-alerter");
        Alerter { child, log, admin }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls its log for `needle` until `within`; panics with the log otherwise.
    async fn wait_log(&mut self, needle: &str, within: Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "alerter exited ({status}) before logging `{needle}`:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "alerter did not log `{needle}` within {within:?}:\n{}",
            self.log()
        );
    }

    async fn get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                return r.text().await.unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "{url} does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric without labels, if served.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What the services send while the test runs: two services heartbeat every 500 ms (with a
/// 2 s interval, so 4 s without one reads as "delayed"), and svc-pay logs an error with
/// the code in `error` every 300 ms while it is set.
struct Services {
    stop: Arc<AtomicBool>,
    error: Arc<std::sync::Mutex<Option<&'static str>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Services {
    fn start(kafka: &Kafka, topics: &Topics) -> Services {
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(std::sync::Mutex::new(None));
        let producer = Producer::new(kafka);
        let (heartbeats, logs_topic) = (topics.heartbeats.clone(), topics.logs.clone());
        let task = {
            let (stop, error) = (stop.clone(), error.clone());
            tokio::spawn(async move {
                let mut n: u32 = 0;
                while !stop.load(Ordering::SeqCst) {
                    if n.is_multiple_of(5) {
                        for (service, instance) in [("svc-a", "a-1"), ("svc-b", "b-1")] {
                            let beat = logs(
                                resource(service, instance, &[]),
                                vec![announce("heartbeat", "UP", 2_000, now_nanos())],
                            );
                            producer.logs(&heartbeats, instance, &beat).await;
                        }
                    }
                    if n.is_multiple_of(3) {
                        let code = *error.lock().unwrap();
                        if let Some(code) = code {
                            let trace = [(n % 250) as u8 + 1; 16];
                            let request = logs(
                                resource("svc-pay", "pay-1", &[]),
                                vec![error_log(
                                    "charge failed",
                                    code,
                                    "card processor timeout",
                                    trace,
                                    now_nanos(),
                                )],
                            );
                            producer
                                .logs(&logs_topic, &dlog_core::encoding::hex_id(&trace), &request)
                                .await;
                        }
                    }
                    n = n.wrapping_add(1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Services { stop, error, task }
    }

    fn error(&self, code: Option<&'static str>) {
        *self.error.lock().unwrap() = code;
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

/// Starts a standby next to `active`. On tansu 0.6 a join now and then takes the lease's
/// partition from a live holder: then the holder must have seen the revocation and stopped
/// (a clean handover, never two evaluators), the new holder becomes the active alerter, and
/// another standby starts. Returns (active, standby).
async fn stand_by(dir: &Path, config: &Path, mut active: Alerter) -> (Alerter, Alerter) {
    for attempt in 0..3 {
        let standby = Alerter::start(dir, &format!("standby-{attempt}"), config);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = standby.log();
            if log.contains("standing by") {
                return (active, standby);
            }
            if log.contains("alerter running") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby neither stood by nor took the lease:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("the standby's first join took the lease from its live holder");
        let exited = Instant::now() + Duration::from_secs(30);
        while active.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < exited,
                "two alerters evaluate the group:\nactive:\n{}\nstandby:\n{}",
                active.log(),
                standby.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            active.log().contains("the alerter lease was revoked"),
            "the lease moved without its holder stopping:\n{}",
            active.log()
        );
        active = standby;
    }
    panic!("every standby took the lease from its live holder");
}

fn code(e: &AlertEvent) -> &str {
    e.labels.get("error_code").map(String::as_str).unwrap_or("")
}

const FIRING: i32 = 1;
const RESOLVED: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_mid_incident_with_the_state_the_active_one_left() {
    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    // Error alerts resolve 5 s after their last repeat, so the incident ends within the test.
    std::fs::write(
        &rules,
        "[defaults]\ncooldown_secs = 5\n[traffic_stopped]\nenabled = false\n",
    )
    .unwrap();
    let config = dir.path().join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            "kafka_brokers = \"{brokers}\"\n\
             group_id = \"{group}\"\n\
             session_timeout_ms = 10000\n\
             create_topics = true\n\
             trace_logs_topic = \"{traces}\"\n\
             service_logs_topic = \"{logs}\"\n\
             heartbeat_logs_topic = \"{heartbeats}\"\n\
             rules_file = \"{rules}\"\n\
             batch_linger_ms = 50\n\
             checkpoint_interval_ms = 200\n\
             lease_topic = \"{lease}\"\n\
             lease_session_timeout_ms = 6000\n\
             standby = true\n\
             state_topic = \"{state}\"\n\
             [outputs.kafka]\ntopic = \"{alerts}\"\nupdates = true\n\
             [outputs.terminal]\nenabled = false\n",
            brokers = kafka.brokers,
            group = unique_name("alerters"),
            traces = topics.traces,
            logs = topics.logs,
            heartbeats = topics.heartbeats,
            rules = rules.display(),
            lease = unique_name("lease"),
            state = unique_name("alerter_state"),
            alerts = topics.alerts,
        ),
    )
    .unwrap();

    let services = Services::start(&kafka, &topics);
    let mut active = Alerter::start(dir.path(), "active", &config);
    active
        .wait_log("alerter running", Duration::from_secs(40))
        .await;
    let (mut active, mut standby) = stand_by(dir.path(), &config, active).await;
    assert_eq!(standby.get("/healthz").await, "standby\n");
    assert_eq!(standby.metric("dlog_alerter_standby").await, Some(1.0));
    assert_eq!(active.get("/healthz").await, "ok\n");

    // The incident: svc-pay fails; the active alerter fires, and keeps folding repeats in.
    services.error(Some("E_CHARGE"));
    let fired = read_alerts(&kafka, &topics.alerts, |events| {
        events.iter().any(|e| code(e) == "E_CHARGE")
    })
    .await;
    let incident = fired
        .iter()
        .find(|e| code(e) == "E_CHARGE")
        .expect("the active alerter did not fire the incident")
        .clone();
    assert_eq!(incident.state, FIRING);
    // Repeats keep coming while a few checkpoints go by.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Killed mid-incident: no graceful leave, no last checkpoint.
    active.child.kill().unwrap();
    active.child.wait().unwrap();
    let killed = Instant::now();
    standby
        .wait_log("alerter running", Duration::from_secs(60))
        .await;
    let running = killed.elapsed();
    let deadline = killed + Duration::from_secs(60);
    let evaluated = format!(
        "dlog_alerter_records_total{{topic=\"{}\"}}",
        topics.heartbeats
    );
    while !standby.get("/metrics").await.contains(&evaluated) {
        assert!(
            Instant::now() < deadline,
            "the standby did not evaluate within 60 s of the kill:\n{}",
            standby.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "takeover: the standby held the lease and resumed {:.1} s after the active alerter was \
         killed, and evaluated records {:.1} s after",
        running.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    assert!(
        standby.log().contains("from=state topic"),
        "{}",
        standby.log()
    );
    assert_eq!(standby.get("/healthz").await, "ok\n");
    assert_eq!(standby.metric("dlog_alerter_standby").await, Some(0.0));

    // The incident goes on under the new holder, then a second failure starts and both end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    services.error(Some("E_REFUND"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    services.error(None);

    // Read to a known end: both alerts resolved.
    let events = read_alerts(&kafka, &topics.alerts, |events| {
        ["E_CHARGE", "E_REFUND"]
            .iter()
            .all(|c| events.iter().any(|e| code(e) == *c && e.state == RESOLVED))
    })
    .await;
    services.stop().await;
    let (sum, count) = (
        standby.metric("dlog_alerter_checkpoint_seconds_sum").await,
        standby
            .metric("dlog_alerter_checkpoint_seconds_count")
            .await,
    );
    if let (Some(sum), Some(count)) = (sum, count) {
        println!(
            "checkpoints with the state topic (file + topic + alerts + commit): {count} of mean {:.1} ms; last checkpoint on the topic {} bytes",
            sum / count.max(1.0) * 1e3,
            standby.metric("dlog_alerter_state_topic_bytes").await.unwrap_or(0.0)
        );
    }
    let summary: Vec<String> = events
        .iter()
        .map(|e| format!("{} {} {} rev {}", e.rule, code(e), e.state, e.revision))
        .collect();

    // The incident was not lost: the standby resolved it under the same id and never fired
    // it again.
    let of_incident: Vec<&AlertEvent> = events.iter().filter(|e| e.id == incident.id).collect();
    assert!(
        of_incident.iter().any(|e| e.state == RESOLVED),
        "the standby did not carry the incident on: {summary:#?}"
    );
    assert!(
        of_incident
            .iter()
            .all(|e| e.first_seen_unix_nano == incident.first_seen_unix_nano),
        "the incident fired again after the takeover: {summary:#?}"
    );
    assert!(
        of_incident
            .windows(2)
            .all(|w| w[0].occurrences <= w[1].occurrences),
        "the incident's occurrences went back: {summary:#?}"
    );
    let resolved = of_incident.iter().find(|e| e.state == RESOLVED).unwrap();
    assert!(
        resolved.occurrences > incident.occurrences,
        "repeats evaluated by either alerter were not all folded into the incident: {summary:#?}"
    );

    // No alert got a revision it would not have had: revisions number the events of the
    // group's whole history; each may be sent again once (a crash between delivery and
    // checkpoint), with the same content, and never for anything else.
    let mut by_revision: BTreeMap<u64, Vec<&AlertEvent>> = BTreeMap::new();
    for e in &events {
        by_revision.entry(e.revision).or_default().push(e);
    }
    for (revision, same) in &by_revision {
        assert!(
            same.len() <= 2
                && same
                    .iter()
                    .all(|e| e.encode_to_vec() == same[0].encode_to_vec()),
            "revision {revision} was emitted for different events: {summary:#?}"
        );
    }
    let revisions: Vec<u64> = by_revision.keys().copied().collect();
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "revisions skipped or restarted: {summary:#?}"
    );

    // Services heartbeated throughout: the takeover raised no heartbeat alert.
    assert!(
        events.iter().all(|e| !e.rule.starts_with("heartbeat")),
        "the takeover made heartbeats look silent: {summary:#?}\n{}",
        standby.log()
    );
    drop(kafka);
}
