//! Silences and acknowledgements on both backends: the embedded store (`silences.db` in its
//! directory) and Elasticsearch (osmem, or the cluster named by `ELASTICSEARCH_URL`).

use std::sync::Arc;

use dlog_storage::{open_store, AlertAck, Silence, Store, StoreConfig};

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
