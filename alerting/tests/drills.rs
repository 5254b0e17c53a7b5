//! Fault drill on a real broker (tansu): a `dlog-alerter` process consumes 8 concurrent
//! streams of service logs (ERROR logs from three services among INFO logs from five) while
//! every service heartbeats; it is killed with SIGKILL three times at random points (seeded,
//! seed printed; `DRILL_SEED` replays one) and restarted at once with the same state dir, as
//! systemd would. Read to a known end, the alerts topic must show what a user checks:
//! - one `error_log` alert per failing service, whose occurrence count equals the distinct
//!   ERROR logs sent for it (a record replayed after a kill and counted twice, or one lost,
//!   shows);
//! - no `(id, revision)` delivered twice with different content, and revisions without gaps;
//! - no heartbeat alert, though the alerter was down three times.
//!
//! The restart-to-consuming time of each kill is printed (p50/max), asserted only to happen
//! within a generous deadline.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use dlog_proto::alert::v1::AlertEvent;
use dlog_testkit::{free_port, unique_name, Kafka};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message as _;
use rand::{Rng, SeedableRng};

/// The services of the drill; the first three log errors.
const SERVICES: [&str; 5] = ["svc-pay", "svc-cart", "svc-auth", "svc-web", "svc-mail"];
const FAILING: usize = 3;
const STREAMS: usize = 8;

/// A `dlog-alerter` process whose stderr goes to a file (appended across restarts).
struct Alerter {
    child: Child,
    log: PathBuf,
    admin: String,
}

impl Alerter {
    fn start(dir: &Path, config: &Path) -> Alerter {
        let log = dir.join("alerter.log");
        let admin = format!("127.0.0.1:{}", free_port().unwrap());
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dlog-alerter"))
            .args(["--config", config.to_str().unwrap(), "--admin", &admin])
            .args(["--state-dir", dir.join("state").to_str().unwrap()])
            .env("DLOG_ALERTER_LOG", "info,rdkafka=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start dlog-alerter");
        Alerter { child, log, admin }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many records of `topic` this process evaluated (or skipped as replayed): 0 until
    /// it consumes.
    async fn consumed(&self, topic: &str) -> u64 {
        let url = format!("http://{}/metrics", self.admin);
        let Ok(response) = reqwest::get(&url).await else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        let count = |name: &str| {
            let needle = format!("{name}{{topic=\"{topic}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&needle))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        count("dlog_alerter_records_total")
            + text
                .lines()
                .find_map(|l| l.strip_prefix("dlog_alerter_records_replayed_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
    }

    /// Waits until this process consumed records of `topic`; panics with its log after
    /// `within`.
    async fn wait_consuming(&mut self, topic: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.consumed(topic).await == 0 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("alerter exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the alerter did not consume within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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

fn seed() -> u64 {
    std::env::var("DRILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn code_of(service: &str) -> String {
    format!("E-{}", service.trim_start_matches("svc-").to_uppercase())
}

fn info_log(body: String, trace: [u8; 16], at: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: at,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(s(&body)),
        }),
        trace_id: trace.to_vec(),
        span_id: vec![3; 8],
        ..Default::default()
    }
}

/// The load: `STREAMS` tasks each send a request of service logs every 25 ms, taking the
/// services in turn; a failing service's request carries one ERROR log (distinct body and
/// trace) among four INFO logs. One more task heartbeats every service every 500 ms.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(kafka: &Kafka, topics: &Topics) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(BTreeMap::new()));
        let producer = Arc::new(Producer::one_per_batch(kafka));
        let mut tasks = Vec::new();
        for stream in 0..STREAMS {
            let (stop, errors, producer) = (stop.clone(), errors.clone(), producer.clone());
            let topic = topics.logs.clone();
            tasks.push(tokio::spawn(async move {
                let mut n: u32 = 0;
                while !stop.load(Ordering::SeqCst) {
                    let service = SERVICES[(stream + n as usize) % SERVICES.len()];
                    let mut trace = [0u8; 16];
                    trace[0] = stream as u8 + 1;
                    trace[12..].copy_from_slice(&n.to_be_bytes());
                    let at = now_nanos();
                    let mut records: Vec<LogRecord> = (0..4)
                        .map(|i| info_log(format!("step {i} of {stream}/{n}"), trace, at))
                        .collect();
                    let failing = SERVICES[..FAILING].contains(&service);
                    if failing {
                        records.push(error_log(
                            &format!("request {stream}/{n} failed"),
                            &code_of(service),
                            "upstream refused",
                            trace,
                            at,
                        ));
                    }
                    let request = logs(resource(service, &format!("{service}-1"), &[]), records);
                    // Acknowledged by the broker (acks=all) before it counts as sent.
                    producer
                        .logs(&topic, &dlog_core::encoding::hex_id(&trace), &request)
                        .await;
                    if failing {
                        *errors.lock().unwrap().entry(service).or_default() += 1;
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }));
        }
        {
            let (stop, producer) = (stop.clone(), producer.clone());
            let topic = topics.heartbeats.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    for service in SERVICES {
                        let instance = format!("{service}-1");
                        let beat = logs(
                            resource(service, &instance, &[]),
                            vec![announce("heartbeat", "UP", 2_000, now_nanos())],
                        );
                        producer.logs(&topic, &instance, &beat).await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }));
        }
        Load {
            stop,
            errors,
            tasks,
        }
    }

    /// Stops every stream; returns the ERROR logs each failing service sent.
    async fn stop(self) -> BTreeMap<&'static str, u64> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.errors.lock().unwrap().clone()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerter_killed_three_times_counts_every_error_once() {
    let seed = seed();
    println!("seed {seed} (DRILL_SEED={seed} replays the kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let kafka = Kafka::start().unwrap();
    let topics = Topics::create(&kafka).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[traffic_stopped]\nenabled = false\n").unwrap();
    let config = dir.path().join("alerter.toml");
    std::fs::write(
        &config,
        format!(
            "kafka_brokers = \"{brokers}\"\n\
             group_id = \"{group}\"\n\
             session_timeout_ms = 6000\n\
             trace_logs_topic = \"{traces}\"\n\
             service_logs_topic = \"{logs}\"\n\
             heartbeat_logs_topic = \"{heartbeats}\"\n\
             rules_file = \"{rules}\"\n\
             batch_linger_ms = 50\n\
             checkpoint_interval_ms = 200\n\
             [outputs.kafka]\ntopic = \"{alerts}\"\nupdates = true\n\
             [outputs.terminal]\nenabled = false\n",
            brokers = kafka.brokers,
            group = unique_name("alerters"),
            traces = topics.traces,
            logs = topics.logs,
            heartbeats = topics.heartbeats,
            rules = rules.display(),
            alerts = topics.alerts,
        ),
    )
    .unwrap();

    let load = Load::start(&kafka, &topics);
    let mut alerter = Alerter::start(dir.path(), &config);
    alerter
        .wait_consuming(&topics.logs, Duration::from_secs(40))
        .await;

    // Three kills at random points under load, each restarted at once with the same state.
    let mut restarts = Vec::new();
    for kill in 1..=3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
        alerter.kill();
        alerter = Alerter::start(dir.path(), &config);
        let restarted = Instant::now();
        alerter
            .wait_consuming(&topics.logs, Duration::from_secs(60))
            .await;
        let took = restarted.elapsed().as_secs_f64();
        println!("kill {kill}: consuming again {took:.2} s after the restart");
        restarts.push(took);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = load.stop().await;
    restarts.sort_by(f64::total_cmp);
    println!(
        "restart -> consuming again over {} kills: p50 {:.2} s, max {:.2} s",
        restarts.len(),
        percentile(&restarts, 0.5),
        percentile(&restarts, 1.0)
    );
    assert_eq!(sent.len(), FAILING, "every failing service sent errors");

    // Read to a known end: the latest event of each service's alert counts at least what it
    // sent (everything sent is evaluated by then, unless lost).
    let ids: BTreeMap<String, (&'static str, u64)> = sent
        .iter()
        .map(|(service, n)| {
            let key = format!("{service}|{}", code_of(service));
            (dlog_alerting::alert_id("error_log", &key), (*service, *n))
        })
        .collect();
    let latest = |events: &[AlertEvent]| -> BTreeMap<String, u64> {
        let mut latest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for e in events {
            let slot = latest.entry(e.id.clone()).or_default();
            if e.revision >= slot.0 {
                *slot = (e.revision, e.occurrences);
            }
        }
        latest.into_iter().map(|(id, (_, n))| (id, n)).collect()
    };
    let expected = ids.clone();
    let events = read_alerts(&kafka, &topics.alerts, move |events| {
        let latest = latest(events);
        expected
            .iter()
            .all(|(id, (_, n))| latest.get(id).is_some_and(|c| c >= n))
    })
    .await;
    let summary: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} rev {} x{}",
                e.rule, e.service, e.state, e.revision, e.occurrences
            )
        })
        .collect();

    // Every failing service fired its alert, which counted each of its ERROR logs once.
    let counted = latest(&events);
    for (id, (service, n)) in &ids {
        let fired: Vec<&AlertEvent> = events.iter().filter(|e| &e.id == id).collect();
        assert!(
            !fired.is_empty(),
            "{service} logged {n} errors but no alert fired: {summary:#?}"
        );
        // Fired once and carried on across the restarts: a second firing would count from 1
        // again.
        let mut by_revision: Vec<(u64, u64)> =
            fired.iter().map(|e| (e.revision, e.occurrences)).collect();
        by_revision.sort();
        assert!(
            by_revision.windows(2).all(|w| w[0].1 <= w[1].1),
            "{service}'s alert fired again after a restart: {summary:#?}"
        );
        assert_eq!(
            counted.get(id),
            Some(n),
            "{service}'s alert must count each of its {n} ERROR logs once (more: a replayed \
             record counted twice; fewer: one lost): {summary:#?}"
        );
    }
    // Only the failing services' error alerts; above all no heartbeat alert.
    assert!(
        events.iter().all(|e| ids.contains_key(&e.id)),
        "an alert fired that should not have (a heartbeat alert: the restarts made a service \
         look silent): {summary:#?}"
    );

    // No (id, revision) delivered twice with different content; revisions number the events
    // of the alerter's whole history without gaps.
    let mut by_revision: BTreeMap<u64, Vec<&AlertEvent>> = BTreeMap::new();
    for e in &events {
        by_revision.entry(e.revision).or_default().push(e);
    }
    for (revision, same) in &by_revision {
        assert!(
            same.iter()
                .all(|e| e.encode_to_vec() == same[0].encode_to_vec()),
            "revision {revision} was emitted with different content: {summary:#?}"
        );
    }
    let revisions: Vec<u64> = by_revision.keys().copied().collect();
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "revisions skipped or restarted: {summary:#?}"
    );
    println!(
        "ERROR logs sent and counted: {}; {} alert events ({} delivered again after a kill)",
        sent.iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        events.len(),
        events.len() - by_revision.len()
    );
    drop(kafka);
}
