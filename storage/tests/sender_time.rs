//! Senders' clocks are input: a timestamp from 1970 or 2200 must neither create a daily
//! index of its own nor pin a service instance's registry entry.

mod common;

use dlog_storage::prelude::*;
use std::sync::Arc;

use common::conformance::{heartbeat, service, span};
use dlog_core::model::{HeartbeatKind, ServiceStatus, SpanKind};
use dlog_storage::elastic::ElasticStore;
use dlog_storage::{
    now_unix_nano, open_store, Document, Liveness, StatusQuery, Store, StoreConfig, WriteOutcome,
};

/// 2200-01-01T00:00:00Z in ns.
const YEAR_2200: u64 = 7_258_118_400_000_000_000;
/// 1970-01-01T00:00:01Z in ns.
const YEAR_1970: u64 = 1_000_000_000;
const HOUR: u64 = 3_600_000_000_000;
const DAY: u64 = 24 * HOUR;

async fn doc_status(client: &reqwest::Client, url: &str, index: &str, id: &str) -> u16 {
    client
        .get(format!("{url}/{index}/_doc/{id}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_sender_timestamps_cannot_create_daily_indices() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("sendertime"));
    let es = ElasticStore::connect(&config).await.unwrap();
    let svc = service("clock-skew", "i-1", &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let old = span(
        trace,
        "00f067aa0ba902b7",
        None,
        &svc,
        "GET /old",
        SpanKind::Server,
        YEAR_1970,
        5,
    );
    let future = span(
        trace,
        "00f067aa0ba902b8",
        None,
        &svc,
        "GET /future",
        SpanKind::Server,
        YEAR_2200,
        5,
    );

    let before = now_unix_nano();
    let outcomes = es
        .write(&[Document::Span(old.clone()), Document::Span(future.clone())])
        .await
        .unwrap();
    let after = now_unix_nano();
    assert_eq!(outcomes, vec![WriteOutcome::Written, WriteOutcome::Written]);
    es.refresh().await.unwrap();

    let client = reqwest::Client::new();
    // The oldest allowed day (7 days back) and the newest (1 hour ahead); the day may roll
    // over between the write and the clock reads around it, so either side counts.
    for (doc, day_of) in [
        (&old, [before - 7 * DAY, after - 7 * DAY]),
        (&future, [before + HOUR, after + HOUR]),
    ] {
        let mut found = Vec::new();
        for t in day_of {
            let index = es.names().span(t);
            if doc_status(&client, &elastic.url, &index, &doc.doc_id()).await == 200 {
                found.push(index);
            }
        }
        assert!(
            !found.is_empty(),
            "{} not in its clamped day's index",
            doc.name
        );
        // Not in an index of the sender's own day.
        let own = es.names().span(doc.start_unix_nano);
        assert_eq!(
            doc_status(&client, &elastic.url, &own, &doc.doc_id()).await,
            404,
            "{} created {own}",
            doc.name
        );
    }

    // The documents keep the times they were sent with.
    let mut stored = es.get_trace(trace).await.unwrap();
    stored.sort_by_key(|s| s.start_unix_nano);
    assert_eq!(stored, vec![old, future]);
    es.delete_indices().await.unwrap();
}

async fn a_future_heartbeat_does_not_pin_the_registry(store: Arc<dyn Store>) {
    let svc = service("clock-skew", "i-1", &[]);
    let skewed = heartbeat(&svc, HeartbeatKind::Heartbeat, ServiceStatus::Up, YEAR_2200);
    store.write(&[Document::Heartbeat(skewed)]).await.unwrap();
    // The instance then shuts down cleanly, with a true clock.
    let real_time = now_unix_nano();
    let real = heartbeat(
        &svc,
        HeartbeatKind::Registration,
        ServiceStatus::Down,
        real_time,
    );
    store.write(&[Document::Heartbeat(real)]).await.unwrap();
    store.refresh().await.unwrap();

    let status = store
        .service_status(&StatusQuery {
            service: Some("clock-skew".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].status, Liveness::Down, "{status:?}");
    assert_eq!(status[0].entry.reported, ServiceStatus::Down);
    assert_eq!(status[0].entry.last_heartbeat_unix_nano, real_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_future_heartbeat_does_not_pin_the_embedded_registry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    a_future_heartbeat_does_not_pin_the_registry(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_future_heartbeat_does_not_pin_the_elasticsearch_registry() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("hbclock"));
    let es = ElasticStore::connect(&config).await.unwrap();
    a_future_heartbeat_does_not_pin_the_registry(Arc::new(es)).await;
    let es = ElasticStore::connect(&config).await.unwrap();
    es.delete_indices().await.unwrap();
}
