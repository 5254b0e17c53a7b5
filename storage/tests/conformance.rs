//! The conformance suite against each backend: the embedded store in a fresh directory, and
//! Elasticsearch (osmem, or the cluster named by `ELASTICSEARCH_URL`) with a fresh prefix.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use dlog_core::model::SpanRecord;
use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::{
    open_store, Backend, Document, Operation, SpanCursor, SpanWriter, StoreConfig, StoreError,
    TraceQuery, TraceReader, TraceSummary, WriteOutcome,
};

/// The conformance suite on the embedded store in a fresh directory.
async fn embedded_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    common::conformance::run(Arc::clone(&store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    embedded_conformance().await;
}

/// On a current-thread runtime the store cannot write a batch in place (`block_in_place`
/// needs a multi-threaded one): it copies the batch into a blocking task, the same suite holds.
#[tokio::test(flavor = "current_thread")]
async fn embedded_store_passes_the_conformance_suite_on_a_current_thread_runtime() {
    embedded_conformance().await;
}

/// A backend that has only the span writer and trace reader roles (here the embedded store's,
/// seen through those two traits alone), as a new backend has while it is being written.
struct TracesOnly(EmbeddedStore);

impl Backend for TracesOnly {
    fn backend(&self) -> &'static str {
        "traces-only"
    }
}

#[async_trait]
impl SpanWriter for TracesOnly {
    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.0.write(docs).await
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        SpanWriter::refresh(&self.0).await
    }
}

#[async_trait]
impl TraceReader for TracesOnly {
    async fn get_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        self.0.get_trace(trace_id).await
    }

    async fn get_trace_page(
        &self,
        trace_id: &str,
        after: Option<&SpanCursor>,
        limit: usize,
    ) -> Result<Vec<SpanRecord>, StoreError> {
        self.0.get_trace_page(trace_id, after, limit).await
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        self.0.find_traces(query).await
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.0.services().await
    }

    async fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError> {
        self.0.operations(service).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_only_span_writer_and_trace_reader_runs_its_part_of_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = TracesOnly(EmbeddedStore::open(dir.path()).unwrap());
    common::conformance::trace_roles(&store).await;
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
