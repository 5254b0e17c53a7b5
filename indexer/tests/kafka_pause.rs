//! The Kafka input across a pause: every record is handed out once and in order, also when
//! the pause falls inside a record batch the producer wrote (the indexer pauses its input
//! while the store is down, after handing out a batch that may end anywhere).

use std::time::{Duration, Instant};

use dlog_core::kafka::{ConsumerSettings, KafkaSource};
use dlog_core::source::{RawRecord, Source};
use dlog_testkit::{unique_name, Kafka};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const RECORDS: i64 = 40;
const PER_BATCH: i64 = 8;

/// Reads until `want` records were handed out in all, or nothing came for 15 s (the group
/// join alone takes about half the 6 s session).
async fn read_until(source: &mut KafkaSource, got: &mut Vec<RawRecord>, want: usize) {
    let mut last_progress = Instant::now();
    while got.len() < want && last_progress.elapsed() < Duration::from_secs(15) {
        let batch = source
            .next_batch(want - got.len(), Duration::from_millis(200))
            .await
            .unwrap();
        if !batch.is_empty() {
            last_progress = Instant::now();
        }
        got.extend(batch);
    }
}

#[tokio::test]
async fn a_pause_inside_a_record_batch_skips_nothing() {
    let kafka = Kafka::start().unwrap();
    let topic = unique_name("paused_input");
    kafka.create_topics(&[&topic], 1).await.unwrap();
    // Record batches of 8: each group of sends is queued at once and lingers together.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "100")
        .create()
        .unwrap();
    for group in 0..RECORDS / PER_BATCH {
        let payloads: Vec<String> = (0..PER_BATCH)
            .map(|i| (group * PER_BATCH + i).to_string())
            .collect();
        let deliveries: Vec<_> = payloads
            .iter()
            .map(|p| {
                producer
                    .send_result(FutureRecord::<(), _>::to(&topic).partition(0).payload(p))
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for delivery in deliveries {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }

    let settings = ConsumerSettings::new(kafka.brokers.clone(), unique_name("g"), vec![topic]);
    let mut source = KafkaSource::new(&settings).unwrap();
    // Three records: the handed-out batch ends inside the first record batch.
    let mut got = Vec::new();
    read_until(&mut source, &mut got, 3).await;
    assert_eq!(got.len(), 3, "the first records never came");
    // The rest has been fetched meanwhile; the input is paused (and polled) for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..4 {
        source.pause().unwrap();
        got.extend(
            source
                .next_batch(RECORDS as usize, Duration::from_millis(250))
                .await
                .unwrap(),
        );
    }
    source.resume().unwrap();
    read_until(&mut source, &mut got, RECORDS as usize).await;

    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    let payloads: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert_eq!(
        offsets,
        (0..RECORDS).collect::<Vec<_>>(),
        "payloads {payloads:?}"
    );
}
