//! Bad input: poison records and documents the store rejects go to `dead_letters` with their
//! reason and coordinates, and the records after them are still stored.

mod common;

use dlog_core::stage::ConsumerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_core::names;
use dlog_indexer::IndexerConfig;
use dlog_storage::{LogQuery, Store, StoreConfig};

struct Topics {
    trace: String,
    log: String,
    hb: String,
    dlq: String,
}

async fn topics(kafka: &dlog_testkit::Kafka) -> Topics {
    let t = Topics {
        trace: dlog_testkit::unique_name("trace_logs"),
        log: dlog_testkit::unique_name("service_logs"),
        hb: dlog_testkit::unique_name("heartbeat_logs"),
        dlq: dlog_testkit::unique_name("dead_letters"),
    };
    kafka
        .create_topics(&[&t.trace, &t.log, &t.hb, &t.dlq], 3)
        .await
        .unwrap();
    t
}

fn indexer_config(kafka: &dlog_testkit::Kafka, t: &Topics, store: StoreConfig) -> IndexerConfig {
    IndexerConfig {
        input: ConsumerConfig {
            kafka_brokers: kafka.brokers.clone(),
            group_id: dlog_testkit::unique_name("indexer"),
            session_timeout_ms: 6000,
            ..Default::default()
        },
        trace_logs_topic: t.trace.clone(),
        service_logs_topic: t.log.clone(),
        heartbeat_logs_topic: t.hb.clone(),
        dead_letters_topic: t.dlq.clone(),
        admin: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        batch_linger_ms: 50,
        store,
        ..Default::default()
    }
}

fn header<'a>(record: &'a dlog_core::source::RawRecord, name: &str) -> &'a str {
    std::str::from_utf8(
        record
            .header(name)
            .unwrap_or_else(|| panic!("header {name} missing")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let t = topics(&kafka).await;
    let producer = producer(&kafka.brokers);
    let now = dlog_storage::store::now_unix_nano();
    let first = two_service_request(now);
    let second = two_service_request(now + 1_000_000);
    // Everything under one key, so one partition: the poison sits between the good records.
    let key = "same-partition";
    let encode = |r| {
        dlog_core::encoding::encode_traces(dlog_core::encoding::Encoding::OtlpProto, r).unwrap()
    };
    let proto = [(names::ENCODING_HEADER, "otlp_proto")];
    let good1 = produce(
        &producer,
        &t.trace,
        key,
        &encode(&first.frontend_spans),
        &proto,
    )
    .await;
    let garbage = produce(&producer, &t.trace, key, b"\xff\xffnot a protobuf", &proto).await;
    let avro = produce(
        &producer,
        &t.trace,
        key,
        b"{}",
        &[(names::ENCODING_HEADER, "avro")],
    )
    .await;
    let good2 = produce(
        &producer,
        &t.trace,
        key,
        &encode(&second.frontend_spans),
        &proto,
    )
    .await;
    assert!(good1.0 == garbage.0 && garbage.0 == avro.0 && avro.0 == good2.0);

    let dir = tempfile::tempdir().unwrap();
    let config = indexer_config(&kafka, &t, StoreConfig::embedded(dir.path()));
    let group = config.input.group_id.clone();
    let indexer = dlog_indexer::Indexer::builder(config)
        .start()
        .await
        .unwrap();
    let store: Arc<dyn Store> = indexer.store();

    for request in [&first, &second] {
        let id = hex::encode(request.trace_id);
        wait_for("the good records' spans", Duration::from_secs(30), || {
            let store = Arc::clone(&store);
            let id = id.clone();
            async move { (store.get_trace(&id).await.ok()?.len() == 2).then_some(()) }
        })
        .await;
    }

    let dead = dlog_testkit::read_topic(&kafka.brokers, &t.dlq, Duration::from_secs(30), |r| {
        r.len() >= 2
    })
    .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let by_offset = |o: i64| {
        dead.iter()
            .find(|r| header(r, names::DLQ_OFFSET_HEADER) == o.to_string())
            .expect("dead letter by offset")
    };
    let g = by_offset(garbage.1);
    assert_eq!(g.payload, b"\xff\xffnot a protobuf");
    assert_eq!(header(g, names::DLQ_TOPIC_HEADER), t.trace);
    assert_eq!(
        header(g, names::DLQ_PARTITION_HEADER),
        garbage.0.to_string()
    );
    assert_eq!(header(g, names::DLQ_STAGE_HEADER), "dlog-indexer");
    assert!(
        header(g, names::DLQ_REASON_HEADER)
            .contains("not a valid protobuf OTLP trace export request"),
        "{}",
        header(g, names::DLQ_REASON_HEADER)
    );
    assert_eq!(g.key.as_deref(), Some(key.as_bytes()));
    let a = by_offset(avro.1);
    assert!(
        header(a, names::DLQ_REASON_HEADER).contains("unknown encoding `avro`"),
        "{}",
        header(a, names::DLQ_REASON_HEADER)
    );
    assert_eq!(indexer.metrics().dead_lettered("decode"), 2);

    // The partition's offset moved past the poison.
    wait_for(
        "the commit past the last record",
        Duration::from_secs(30),
        || {
            let committed = committed(&kafka.brokers, &group, &t.trace, 3);
            let done = committed.get(&(t.trace.clone(), good2.0)) == Some(&(good2.1 + 1));
            async move { done.then_some(()) }
        },
    )
    .await;
    indexer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_elasticsearch_rejects_are_dead_lettered_and_the_rest_is_stored() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let elastic = dlog_testkit::Elastic::start().unwrap();
    let t = topics(&kafka).await;
    let prefix = dlog_testkit::unique_name("rej");
    let store_config = StoreConfig::elasticsearch(&elastic.url).with_index_prefix(prefix.clone());
    let now = dlog_storage::store::now_unix_nano();
    // Someone created today's log index by hand with `message` as a number: a mapping
    // conflict for every log document of the day.
    let es = dlog_storage::elastic::ElasticStore::connect(&store_config)
        .await
        .unwrap();
    let index = es.names().logs(now);
    let response = reqwest::Client::new()
        .put(format!("{}/{index}", elastic.url))
        .json(&serde_json::json!({"mappings": {"properties": {"message": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );

    let producer = producer(&kafka.brokers);
    let request = two_service_request(now);
    let trace_id = hex::encode(request.trace_id);
    let logs_at = produce_logs(&producer, &t.log, &trace_id, &request.backend_logs).await;
    produce_traces(&producer, &t.trace, &request.backend_spans).await;

    let indexer = dlog_indexer::Indexer::builder(indexer_config(&kafka, &t, store_config.clone()))
        .start()
        .await
        .unwrap();
    let store = indexer.store();
    wait_for(
        "the spans after the rejected logs",
        Duration::from_secs(30),
        || {
            let store = Arc::clone(&store);
            let id = trace_id.clone();
            async move {
                store.refresh().await.ok()?;
                (store.get_trace(&id).await.ok()?.len() == 2).then_some(())
            }
        },
    )
    .await;
    let dead = dlog_testkit::read_topic(&kafka.brokers, &t.dlq, Duration::from_secs(30), |r| {
        !r.is_empty()
    })
    .unwrap();
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], names::DLQ_REASON_HEADER);
    assert!(
        reason.contains("rejected by the store") && reason.contains("mapper_parsing_exception"),
        "{reason}"
    );
    assert_eq!(header(&dead[0], names::DLQ_TOPIC_HEADER), t.log);
    assert_eq!(
        header(&dead[0], names::DLQ_OFFSET_HEADER),
        logs_at.1.to_string()
    );
    // The registration in the same record is not a log document and was stored.
    store.refresh().await.unwrap();
    let status = store.service_status(&Default::default()).await.unwrap();
    assert_eq!(status.len(), 1);
    assert!(store
        .search_logs(&LogQuery::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(indexer.metrics().dead_lettered("rejected"), 1);
    indexer.shutdown().await.unwrap();
    es.delete_indices().await.unwrap();
}

/// A poison record as large as the bridge writes (near `DEFAULT_MAX_MESSAGE_BYTES`) plus the
/// dead-letter headers used to exceed the dead-letter producer's limit and stop the stage
/// for good; it must land in `dead_letters` and the records after it must be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_of_the_largest_size_is_dead_lettered_and_the_partition_moves_on() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let t = topics(&kafka).await;
    // The bridge raises its producer's limit the same way.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set(
            "message.max.bytes",
            (names::DEFAULT_MAX_MESSAGE_BYTES + 64 * 1024).to_string(),
        )
        .create()
        .unwrap();
    let now = dlog_storage::store::now_unix_nano();
    let after = two_service_request(now);
    let key = "same-partition";
    let proto = [(names::ENCODING_HEADER, "otlp_proto")];
    // 0xff bytes are no valid protobuf: a poison record of 999,900 bytes, which with the
    // dead-letter headers is over librdkafka's default 1,000,000-byte `message.max.bytes`.
    let poison_payload = vec![0xffu8; 999_900];
    let poison = produce(&producer, &t.trace, key, &poison_payload, &proto).await;
    let good = produce(
        &producer,
        &t.trace,
        key,
        &dlog_core::encoding::encode_traces(
            dlog_core::encoding::Encoding::OtlpProto,
            &after.frontend_spans,
        )
        .unwrap(),
        &proto,
    )
    .await;
    assert_eq!(poison.0, good.0);

    let dir = tempfile::tempdir().unwrap();
    let indexer = dlog_indexer::Indexer::builder(indexer_config(
        &kafka,
        &t,
        StoreConfig::embedded(dir.path()),
    ))
    .start()
    .await
    .unwrap();
    let store: Arc<dyn Store> = indexer.store();
    let id = hex::encode(after.trace_id);
    wait_for(
        "the spans after the poison",
        Duration::from_secs(40),
        || {
            let store = Arc::clone(&store);
            let id = id.clone();
            async move { (store.get_trace(&id).await.ok()?.len() == 2).then_some(()) }
        },
    )
    .await;
    let dead = dlog_testkit::read_topic(&kafka.brokers, &t.dlq, Duration::from_secs(30), |r| {
        !r.is_empty()
    })
    .unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(header(d, names::DLQ_OFFSET_HEADER), poison.1.to_string());
    assert_eq!(header(d, names::DLQ_PARTITION_HEADER), poison.0.to_string());
    assert_eq!(header(d, names::DLQ_TOPIC_HEADER), t.trace);
    assert!(
        header(d, names::DLQ_REASON_HEADER).contains("undecodable record"),
        "{}",
        header(d, names::DLQ_REASON_HEADER)
    );
    // Whole, or (if the topic refused that) cut short and saying so.
    match d.header(names::DLQ_TRUNCATED_HEADER) {
        None => assert_eq!(d.payload, poison_payload),
        Some(len) => {
            assert_eq!(len, b"999900");
            assert!(poison_payload.starts_with(&d.payload));
        }
    }
    assert_eq!(indexer.metrics().dead_lettered("decode"), 1);
    indexer.shutdown().await.unwrap();
}

/// A record the dead-letter producer refuses for good (larger than any limit) is written
/// once more, truncated and marked, so its reason and coordinates still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_topic_lands_truncated_with_its_reason() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let t = topics(&kafka).await;
    let dlq = dlog_core::kafka::DeadLetters::new(
        &kafka.brokers,
        &Default::default(),
        &t.dlq,
        "dlog-indexer",
    )
    .unwrap();
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let record = dlog_core::source::RawRecord {
        topic: t.trace.clone(),
        partition: 2,
        offset: 41,
        key: Some(b"k".to_vec()),
        payload: payload.clone(),
        headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
        timestamp_ms: None,
    };
    let long_reason = format!("undecodable record: {}", "x".repeat(10_000));
    tokio::time::timeout(Duration::from_secs(60), dlq.send(&record, &long_reason))
        .await
        .expect("the dead letter is written in time")
        .unwrap();
    let dead = dlog_testkit::read_topic(&kafka.brokers, &t.dlq, Duration::from_secs(30), |r| {
        !r.is_empty()
    })
    .unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(header(d, names::DLQ_TRUNCATED_HEADER), "2000000");
    assert_eq!(
        d.payload.len(),
        dlog_core::kafka::DLQ_TRUNCATED_PAYLOAD_BYTES
    );
    assert!(payload.starts_with(&d.payload));
    assert_eq!(header(d, names::DLQ_OFFSET_HEADER), "41");
    assert_eq!(header(d, names::DLQ_PARTITION_HEADER), "2");
    assert_eq!(header(d, names::DLQ_TOPIC_HEADER), t.trace);
    assert_eq!(header(d, names::ENCODING_HEADER), "otlp_proto");
    assert_eq!(d.key.as_deref(), Some(&b"k"[..]));
    let reason = header(d, names::DLQ_REASON_HEADER);
    assert!(reason.starts_with("undecodable record: xxx") && reason.ends_with("..."));
    assert!(reason.len() <= dlog_core::kafka::MAX_DLQ_REASON_BYTES);
}
