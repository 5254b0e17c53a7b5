//! Silences and acknowledgements from the store mute the notifying outputs: a silenced
//! service's alert is stored but does not reach the webhook while the silence lasts, and does
//! once it expired (by the stage's clock); an acknowledged alert's updates are held back.

mod common;

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use common::*;
use dlog_alerting::output::silences::{Muted, Muting, Silences};
use dlog_alerting::output::{AlertSink, SinkError};
use dlog_alerting::{
    run_with, Alert, AlertState, Clock, ManualClock, Severity, Transition, TransitionKind,
};
use dlog_core::encoding::{encode_logs, Encoding};
use dlog_core::names;
use dlog_core::source::{ChannelSource, InProcessBatch, RawRecord};
use dlog_storage::{AlertAck, AlertQuery, Silence, StoreConfig};

const SEC: u64 = 1_000_000_000;

/// Hands the stage one ERROR log of svc-a with `code` at `at`; completes once the stage
/// acknowledged it (so every required output has had it).
async fn error_log_acked(
    tx: &tokio::sync::mpsc::Sender<InProcessBatch>,
    code: &str,
    offset: i64,
    at: u64,
) {
    let trace = [offset as u8 + 1; 16];
    let record = error_log("checkout failed", code, "database timeout", trace, at);
    log_acked(tx, record, offset).await;
}

/// Hands the stage one log record of svc-a; completes once the stage acknowledged it.
async fn log_acked(
    tx: &tokio::sync::mpsc::Sender<InProcessBatch>,
    record: opentelemetry_proto::tonic::logs::v1::LogRecord,
    offset: i64,
) {
    let trace = [offset as u8 + 1; 16];
    let request = logs(resource("svc-a", "a-1", &[]), vec![record]);
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![RawRecord {
            topic: names::SERVICE_LOGS_TOPIC.into(),
            partition: 0,
            offset,
            key: Some(dlog_core::encoding::hex_id(&trace).into_bytes()),
            payload: encode_logs(Encoding::OtlpProto, &request).unwrap(),
            headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
            timestamp_ms: None,
        }],
        ack,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the stage did not acknowledge the record")
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_service_reaches_the_webhook_only_after_the_silence_expires() {
    let hook = Arc::new(Hook::default());
    let (url, _server) = serve_hook(hook.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    // svc-a is silenced for a minute of the stage's clock.
    store
        .put_silence(&Silence {
            id: "maintenance".into(),
            service: Some("svc-a".into()),
            rule: None,
            starts_unix_nano: T0,
            ends_unix_nano: T0 + 60 * SEC,
            created_by: "alice".into(),
            comment: "db migration".into(),
        })
        .await
        .unwrap();

    let mut config = webhook_only_config(state_dir.path(), url);
    config.outputs.store.enabled = true;
    config.outputs.store.backend = StoreConfig::embedded(store_dir.path());
    config.outputs.store.silence_refresh_ms = 50;
    let clock = ManualClock::new(T0);
    let (tx, source) = ChannelSource::new(4);
    let stop = CancellationToken::new();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(clock.clone()),
        stop.clone(),
    ));

    // While silenced: stored (the viewer shows it), not sent to the webhook.
    error_log_acked(&tx, "E500", 0, T0 + SEC).await;
    let stored = store.list_alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(
        (stored[0].service.as_str(), stored[0].state.as_str()),
        ("svc-a", "firing")
    );
    assert!(codes(&hook).is_empty(), "{:?}", codes(&hook));

    // After the silence ends: the alert that fired under it, still firing, is sent now (as
    // `fired`: the receiver never heard of it), and a new alert of svc-a goes out at once.
    clock.advance(Duration::from_secs(120));
    error_log_acked(&tx, "E501", 1, T0 + 121 * SEC).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while codes(&hook).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the held alert was not sent after the silence: {:?}",
            codes(&hook)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sent = codes(&hook);
    sent.sort();
    assert_eq!(sent, ["E500", "E501"]);
    assert!(hook
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["labels"]["error_code"] == "E500")
        .all(|b| b["event"] == "fired"));
    assert_eq!(
        store
            .list_alerts(&AlertQuery::default())
            .await
            .unwrap()
            .len(),
        2
    );

    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), stage)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(stop);
}

/// Regression (issue 11): an alert held back by a silence lived only in the alerter's memory,
/// so an alerter restarted during the silence never sent it. Now the held event is part of
/// the saved state: the stage is killed where it is (dropped, as a crash would) during the
/// silence, a new one starts from the same state directory, and once the silence is over
/// the receiver gets the alert, once, as `fired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_held_by_a_silence_is_sent_after_it_ends_across_a_restart() {
    let hook = Arc::new(Hook::default());
    let (url, _server) = serve_hook(hook.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    store
        .put_silence(&Silence {
            id: "maintenance".into(),
            service: Some("svc-a".into()),
            rule: None,
            starts_unix_nano: T0,
            ends_unix_nano: T0 + 60 * SEC,
            created_by: "alice".into(),
            comment: "db migration".into(),
        })
        .await
        .unwrap();
    drop(store);

    let mut config = webhook_only_config(state_dir.path(), url);
    config.outputs.store.enabled = true;
    config.outputs.store.backend = StoreConfig::embedded(store_dir.path());
    config.outputs.store.silence_refresh_ms = 50;
    let clock = ManualClock::new(T0);

    // First run: the alert fires under the silence and is held back.
    let (tx, source) = ChannelSource::new(4);
    let stop = CancellationToken::new();
    let first = tokio::spawn(run_with(
        config.clone(),
        source,
        Arc::new(clock.clone()),
        stop.clone(),
    ));
    error_log_acked(&tx, "E500", 0, T0 + SEC).await;
    assert!(codes(&hook).is_empty(), "{:?}", codes(&hook));
    // Killed where it is, during the silence.
    first.abort();
    let _ = first.await;
    drop(tx);

    // Second run, same state: the silence ends; the held alert goes out.
    let (tx, source) = ChannelSource::new(4);
    let second = tokio::spawn(run_with(
        config,
        source,
        Arc::new(clock.clone()),
        stop.clone(),
    ));
    // The clock moves on only once the stage runs (its state, the held alert included, is
    // loaded by then): an INFO log it acknowledged says so.
    let info = opentelemetry_proto::tonic::logs::v1::LogRecord {
        severity_number: 9,
        severity_text: "INFO".into(),
        time_unix_nano: T0 + 2 * SEC,
        ..Default::default()
    };
    log_acked(&tx, info, 1).await;
    clock.advance(Duration::from_secs(120));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while codes(&hook).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the alert held by the silence was not sent after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A later alert goes through too, and the held one was sent exactly once.
    error_log_acked(&tx, "E501", 2, T0 + 121 * SEC).await;
    let mut sent = codes(&hook);
    sent.sort();
    assert_eq!(sent, ["E500", "E501"]);
    assert!(hook
        .accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["labels"]["error_code"] == "E500")
        .all(|b| b["event"] == "fired"));

    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(stop);
}

fn transition(kind: TransitionKind, service: &str, rule: &str, first_seen: u64) -> Transition {
    Transition {
        kind,
        alert: Alert {
            id: format!("{rule}/{service}"),
            rule: rule.into(),
            key: service.into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            service: service.into(),
            instance: None,
            summary: "s".into(),
            first_seen_unix_nano: first_seen,
            last_seen_unix_nano: first_seen,
            occurrences: 1,
            example_trace_ids: vec![],
            root_cause: None,
            incident_id: None,
            labels: Default::default(),
            revision: 1,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_silences_and_acks_mute_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dlog_storage::open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let clock = ManualClock::new(T0);
    let silences = Silences::new(store.clone(), Arc::new(clock.clone()));
    store
        .put_silence(&Silence {
            id: "rule".into(),
            service: None,
            rule: Some("error_rate".into()),
            starts_unix_nano: T0,
            ends_unix_nano: T0 + 10 * SEC,
            created_by: String::new(),
            comment: String::new(),
        })
        .await
        .unwrap();
    store
        .ack_alert(&AlertAck {
            alert_id: "error_log/svc-b".into(),
            acked_unix_nano: T0 + SEC,
            by: "bob".into(),
            comment: String::new(),
        })
        .await
        .unwrap();
    // Nothing is known before the first read.
    let fired = transition(TransitionKind::Fired, "svc-b", "error_rate", T0);
    assert_eq!(silences.muting(&fired), None);
    silences.refresh().await.unwrap();
    assert_eq!(silences.muting(&fired), Some(Muting::Silenced));
    let other_rule = transition(TransitionKind::Fired, "svc-c", "error_log", T0);
    assert_eq!(silences.muting(&other_rule), None);

    // The ack holds back updates of the acknowledged episode, never its resolution, and not a
    // later episode of the same alert.
    let update = transition(TransitionKind::Updated, "svc-b", "error_log", T0);
    assert_eq!(silences.muting(&update), Some(Muting::Acknowledged));
    let resolved = transition(TransitionKind::Resolved, "svc-b", "error_log", T0);
    assert_eq!(silences.muting(&resolved), None);
    let later = transition(TransitionKind::Updated, "svc-b", "error_log", T0 + 5 * SEC);
    assert_eq!(silences.muting(&later), None);

    // The rule silence ends with the clock.
    clock.advance(Duration::from_secs(10));
    assert_eq!(clock.now_unix_nanos(), T0 + 10 * SEC);
    assert_eq!(silences.muting(&fired), None);
}

/// A store whose silences cannot be read while `down`; everything else passes through. It has
/// the alert role only: that is all [`Silences`] needs.
struct Flaky {
    inner: Arc<dyn dlog_storage::Store>,
    down: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), dlog_storage::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(dlog_storage::StoreError::Unavailable(
                "connection refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl dlog_storage::Backend for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
}

#[async_trait::async_trait]
impl dlog_storage::AlertStore for Flaky {
    async fn upsert_alerts(
        &self,
        alerts: &[dlog_storage::AlertDoc],
    ) -> Result<(), dlog_storage::StoreError> {
        self.inner.upsert_alerts(alerts).await
    }

    async fn list_alerts(
        &self,
        q: &AlertQuery,
    ) -> Result<Vec<dlog_storage::AlertDoc>, dlog_storage::StoreError> {
        self.inner.list_alerts(q).await
    }

    async fn list_silences(&self) -> Result<Vec<Silence>, dlog_storage::StoreError> {
        self.check()?;
        self.inner.list_silences().await
    }

    async fn list_acks(&self) -> Result<Vec<AlertAck>, dlog_storage::StoreError> {
        self.check()?;
        self.inner.list_acks().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_the_silences_last_read() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dlog_storage::open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    inner
        .put_silence(&Silence {
            id: "svc".into(),
            service: Some("svc-b".into()),
            rule: None,
            starts_unix_nano: T0,
            ends_unix_nano: T0 + 60 * SEC,
            created_by: String::new(),
            comment: String::new(),
        })
        .await
        .unwrap();
    let store = Arc::new(Flaky {
        inner: inner.clone(),
        down: false.into(),
    });
    let clock = ManualClock::new(T0);
    let silences = Silences::new(store.clone(), Arc::new(clock.clone()));
    silences.refresh().await.unwrap();
    let fired = transition(TransitionKind::Fired, "svc-b", "error_log", T0);
    assert_eq!(silences.muting(&fired), Some(Muting::Silenced));

    // The store goes away, and the silence is deleted meanwhile: the last read stays in force.
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(inner.delete_silence("svc").await.unwrap());
    let err = silences.refresh().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(silences.muting(&fired), Some(Muting::Silenced));

    // Back: the deletion is seen.
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    silences.refresh().await.unwrap();
    assert_eq!(silences.muting(&fired), None);
}

/// What a notifying output received, in order.
#[derive(Default)]
struct Recorder {
    got: std::sync::Mutex<Vec<(TransitionKind, String)>>,
}

#[async_trait::async_trait]
impl AlertSink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        self.got
            .lock()
            .unwrap()
            .extend(transitions.iter().map(|t| (t.kind, t.alert.id.clone())));
        Ok(())
    }
}

/// A silence delays, it does not lose: an alert that fired under it and still fires is sent
/// when it ends; one that fired and resolved within it never is; the resolution of an alert
/// the receiver already knew goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_holds_back_what_fires_under_it_and_lets_known_alerts_resolve() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = dlog_storage::open_store(&StoreConfig::embedded(store_dir.path()))
        .await
        .unwrap();
    let clock = ManualClock::new(T0);
    let silences = Silences::new(store.clone(), Arc::new(clock.clone()));
    let recorder = Arc::new(Recorder::default());
    let muted = Muted::new(recorder.clone(), silences.clone());

    // svc-a's old alert was sent before the silence began.
    let old = transition(TransitionKind::Fired, "svc-a", "error_log", T0);
    muted.send(std::slice::from_ref(&old)).await.unwrap();
    store
        .put_silence(&Silence {
            id: "maintenance".into(),
            service: Some("svc-a".into()),
            rule: None,
            starts_unix_nano: T0,
            ends_unix_nano: T0 + 60 * SEC,
            created_by: "alice".into(),
            comment: "deploy".into(),
        })
        .await
        .unwrap();
    silences.refresh().await.unwrap();

    let fires = transition(TransitionKind::Fired, "svc-a", "slow_response", T0 + SEC);
    let mut fires_again = fires.clone();
    fires_again.kind = TransitionKind::Updated;
    fires_again.alert.occurrences = 7;
    let blip = transition(TransitionKind::Fired, "svc-a", "failed_call", T0 + SEC);
    let mut blip_ends = blip.clone();
    blip_ends.kind = TransitionKind::Resolved;
    let mut old_update = old.clone();
    old_update.kind = TransitionKind::Updated;
    let mut old_ends = old.clone();
    old_ends.kind = TransitionKind::Resolved;
    muted
        .send(&[fires, blip, old_update, fires_again, blip_ends, old_ends])
        .await
        .unwrap();
    assert_eq!(
        *recorder.got.lock().unwrap(),
        [
            (TransitionKind::Fired, "error_log/svc-a".to_string()),
            (TransitionKind::Resolved, "error_log/svc-a".to_string()),
        ],
        "under the silence only the known alert's resolution goes out"
    );

    // Still silenced: nothing is released.
    muted.release().await;
    assert_eq!(recorder.got.lock().unwrap().len(), 2);

    // The silence ends: the alert that fired under it goes out once, as `fired`, with its
    // latest count; the blip that resolved within the silence never does.
    clock.advance(Duration::from_secs(120));
    muted.release().await;
    muted.release().await;
    let got = recorder.got.lock().unwrap().clone();
    assert_eq!(
        got[2..],
        [(TransitionKind::Fired, "slow_response/svc-a".to_string())]
    );
}
