//! Silences and acknowledgements on both backends: the embedded store (`silences.db` in its
//! directory) and Elasticsearch (osmem, or the cluster named by `ELASTICSEARCH_URL`).

use std::sync::Arc;

use dlog_storage::prelude::*;
use dlog_storage::{open_store, AlertAck, Silence, StoreConfig};

const T0: u64 = 1_800_000_000_000_000_000;
const MIN: u64 = 60_000_000_000;

fn silence(id: &str, service: Option<&str>, rule: Option<&str>, ends: u64) -> Silence {
    Silence {
        id: id.into(),
        service: service.map(Into::into),
        rule: rule.map(Into::into),
        starts_unix_nano: T0,
        ends_unix_nano: ends,
        created_by: "alice".into(),
        comment: "deploying <db> & \"friends\"".into(),
    }
}

async fn silences_conform(store: Arc<dyn Store>) {
    assert!(store.list_silences().await.unwrap().is_empty());
    assert!(store.list_acks().await.unwrap().is_empty());

    let db = silence("s-db", Some("db"), None, T0 + 60 * MIN);
    let rule = silence("s-rule", None, Some("error_rate"), T0 + 30 * MIN);
    store.put_silence(&rule).await.unwrap();
    store.put_silence(&db).await.unwrap();
    // Latest end first, every field kept.
    assert_eq!(
        store.list_silences().await.unwrap(),
        vec![db.clone(), rule.clone()]
    );

    // Idempotent by id: a second put replaces (here: extends) the silence.
    let mut longer = db.clone();
    longer.ends_unix_nano = T0 + 120 * MIN;
    longer.comment = "longer".into();
    store.put_silence(&longer).await.unwrap();
    store.put_silence(&longer).await.unwrap();
    assert_eq!(
        store.list_silences().await.unwrap(),
        vec![longer.clone(), rule.clone()]
    );

    assert!(store.delete_silence("s-rule").await.unwrap());
    assert!(!store.delete_silence("s-rule").await.unwrap());
    assert_eq!(store.list_silences().await.unwrap(), vec![longer]);

    // Acks: one per alert id (ids hold slashes), newest first, replaced by id.
    let first = AlertAck {
        alert_id: "error_rate/db".into(),
        acked_unix_nano: T0 + MIN,
        by: "bob".into(),
        comment: "looking".into(),
    };
    let second = AlertAck {
        alert_id: "log_error/web/E500".into(),
        acked_unix_nano: T0 + 2 * MIN,
        by: "carol".into(),
        comment: String::new(),
    };
    store.ack_alert(&first).await.unwrap();
    store.ack_alert(&second).await.unwrap();
    assert_eq!(
        store.list_acks().await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    let mut again = first.clone();
    again.acked_unix_nano = T0 + 3 * MIN;
    store.ack_alert(&again).await.unwrap();
    assert_eq!(store.list_acks().await.unwrap(), vec![again, second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_silences_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    silences_conform(store).await;
    assert!(dir.path().join("silences.db").exists());
    // Another handle on the same directory (the viewer next to the alerter) sees them.
    let other = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    assert_eq!(other.list_silences().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_store_keeps_silences_and_acks() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("silence"));
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    silences_conform(Arc::new(es)).await;
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    es.delete_silences_index().await.unwrap();
    es.delete_indices().await.unwrap();
}

const DAY: u64 = 24 * 60 * MIN;

/// Elasticsearch lists each kind latest first a page at a time (the active silences first,
/// however many expired ones are kept), and retention prunes silences that ended, and acks
/// made, longer ago than the retention age or 7 days, whichever is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_pages_silences_and_prunes_expired_ones_in_retention() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let prefix = dlog_testkit::unique_name("silpage");
    let config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(&prefix);
    // Pages of three: every list below takes several.
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap()
        .with_page_size(3);
    let store: Arc<dyn Store> = Arc::new(es);
    let now = T0;
    let mut written = Vec::new();
    for (i, ends) in [
        now - 10 * DAY,
        now - 9 * DAY,
        now - DAY,
        now - MIN,
        now + 60 * MIN,
        now + 2 * DAY,
        now - 8 * DAY,
    ]
    .into_iter()
    .enumerate()
    {
        let s = silence(&format!("s-{i}"), Some("db"), None, ends);
        store.put_silence(&s).await.unwrap();
        written.push(s);
    }
    let mut acks = Vec::new();
    for (i, at) in [now - 10 * DAY, now - MIN, now - 3 * DAY, now - 20 * DAY]
        .into_iter()
        .enumerate()
    {
        let a = AlertAck {
            alert_id: format!("error_rate/svc-{i}"),
            acked_unix_nano: at,
            by: "bob".into(),
            comment: String::new(),
        };
        store.ack_alert(&a).await.unwrap();
        acks.push(a);
    }
    let ends = |list: Vec<Silence>| {
        list.into_iter()
            .map(|s| s.ends_unix_nano)
            .collect::<Vec<_>>()
    };
    let mut expected = written.clone();
    expected.sort_by_key(|s| std::cmp::Reverse(s.ends_unix_nano));
    assert_eq!(
        ends(store.list_silences().await.unwrap()),
        ends(expected.clone()),
        "every silence, over three pages, latest end first"
    );
    assert_eq!(store.list_acks().await.unwrap().len(), 4);

    // Retention of 1 day: silences that ended and acks made more than 7 days ago go (the
    // longer of the two), so the 3-day-old ack of an alert still firing stays.
    let report = store
        .apply_retention(
            &dlog_storage::RetentionPolicy {
                max_age: Some(std::time::Duration::from_nanos(DAY)),
                max_bytes: None,
            },
            now,
        )
        .await
        .unwrap();
    assert!(report.dropped.is_empty());
    assert_eq!(
        ends(store.list_silences().await.unwrap()),
        vec![now + 2 * DAY, now + 60 * MIN, now - MIN, now - DAY]
    );
    assert_eq!(
        store
            .list_acks()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.acked_unix_nano)
            .collect::<Vec<_>>(),
        vec![now - MIN, now - 3 * DAY]
    );

    // More expired silences than a list holds: the active one still comes first.
    let index = format!("{prefix}-dlog-silences");
    let mut bulk = String::new();
    for i in 0..10_050u64 {
        let s = silence(&format!("old-{i}"), Some("web"), None, now - DAY - i);
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"silence:{}\"}}}}\n",
            s.id
        ));
        let mut doc = serde_json::to_value(&s).unwrap();
        doc["kind"] = "silence".into();
        bulk.push_str(&format!("{doc}\n"));
    }
    let res = reqwest::Client::new()
        .post(format!("{}/_bulk?refresh=true", elastic.url))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let latest = silence("s-latest", Some("web"), None, now + 3 * DAY);
    store.put_silence(&latest).await.unwrap();
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    let listed = es.list_silences().await.unwrap();
    assert_eq!(listed.len(), dlog_storage::silence::MAX_SILENCES);
    assert_eq!(listed[0], latest);
    assert_eq!(
        listed
            .iter()
            .filter(|s| s.active_at(now))
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec!["s-latest", "s-5", "s-4"],
        "every active silence is listed"
    );
    es.delete_silences_index().await.unwrap();
    es.delete_indices().await.unwrap();
}
