//! The stage fed in-process through a `ChannelSource`, as the all-in-one mode does: the
//! sender's acknowledgement completes only once the alert is in the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_alerting::{run_with, AlerterConfig, ManualClock};
use dlog_core::encoding::{encode_logs, Encoding};
use dlog_core::names;
use dlog_core::source::{ChannelSource, InProcessBatch, RawRecord};
use dlog_storage::{AlertQuery, StoreConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_input_is_acknowledged_only_after_the_store_has_the_alert() {
    let state_dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let mut config = AlerterConfig {
        admin: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.path().to_path_buf(),
        batch_linger_ms: 20,
        skip_replayed_offsets: false,
        ..Default::default()
    };
    config.outputs.terminal.enabled = false;
    config.outputs.kafka.enabled = false;
    config.outputs.store.enabled = true;
    config.outputs.store.backend = StoreConfig::embedded(store_dir.path());
    let (tx, source) = ChannelSource::new(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stage = tokio::spawn(run_with(
        config,
        source,
        Arc::new(ManualClock::new(T0)),
        async move {
            let _ = stopped.await;
        },
    ));

    let trace = [0x42; 16];
    let request = logs(
        resource("svc-a", "a-1", &[]),
        vec![error_log(
            "checkout failed",
            "E500",
            "database timeout",
            trace,
            T0,
        )],
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
