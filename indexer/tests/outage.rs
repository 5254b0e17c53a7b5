//! Store outage: the Elasticsearch-API server is frozen (SIGSTOP) mid-stream. The stage
//! retries, pauses, commits nothing while it is away, and once it is back (SIGCONT) every
//! record is stored exactly once and the offsets move on.

mod common;

use dlog_core::stage::ConsumerConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_indexer::IndexerConfig;
use dlog_storage::{Store, StoreConfig, TraceQuery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_and_no_offset_moves_while_elasticsearch_is_away() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let trace_topic = dlog_testkit::unique_name("trace_logs");
    let (log_topic, hb_topic, dlq_topic) = (
        dlog_testkit::unique_name("service_logs"),
        dlog_testkit::unique_name("heartbeat_logs"),
        dlog_testkit::unique_name("dead_letters"),
    );
    kafka
        .create_topics(&[&trace_topic, &log_topic, &hb_topic, &dlq_topic], 3)
        .await
        .unwrap();
    let mut store_config = StoreConfig::elasticsearch(&elastic.url)
        .with_index_prefix(dlog_testkit::unique_name("outage"));
    store_config.request_timeout_ms = 1500;
    let group = dlog_testkit::unique_name("indexer");
    let indexer = dlog_indexer::Indexer::builder(IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: group.clone(),
            session_timeout_ms: 6000,
            ..Default::default()
        },
        trace_logs_topic: trace_topic.clone(),
        service_logs_topic: log_topic,
        heartbeat_logs_topic: hb_topic,
        dead_letters_topic: dlq_topic,
        admin: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        batch_linger_ms: 50,
        retry_initial_ms: 100,
        retry_max_ms: 1000,
        store: store_config.clone(),
        ..Default::default()
    })
    .start()
    .await
    .unwrap();
    let store: Arc<dyn Store> = indexer.store();
    let metrics = indexer.metrics();
    let health = format!("http://{}/healthz", indexer.admin_addr());
    let producer = producer(&kafka.brokers);
    let now = dlog_storage::store::now_unix_nano();

    // Expected committed offset per partition: last produced offset + 1.
    let mut expected: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut sent = Vec::new();
    let send = |n: usize, base: u64| {
        let producer = producer.clone();
        let topic = trace_topic.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..n {
                let request = two_service_request(base + i as u64 * 1_000_000);
                let at = produce_traces(&producer, &topic, &request.frontend_spans).await;
                out.push((hex::encode(request.trace_id), at));
            }
            out
        }
    };
    let stored = |n: usize| {
        let store = Arc::clone(&store);
        async move {
            store.refresh().await.ok()?;
            let found = store
                .find_traces(&TraceQuery {
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .ok()?;
            (found.len() == n && found.iter().all(|t| t.span_count == 2)).then_some(found)
        }
    };

    for (id, (p, o)) in send(10, now).await {
        sent.push(id);
        let e = expected.entry((trace_topic.clone(), p)).or_insert(0);
        *e = (*e).max(o + 1);
    }
    wait_for(
        "the first 10 traces stored",
        Duration::from_secs(30),
        || stored(10),
    )
    .await;
    let before = wait_for("the first commits", Duration::from_secs(30), || {
        let c = committed(&kafka.brokers, &group, &trace_topic, 3);
        let done = c == expected;
        async move { done.then_some(c) }
    })
    .await;

    // Retries of the first phase (a loaded store may ask for some) must not count as retries
    // against the frozen store.
    let retried_before = metrics.retried("span");
    elastic.pause().unwrap();
    for (id, (p, o)) in send(10, now + 1_000_000_000).await {
        sent.push(id);
        let e = expected.entry((trace_topic.clone(), p)).or_insert(0);
        *e = (*e).max(o + 1);
    }
    // The stage tried, failed, and keeps trying; nothing is committed meanwhile.
    let retried = wait_for(
        "write retries against the frozen store",
        Duration::from_secs(30),
        || {
            let n = metrics.retried("span");
            async move { (n > retried_before).then_some(n) }
        },
    )
    .await;
    assert!(retried > retried_before);
    let status = reqwest::get(&health).await.unwrap().status();
    assert_eq!(status.as_u16(), 503, "/healthz while the store is away");
    assert_eq!(
        committed(&kafka.brokers, &group, &trace_topic, 3),
        before,
        "an offset moved while the store was away"
    );
    // A few more rounds of backoff, still nothing committed.
    let write_failures = |m: &dlog_indexer::Metrics| m.write_failures() + m.retried("span");
    let failures_then = write_failures(&metrics);
    wait_for("more failed attempts", Duration::from_secs(30), || {
        let n = write_failures(&metrics);
        async move { (n >= failures_then + 4).then_some(()) }
    })
    .await;
    assert_eq!(
        committed(&kafka.brokers, &group, &trace_topic, 3),
        before,
        "an offset moved while the store was away"
    );

    elastic.resume().unwrap();
    let found = wait_for(
        "all 20 traces stored once the store is back",
        Duration::from_secs(45),
        || stored(20),
    )
    .await;
    let mut found_ids: Vec<String> = found.into_iter().map(|t| t.trace_id).collect();
    found_ids.sort();
    sent.sort();
    assert_eq!(found_ids, sent);
    for id in &sent {
        assert_eq!(
            store.get_trace(id).await.unwrap().len(),
            2,
            "trace {id} stored exactly once"
        );
    }
    wait_for(
        "the commits after the outage",
        Duration::from_secs(30),
        || {
            let done = committed(&kafka.brokers, &group, &trace_topic, 3) == expected;
            async move { done.then_some(()) }
        },
    )
    .await;
    assert_eq!(reqwest::get(&health).await.unwrap().status().as_u16(), 200);
    indexer.shutdown().await.unwrap();
    dlog_storage::elastic::ElasticStore::connect(&store_config)
        .await
        .unwrap()
        .delete_indices()
        .await
        .unwrap();
}
