//! The pipeline over the in-process `ChannelSource` (all-in-one mode): the sender's
//! acknowledgement completes only once the store took every document; only retryable
//! documents are written again; rejected ones are dead-lettered with their record.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use dlog_core::encoding::{encode_traces, Encoding};
use dlog_core::kafka::DeadLetterError;
use dlog_core::model::{LogEntry, SpanRecord};
use dlog_core::names;
use dlog_core::source::Source;
use dlog_core::source::{ChannelSource, InProcessBatch, Mark, RawRecord, SourceError};
use dlog_indexer::{DeadLetterSink, Indexer, IndexerConfig, LagReader, PartitionLag, ReportsLag};
use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::*;

/// Wraps the embedded store: span `retry_span` fails retryably twice, span `bad_span` is
/// rejected; every attempt per document id is counted.
struct Flaky {
    inner: EmbeddedStore,
    retry_span: String,
    bad_span: String,
    attempts: Mutex<HashMap<String, usize>>,
}

impl Backend for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
}

#[async_trait]
impl SpanWriter for Flaky {
    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut pass = Vec::new();
        let mut outcomes = Vec::new();
        for doc in docs {
            let id = doc.id();
            let n = {
                let mut a = self.attempts.lock().unwrap();
                let n = a.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            if id.ends_with(&self.retry_span) && n <= 2 {
                outcomes.push(Some(WriteOutcome::Retry("429 too many requests".into())));
            } else if id.ends_with(&self.bad_span) {
                outcomes.push(Some(WriteOutcome::Rejected(
                    "mapper_parsing_exception: bad".into(),
                )));
            } else {
                pass.push(doc.clone());
                outcomes.push(None);
            }
        }
        self.inner.write(&pass).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(WriteOutcome::Written))
            .collect())
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl TraceReader for Flaky {
    async fn get_trace(&self, id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        self.inner.get_trace(id).await
    }

    async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        self.inner.find_traces(q).await
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.inner.services().await
    }

    async fn operations(&self, s: &str) -> Result<Vec<Operation>, StoreError> {
        self.inner.operations(s).await
    }
}

#[async_trait]
impl DependencyReader for Flaky {
    async fn dependencies(&self, t: TimeRange) -> Result<Dependencies, StoreError> {
        self.inner.dependencies(t).await
    }
}

#[async_trait]
impl LogReader for Flaky {
    async fn search_logs(&self, q: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.search_logs(q).await
    }
}

#[async_trait]
impl StatusReader for Flaky {
    async fn service_status(&self, q: &StatusQuery) -> Result<Vec<InstanceStatus>, StoreError> {
        self.inner.service_status(q).await
    }
}

#[async_trait]
impl AlertStore for Flaky {
    async fn upsert_alerts(&self, a: &[AlertDoc]) -> Result<(), StoreError> {
        self.inner.upsert_alerts(a).await
    }

    async fn list_alerts(&self, q: &AlertQuery) -> Result<Vec<AlertDoc>, StoreError> {
        self.inner.list_alerts(q).await
    }
}

#[async_trait]
impl Retention for Flaky {}

#[derive(Default)]
struct Collected(Mutex<Vec<(RawRecord, String)>>);

#[async_trait]
impl DeadLetterSink for Collected {
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        self.0
            .lock()
            .unwrap()
            .push((record.clone(), reason.to_string()));
        Ok(())
    }
}

fn record(payload: Vec<u8>) -> RawRecord {
    RawRecord {
        topic: names::TRACE_LOGS_TOPIC.into(),
        partition: 0,
        offset: 0,
        key: None,
        payload,
        headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
        timestamp_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_wait_for_the_store_and_only_retryable_documents_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let request = two_service_request(dlog_storage::store::now_unix_nano());
    let trace_id = hex::encode(request.trace_id);
    let store = Arc::new(Flaky {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        retry_span: hex_id(ROOT),
        bad_span: hex_id(QUERY),
        attempts: Mutex::new(HashMap::new()),
    });
    let dead = Arc::new(Collected::default());
    let (tx, source) = ChannelSource::new(4);
    let config = IndexerConfig {
        retry_initial_ms: 10,
        retry_max_ms: 50,
        batch_linger_ms: 10,
        admin: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let running = Indexer::builder(config)
        .with_source(source)
        .with_store(Arc::clone(&store) as Arc<dyn Store>)
        .with_dead_letters(Arc::clone(&dead) as Arc<dyn DeadLetterSink>)
        .start()
        .await
        .unwrap();
    let metrics = running.metrics();

    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![
            record(encode_traces(Encoding::OtlpProto, &request.frontend_spans).unwrap()),
            record(b"garbage".to_vec()),
            record(encode_traces(Encoding::OtlpProto, &request.backend_spans).unwrap()),
        ],
        ack,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("acked in time")
        .unwrap();

    // Acked means stored: the three good spans are there the moment the ack arrives.
    let spans = store.get_trace(&trace_id).await.unwrap();
    let ids: Vec<String> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids, vec![hex_id(ROOT), hex_id(CLIENT), hex_id(SERVER)]);
    // The retryable span took three attempts; the others one each.
    let attempts = store.attempts.lock().unwrap().clone();
    for (id, n) in &attempts {
        let expected = if id.ends_with(&hex_id(ROOT)) { 3 } else { 1 };
        assert_eq!(*n, expected, "attempts of {id}");
    }
    assert_eq!(metrics.retried("span"), 2);
    // The garbage record and the record holding the rejected span went to dead letters.
    let dead = dead.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0.offset, 1);
    assert!(dead[0].1.starts_with("undecodable record"), "{}", dead[0].1);
    assert_eq!(dead[1].0.offset, 2);
    assert!(
        dead[1].1.contains(&format!(
            "span {trace_id}{} rejected by the store: mapper_parsing_exception",
            hex_id(QUERY)
        )),
        "{}",
        dead[1].1
    );
    assert_eq!(metrics.dead_lettered("decode"), 1);
    assert_eq!(metrics.dead_lettered("rejected"), 1);

    // The source closing ends the stage cleanly.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
}

/// A channel source whose lag reader blocks until released, like a broker that does not
/// answer watermark requests.
struct StuckLag {
    inner: ChannelSource,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl Source for StuckLag {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        self.inner.next_batch(max, linger).await
    }
    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        self.inner.ack(marks).await
    }
}

impl ReportsLag for StuckLag {
    fn lag_reader(&self) -> Option<LagReader> {
        let gate = Arc::clone(&self.gate);
        let reads = Arc::clone(&self.reads);
        Some(Arc::new(move || {
            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (open, cv) = &*gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            vec![PartitionLag {
                topic: names::TRACE_LOGS_TOPIC.into(),
                partition: 0,
                lag: 7,
            }]
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lag_read_that_hangs_does_not_delay_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (tx, inner) = ChannelSource::new(4);
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = StuckLag {
        inner,
        gate: Arc::clone(&gate),
        reads: Arc::clone(&reads),
    };
    let config = IndexerConfig {
        batch_linger_ms: 10,
        lag_interval_ms: 10,
        admin: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let running = Indexer::builder(config)
        .with_source(source)
        .with_store(Arc::clone(&store))
        .with_dead_letters(Arc::new(Collected::default()) as Arc<dyn DeadLetterSink>)
        .start()
        .await
        .unwrap();
    let metrics = running.metrics();
    wait_for("the first lag read", Duration::from_secs(10), || {
        let n = reads.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;

    // The lag read hangs; records are still indexed and acknowledged.
    let request = two_service_request(dlog_storage::store::now_unix_nano());
    let (ack, acked) = tokio::sync::oneshot::channel();
    tx.send(InProcessBatch {
        records: vec![record(
            encode_traces(Encoding::OtlpProto, &request.frontend_spans).unwrap(),
        )],
        ack,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("acked while the lag read hangs")
        .unwrap();
    let spans = store
        .get_trace(&hex::encode(request.trace_id))
        .await
        .unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(metrics.lag(names::TRACE_LOGS_TOPIC, 0), 0);

    // Once the read answers, the lag is published.
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    wait_for("the lag metric", Duration::from_secs(10), || {
        let lag = metrics.lag(names::TRACE_LOGS_TOPIC, 0);
        async move { (lag == 7).then_some(()) }
    })
    .await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
}
