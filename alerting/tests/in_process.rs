//! The stage fed in-process through a `ChannelSource`, as the all-in-one mode does: the
//! sender's acknowledgement completes only once the alert is in the store.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use common::*;
use dlog_alerting::{run_with, AlerterConfig, ManualClock};
use dlog_core::encoding::{encode_logs, Encoding};
use dlog_core::names;
use dlog_core::source::{ChannelSource, InProcessBatch, Mark, RawRecord, Source, SourceError};
use dlog_storage::{AlertQuery, StoreConfig};

/// An alerter whose only output is the embedded store in `store_dir`.
fn store_only_config(state_dir: &std::path::Path, store_dir: &std::path::Path) -> AlerterConfig {
    let mut config = AlerterConfig {
        admin: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.to_path_buf(),
        batch_linger_ms: 20,
        skip_replayed_offsets: false,
        ..Default::default()
    };
    config.outputs.terminal.enabled = false;
    config.outputs.kafka.enabled = false;
    config.outputs.store.enabled = true;
    config.outputs.store.backend = StoreConfig::embedded(store_dir);
    config
}

/// Hands the stage one ERROR log of svc-a (code E500) in trace `trace`; the receiver
/// completes once the stage acknowledged it.
async fn send_error_log(
    tx: &tokio::sync::mpsc::Sender<InProcessBatch>,
    trace: [u8; 16],
    message: &str,
) -> tokio::sync::oneshot::Receiver<()> {
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![error_log("checkout failed", "E500", message, trace, T0)],
    );
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![RawRecord {
            topic: names::SERVICE_LOGS_TOPIC.into(),
            partition: 0,
            offset: 0,
            key: Some(dlog_core::encoding::hex_id(&trace).into_bytes()),
            payload: encode_logs(Encoding::OtlpProto, &request).unwrap(),
            headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
            timestamp_ms: None,
        }],
        ack,
    })
    .await
    .unwrap();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_input_is_acknowledged_only_after_the_store_has_the_alert() {
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let config = store_only_config(state_dir.path(), store_dir.path());
    let (tx, source) = ChannelSource::new(4);
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        stop.clone(),
    ));

    let acked = send_error_log(&tx, [0x42; 16], "database timeout").await;
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .unwrap()
        .unwrap();

    // Acknowledged means stored.
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    let docs = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(docs.len(), 1, "{docs:#?}");
    assert_eq!(
        (docs[0].rule.as_str(), docs[0].state.as_str()),
        ("error_log", "firing")
    );
    assert_eq!(docs[0].summary, "svc-a ERROR E500: database timeout");
    assert_eq!(docs[0].severity, "critical");

    // Closing the input ends the stage cleanly.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(stop);
}

/// A `ChannelSource` that reports how the stage drives it. Like any in-process input it keeps
/// handing out records while paused, which is exactly what must not lose or reorder anything.
struct Watched {
    inner: ChannelSource,
    probe: Arc<Probe>,
}

#[derive(Default)]
struct Probe {
    paused: AtomicBool,
    /// `next_batch` calls made while paused.
    polls_while_paused: AtomicU64,
    /// Offsets handed out while paused.
    handed_while_paused: Mutex<Vec<i64>>,
}

impl Source for Watched {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        let paused = self.probe.paused.load(Ordering::SeqCst);
        let batch = self.inner.next_batch(max, linger).await?;
        if paused {
            self.probe.polls_while_paused.fetch_add(1, Ordering::SeqCst);
            let mut handed = self.probe.handed_while_paused.lock().unwrap();
            handed.extend(batch.iter().map(|r| r.offset));
        }
        Ok(batch)
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        self.inner.ack(marks).await
    }

    fn pause(&mut self) -> Result<(), SourceError> {
        self.probe.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), SourceError> {
        self.probe.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
}

fn error_batch(code: &str) -> (InProcessBatch, tokio::sync::oneshot::Receiver<()>) {
    let trace = [code.as_bytes()[1]; 16];
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![error_log("checkout failed", code, "boom", trace, T0)],
    );
    logs_batch(&request, trace)
}

/// One in-process batch holding `request` on the logs topic, keyed by `trace`.
fn logs_batch(
    request: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    trace: [u8; 16],
) -> (InProcessBatch, tokio::sync::oneshot::Receiver<()>) {
    let (ack, acked) = tokio::sync::oneshot::channel();
    let batch = InProcessBatch {
        records: vec![RawRecord {
            topic: names::SERVICE_LOGS_TOPIC.into(),
            partition: 0,
            offset: 0,
            key: Some(dlog_core::encoding::hex_id(&trace).into_bytes()),
            payload: encode_logs(Encoding::OtlpProto, request).unwrap(),
            headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
            timestamp_ms: None,
        }],
        ack,
    };
    (batch, acked)
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn codes(hook: &Hook) -> Vec<String> {
    hook.accepted
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            b["labels"]["error_code"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Regression: during an output outage the stage only slept with the input paused, and a
/// Kafka consumer that does not poll for `max.poll.interval.ms` (paused or not) is dropped
/// from its group. The stage must keep polling, and keep (in order) what the input hands out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_input_is_still_polled_during_an_outage_and_nothing_is_lost_or_reordered() {
    let receiver = Arc::new(Hook::default());
    receiver.down.store(true, Ordering::SeqCst);
    let (url, server) = serve_hook(receiver.clone()).await;

    let state_dir = tempfile::tempdir().unwrap();
    let config = webhook_only_config(state_dir.path(), url);
    let (tx, inner) = ChannelSource::new(4);
    let probe = Arc::new(Probe::default());
    let source = Watched {
        inner,
        probe: probe.clone(),
    };
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        stop.clone(),
    ));

    // The first alert meets the outage: the stage pauses its input and retries.
    let (batch, mut acked1) = error_batch("E1");
    tx.send(batch).await.unwrap();
    wait_until("the input to be paused", || {
        probe.paused.load(Ordering::SeqCst)
    })
    .await;

    // Records keep arriving; the paused input hands them out, and polling goes on after.
    let (batch, mut acked2) = error_batch("E2");
    tx.send(batch).await.unwrap();
    let (batch, mut acked3) = error_batch("E3");
    tx.send(batch).await.unwrap();
    wait_until("both records handed out while paused", || {
        probe.handed_while_paused.lock().unwrap().len() == 2
    })
    .await;
    let polls = probe.polls_while_paused.load(Ordering::SeqCst);
    wait_until("polling to continue with nothing to fetch", || {
        probe.polls_while_paused.load(Ordering::SeqCst) >= polls + 3
    })
    .await;
    assert_eq!(*probe.handed_while_paused.lock().unwrap(), vec![1, 2]);
    assert!(probe.paused.load(Ordering::SeqCst), "still in the outage");
    assert!(codes(&receiver).is_empty());
    assert!(
        acked1.try_recv().is_err() && acked2.try_recv().is_err() && acked3.try_recv().is_err(),
        "nothing is acknowledged while the required output is down"
    );

    // The output comes back: the stalled alert goes out, then the kept records are evaluated
    // in order, then new input.
    receiver.down.store(false, Ordering::SeqCst);
    for acked in [acked1, acked2, acked3] {
        tokio::time::timeout(Duration::from_secs(30), acked)
            .await
            .unwrap()
            .unwrap();
    }
    let (batch, acked4) = error_batch("E4");
    tx.send(batch).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked4)
        .await
        .unwrap()
        .unwrap();
    assert!(!probe.paused.load(Ordering::SeqCst), "resumed");
    assert_eq!(codes(&receiver), vec!["E1", "E2", "E3", "E4"]);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.abort();
}

/// Regression: a failed state save (a full disk, EIO) ended the stage, and the all-in-one
/// process then answered 503 forever. The stage must retry the save, with the input paused,
/// and carry on once the disk takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_failed_state_save_is_retried_instead_of_ending_the_stage() {
    let receiver = Arc::new(Hook::default());
    let (url, server) = serve_hook(receiver.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    // The state is written to `<file>.tmp` first: a directory there makes every save fail,
    // as a full disk would.
    let blocker = state_dir
        .path()
        .join(format!("{}.tmp", dlog_alerting::state::STATE_FILE));
    std::fs::create_dir(&blocker).unwrap();
    let config = webhook_only_config(state_dir.path(), url);
    let (tx, inner) = ChannelSource::new(4);
    let probe = Arc::new(Probe::default());
    let source = Watched {
        inner,
        probe: probe.clone(),
    };
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        CancellationToken::new(),
    ));

    let (batch, acked) = error_batch("E1");
    tx.send(batch).await.unwrap();
    // The save fails and is retried, the input paused but polled meanwhile.
    wait_until("save retries with the input paused", || {
        probe.polls_while_paused.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(!stage.is_finished(), "the stage ended on a failed save");
    assert!(
        codes(&receiver).is_empty(),
        "nothing is emitted before the state is saved"
    );

    // The disk takes writes again: the alert goes out, the input is acknowledged.
    std::fs::remove_dir(&blocker).unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(codes(&receiver), ["E1"]);
    assert!(!probe.paused.load(Ordering::SeqCst), "input resumed");
    let saved =
        std::fs::read_to_string(state_dir.path().join(dlog_alerting::state::STATE_FILE)).unwrap();
    assert!(saved.contains("svc-a|E1"), "{saved}");

    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.abort();
}

/// Reads the saved state file of `dir`.
fn saved_state(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join(dlog_alerting::state::STATE_FILE);
    std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Starts the stage on `source` with a graceful stop; returns the stop switch and the task.
fn start_stage<S: Source + Sync + 'static>(
    config: AlerterConfig,
    source: S,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), dlog_alerting::AlerterError>>,
) {
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        stop.clone(),
    ));
    (stop, stage)
}

/// Alerts a stage could not deliver before it stopped are kept in its saved outbox, and go out
/// first at the next start, before any input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_left_in_the_outbox_are_delivered_at_the_next_start() {
    let receiver = Arc::new(Hook::default());
    receiver.down.store(true, Ordering::SeqCst);
    let (url, server) = serve_hook(receiver.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = webhook_only_config(state_dir.path(), url);

    let (tx, source) = ChannelSource::new(4);
    let (stop, stage) = start_stage(config.clone(), source);
    let (batch, _acked) = error_batch("E1");
    tx.send(batch).await.unwrap();
    wait_until("the alert in the saved outbox", || {
        saved_state(state_dir.path())["outbox"]
            .as_array()
            .is_some_and(|o| o.len() == 1)
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(codes(&receiver).is_empty());
    let outbox = saved_state(state_dir.path())["outbox"].clone();
    assert_eq!(
        outbox[0]["transition"]["alert"]["key"], "svc-a|E1",
        "{outbox:#}"
    );

    // The webhook is back; the next start has no input at all and still delivers it.
    receiver.down.store(false, Ordering::SeqCst);
    let (tx2, source) = ChannelSource::new(4);
    let (stop, stage) = start_stage(config, source);
    wait_until("the outbox delivered", || !codes(&receiver).is_empty()).await;
    drop(tx2);
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(stop);
    assert_eq!(codes(&receiver), ["E1"]);
    assert_eq!(
        saved_state(state_dir.path())["outbox"],
        serde_json::json!([])
    );
    server.abort();
}

/// Regression: a stage started after its lease was already lost does not deliver the outbox
/// the previous run saved; the successor delivers it from the state topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_outbox_is_not_delivered_once_the_lease_is_lost() {
    let receiver = Arc::new(Hook::default());
    receiver.down.store(true, Ordering::SeqCst);
    let (url, server) = serve_hook(receiver.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = webhook_only_config(state_dir.path(), url);

    let (tx, source) = ChannelSource::new(4);
    let (stop, stage) = start_stage(config.clone(), source);
    let (batch, _acked) = error_batch("E1");
    tx.send(batch).await.unwrap();
    wait_until("the alert in the saved outbox", || {
        saved_state(state_dir.path())["outbox"]
            .as_array()
            .is_some_and(|o| o.len() == 1)
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    receiver.down.store(false, Ordering::SeqCst);
    let lost = CancellationToken::new();
    lost.cancel();
    let (_tx2, source) = ChannelSource::new(4);
    let mut stage = dlog_alerting::Alerter::builder(config)
        .with_source(source)
        .with_clock(Arc::new(ManualClock::new(T0)))
        .with_lease_lost(&lost)
        .start()
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), stage.stopped())
        .await
        .expect("the stage did not stop after losing the lease");
    let error = outcome.expect_err("the stage ended cleanly after losing the lease");
    assert!(error.to_string().contains("lost the lease"), "{error}");
    assert!(
        codes(&receiver).is_empty(),
        "the saved outbox was delivered after the lease was lost"
    );
    server.abort();
}

/// A drift edge raised before a restart is not raised again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_not_raised_again_after_a_restart() {
    let receiver = Arc::new(Hook::default());
    let (url, server) = serve_hook(receiver.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = webhook_only_config(state_dir.path(), url);
    let trace = [0x5d; 16];
    let drift_call = logs(
        resource("svc-a", "a-1", &["svc-b"]),
        vec![service_call("svc-a", "svc-z", true, trace, T0)],
    );
    let rules_seen = |hook: &Hook| -> Vec<String> {
        hook.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["rule"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    for run in 0..2 {
        let (tx, source) = ChannelSource::new(4);
        let (stop, stage) = start_stage(config.clone(), source);
        let (batch, acked) = logs_batch(&drift_call, trace);
        tx.send(batch).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), acked)
            .await
            .unwrap()
            .unwrap();
        // A sentinel after it: once the sentinel is in, everything before it is too.
        let sentinel = format!("E{run}");
        let (batch, acked) = error_batch(&sentinel);
        tx.send(batch).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), acked)
            .await
            .unwrap()
            .unwrap();
        wait_until("the sentinel", || codes(&receiver).contains(&sentinel)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), stage)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(tx);
    }
    let drift = rules_seen(&receiver)
        .into_iter()
        .filter(|r| r == "dependency_drift")
        .count();
    assert_eq!(drift, 1, "{:#?}", receiver.accepted.lock().unwrap());
    server.abort();
}

/// An input that fails its first reads, as the local log does on a disk hiccup.
struct FailsFirst {
    inner: ChannelSource,
    failures_left: u32,
}

impl Source for FailsFirst {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(SourceError::Io("read error (injected)".into()));
        }
        self.inner.next_batch(max, linger).await
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        self.inner.ack(marks).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_input_error_ends_alerting_read_errors_are_retried() {
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let config = AlerterConfig {
        retry_initial_ms: 10,
        retry_max_ms: 50,
        ..store_only_config(state_dir.path(), store_dir.path())
    };
    let (tx, inner) = ChannelSource::new(4);
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        FailsFirst {
            inner,
            failures_left: 3,
        },
        Arc::new(ManualClock::new(T0)),
        stop.clone(),
    ));

    let acked = send_error_log(&tx, [0x43; 16], "db").await;
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the stage never acknowledged: it stopped at the read errors")
        .unwrap();
    assert!(!stage.is_finished(), "the stage ended");
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    let docs = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(docs.len(), 1, "{docs:#?}");
    stop.cancel();
    stage.await.unwrap().unwrap();
}

/// Regression: once the group's lease is lost, a successor resumes from the state topic, so
/// the old holder must neither deliver nor acknowledge what only its local file saved (its
/// offsets would skip records the successor never saw, and reuse revisions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_lease_is_lost_nothing_is_delivered_or_acknowledged() {
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let config = store_only_config(state_dir.path(), store_dir.path());
    let (tx, source) = ChannelSource::new(4);
    let lost = CancellationToken::new();
    let mut stage = dlog_alerting::Alerter::builder(config)
        .with_source(source)
        .with_clock(Arc::new(ManualClock::new(T0)))
        .with_lease_lost(&lost)
        .start()
        .await
        .unwrap();

    lost.cancel();
    let acked = send_error_log(&tx, [0x43; 16], "database timeout").await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), stage.stopped())
        .await
        .expect("the stage did not stop after losing the lease");
    let error = outcome.expect_err("the stage ended cleanly after losing the lease");
    assert!(error.to_string().contains("lost the lease"), "{error}");
    assert!(
        acked.await.is_err(),
        "the input was acknowledged after the lease was lost"
    );
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    let docs = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert!(
        docs.is_empty(),
        "delivered after the lease was lost: {docs:#?}"
    );
}
