//! Regressions for review findings: an input stall is not every service going silent, an
//! input error does not stop the stage, and one refused alert does not block a required
//! webhook. The stage runs on an in-process input with a manual clock.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use common::*;
use dlog_alerting::{run_with, AlerterConfig, AlerterError, ManualClock};
use dlog_core::encoding::{encode_logs, Encoding};
use dlog_core::names::{self, HEARTBEAT_EVENT};
use dlog_core::source::{ChannelSource, InProcessBatch, Mark, RawRecord, Source, SourceError};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A `ChannelSource` whose acknowledgements and pauses can be made to fail.
struct Flaky {
    inner: ChannelSource,
    probe: Arc<Probe>,
}

#[derive(Default)]
struct Probe {
    paused: AtomicBool,
    /// Offsets handed out while paused.
    handed_while_paused: AtomicU64,
    /// How many of the next `ack` calls fail.
    failing_acks: AtomicU64,
    failed_acks: AtomicU64,
    /// Whether `pause` and `resume` fail.
    failing_pause: AtomicBool,
    /// `pause` calls.
    pause_calls: AtomicU64,
    /// How long each `ack` takes, in milliseconds.
    ack_ms: AtomicU64,
}

impl Source for Flaky {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        let paused = self.probe.paused.load(Ordering::SeqCst);
        let batch = self.inner.next_batch(max, linger).await?;
        if paused {
            self.probe
                .handed_while_paused
                .fetch_add(batch.len() as u64, Ordering::SeqCst);
        }
        Ok(batch)
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        tokio::time::sleep(Duration::from_millis(
            self.probe.ack_ms.load(Ordering::SeqCst),
        ))
        .await;
        let failing = self.probe.failing_acks.load(Ordering::SeqCst);
        if failing > 0 {
            self.probe.failing_acks.store(failing - 1, Ordering::SeqCst);
            self.probe.failed_acks.fetch_add(1, Ordering::SeqCst);
            return Err(SourceError::Kafka(
                "Broker: Not coordinator (injected)".into(),
            ));
        }
        self.inner.ack(marks).await
    }

    fn pause(&mut self) -> Result<(), SourceError> {
        self.probe.pause_calls.fetch_add(1, Ordering::SeqCst);
        self.probe.paused.store(true, Ordering::SeqCst);
        if self.probe.failing_pause.load(Ordering::SeqCst) {
            return Err(SourceError::Kafka("pause failed (injected)".into()));
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), SourceError> {
        self.probe.paused.store(false, Ordering::SeqCst);
        if self.probe.failing_pause.load(Ordering::SeqCst) {
            return Err(SourceError::Kafka("resume failed (injected)".into()));
        }
        Ok(())
    }
}

struct Running {
    tx: mpsc::Sender<InProcessBatch>,
    probe: Arc<Probe>,
    receiver: Arc<Hook>,
    clock: ManualClock,
    stage: JoinHandle<Result<(), AlerterError>>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    _state_dir: tempfile::TempDir,
}

async fn start(tune: impl FnOnce(&mut AlerterConfig)) -> Running {
    let receiver = Arc::new(Hook::default());
    let (url, server) = serve_hook(receiver.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let mut config = webhook_only_config(state_dir.path(), url);
    config.checkpoint_interval_ms = 50;
    tune(&mut config);
    let (tx, inner) = ChannelSource::new(4);
    let probe = Arc::new(Probe::default());
    let source = Flaky {
        inner,
        probe: probe.clone(),
    };
    let clock = ManualClock::new(T0);
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(clock.clone()),
        stop.clone(),
    ));
    Running {
        tx,
        probe,
        receiver,
        clock,
        stage,
        stop,
        server,
        _state_dir: state_dir,
    }
}

impl Running {
    async fn send(&self, topic: &str, request: &ExportLogsServiceRequest) -> oneshot::Receiver<()> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(InProcessBatch {
                records: vec![RawRecord {
                    topic: topic.into(),
                    partition: 0,
                    offset: 0,
                    key: None,
                    payload: encode_logs(Encoding::OtlpProto, request).unwrap(),
                    headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
                    timestamp_ms: None,
                }],
                ack,
            })
            .await
            .unwrap();
        acked
    }

    async fn error(&self, code: &str) -> oneshot::Receiver<()> {
        let trace = [code.as_bytes()[1]; 16];
        let at = self.now();
        let request = logs(
            resource("svc-a", "a-1", &[]),
            vec![error_log("checkout failed", code, "boom", trace, at)],
        );
        self.send(names::SERVICE_LOGS_TOPIC, &request).await
    }

    async fn heartbeat(&self) -> oneshot::Receiver<()> {
        let request = logs(
            resource("svc-b", "b-1", &[]),
            vec![announce(HEARTBEAT_EVENT, "UP", 10_000, self.now())],
        );
        self.send(names::HEARTBEAT_LOGS_TOPIC, &request).await
    }

    fn now(&self) -> u64 {
        use dlog_alerting::Clock;
        self.clock.now_unix_nanos()
    }

    fn rules_received(&self) -> Vec<String> {
        self.receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                let code = b["labels"]["error_code"].as_str().unwrap_or_default();
                format!("{}:{code}", b["rule"].as_str().unwrap_or_default())
            })
            .collect()
    }

    async fn stop(self) {
        assert!(!self.stage.is_finished(), "the stage is still running");
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.stage)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        self.server.abort();
    }
}

async fn acked(what: &str, acked: oneshot::Receiver<()>) {
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} to be acknowledged"))
        .unwrap();
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Finding 1: an output outage pauses the input for longer than the down threshold; the
/// heartbeats sent meanwhile are still in the backlog when the outage ends. No instance may be
/// reported delayed or down for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_stall_longer_than_the_down_threshold_raises_no_heartbeat_alerts() {
    // One record at a time, so that the backlog heartbeat is not in the first batch after
    // the outage (a tick runs after every batch).
    let r = start(|c| c.batch_max_records = 1).await;
    acked("the first heartbeat", r.heartbeat().await).await;

    r.receiver.down.store(true, Ordering::SeqCst);
    let e1 = r.error("E1").await;
    wait_until("the input to be paused", || {
        r.probe.paused.load(Ordering::SeqCst)
    })
    .await;
    // The stall lasts 60 s (down is 3 intervals of 10 s); B kept sending heartbeats, which
    // are queued behind another record.
    r.clock.advance(Duration::from_secs(60));
    let e2 = r.error("E2").await;
    wait_until("E2 to be handed out while paused", || {
        r.probe.handed_while_paused.load(Ordering::SeqCst) == 1
    })
    .await;
    let hb = r.heartbeat().await;

    r.receiver.down.store(false, Ordering::SeqCst);
    acked("E1", e1).await;
    acked("E2", e2).await;
    acked("the backlog heartbeat", hb).await;
    // A sentinel: once it is delivered, anything the backlog raised would be too.
    r.clock.advance(Duration::from_secs(1));
    acked("E3", r.error("E3").await).await;
    assert_eq!(
        r.rules_received(),
        vec!["error_log:E1", "error_log:E2", "error_log:E3"]
    );

    // A service that truly goes silent is still reported.
    r.clock.advance(Duration::from_secs(31));
    wait_until("B to be reported down", || {
        r.rules_received()
            .iter()
            .any(|x| x.starts_with("heartbeat_down"))
    })
    .await;
    r.stop().await;
}

/// Finding 2: a failed offset commit, pause or resume was fatal to the stage. It must carry
/// on and commit again at the next checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_pauses_and_resumes_do_not_stop_the_stage() {
    let r = start(|_| {}).await;
    r.probe.failing_acks.store(2, Ordering::SeqCst);
    let e1 = r.error("E1").await;
    acked("E1 (after two failed commits)", e1).await;
    assert_eq!(r.probe.failed_acks.load(Ordering::SeqCst), 2);

    r.probe.failing_pause.store(true, Ordering::SeqCst);
    r.receiver.down.store(true, Ordering::SeqCst);
    let e2 = r.error("E2").await;
    wait_until("a pause attempt", || r.probe.paused.load(Ordering::SeqCst)).await;
    r.receiver.down.store(false, Ordering::SeqCst);
    acked("E2 (after a failed pause and resume)", e2).await;
    assert_eq!(r.rules_received(), vec!["error_log:E1", "error_log:E2"]);
    r.stop().await;
}

/// Finding 3: one alert the webhook refuses (422) failed the whole send, and the batch was
/// retried forever with the input paused. It must be dropped, and the rest delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_alert_is_dropped_and_does_not_block_a_required_webhook() {
    let r = start(|_| {}).await;
    r.receiver.refuse.lock().unwrap().push("E1".into());
    // E1 and E2 come in one record, so they are one delivery, E1 first; it meets an outage.
    r.receiver.down.store(true, Ordering::SeqCst);
    let at = r.now();
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![
            error_log("checkout failed", "E1", "boom", [1; 16], at),
            error_log("checkout failed", "E2", "boom", [2; 16], at),
        ],
    );
    let both = r.send(names::SERVICE_LOGS_TOPIC, &request).await;
    wait_until("the input to be paused", || {
        r.probe.paused.load(Ordering::SeqCst)
    })
    .await;
    r.receiver.down.store(false, Ordering::SeqCst);
    acked("E1 and E2", both).await;
    acked("E3", r.error("E3").await).await;
    assert_eq!(r.rules_received(), vec!["error_log:E2", "error_log:E3"]);
    // E1 was refused once and never retried; E2 was not delivered twice.
    assert_eq!(r.receiver.refused.load(Ordering::SeqCst), 1);
    r.stop().await;
}

/// The stage's `/metrics` value of `name` (a counter or a histogram's sum), 0 when absent.
async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn local_admin() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], dlog_testkit::free_port().unwrap()))
}

/// `dlog_alerter_checkpoint_seconds` is the time to save, deliver and acknowledge: a slow
/// commit shows in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_time_includes_the_commit() {
    let admin = local_admin();
    let r = start(|c| c.admin = admin).await;
    r.probe.ack_ms.store(400, Ordering::SeqCst);
    acked("E1", r.error("E1").await).await;
    // The histogram is observed right after the commit that completed the acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sum = 0.0;
    while Instant::now() < deadline {
        sum = metric(admin, "dlog_alerter_checkpoint_seconds_sum").await;
        if sum > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sum >= 0.4, "checkpoint seconds: {sum}");
    r.stop().await;
}

/// A pause and a resume that keep failing through an output outage count one input error
/// each, however many times the stage retried meanwhile or resumed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pause_and_resume_count_once_per_outage() {
    let admin = local_admin();
    let r = start(|c| c.admin = admin).await;
    r.probe.failing_pause.store(true, Ordering::SeqCst);
    r.receiver.down.store(true, Ordering::SeqCst);
    let e1 = r.error("E1").await;
    // Several retries with the input paused again at every poll step.
    wait_until("several pause attempts", || {
        r.probe.pause_calls.load(Ordering::SeqCst) >= 6
    })
    .await;
    r.receiver.down.store(false, Ordering::SeqCst);
    acked("E1", e1).await;
    // More batches after the outage: resuming is tried again, and fails, after each.
    for code in ["E2", "E3"] {
        acked(code, r.error(code).await).await;
    }
    assert_eq!(
        r.rules_received(),
        vec!["error_log:E1", "error_log:E2", "error_log:E3"]
    );
    assert_eq!(
        metric(admin, "dlog_alerter_input_errors_total").await,
        2.0,
        "one failed pause and one failed resume"
    );
    r.stop().await;
}
