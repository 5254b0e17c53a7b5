//! The conformance suite against each backend: the embedded store in a fresh directory, and
//! Elasticsearch (osmem, or the cluster named by `ELASTICSEARCH_URL`) with a fresh prefix.

mod common;

use std::sync::Arc;

use dlog_storage::{open_store, StoreConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    common::conformance::run(Arc::clone(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_and_drops_partitions_by_age_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    common::conformance::retention(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_store_keeps_and_drops_partitions_by_age_and_size() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("ret"));
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    common::conformance::retention(Arc::new(es)).await;
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    es.delete_indices().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_store_passes_the_conformance_suite() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("conf"));
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    let store: Arc<dyn dlog_storage::Store> = Arc::new(es);
    common::conformance::run(Arc::clone(&store)).await;
    // A shared cluster (ELASTICSEARCH_URL) keeps nothing behind.
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    es.delete_indices().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_store_pages_through_results_with_search_after() {
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("page"));
    // Two hits per page: every scan (traces, logs, registry, alerts, dependencies) pages.
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap()
        .with_page_size(2);
    common::conformance::run(Arc::new(es)).await;
    let es = dlog_storage::elastic::ElasticStore::connect(&config)
        .await
        .unwrap();
    es.delete_indices().await.unwrap();
}
