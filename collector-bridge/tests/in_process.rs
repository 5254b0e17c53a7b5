//! The bridge over the in-process sink (all-in-one mode): a stage reading a `ChannelSource`
//! gets the same records Kafka would hold, and the sender's answer waits for the stage's ack.

mod common;

use std::time::Duration;

use collector_bridge::{start_with_sink, ChannelSink, Config, Subscriber};
use common::*;
use dlog_core::names;
use dlog_core::source::{ChannelSource, Source};
use tonic::Code;

fn config() -> Config {
    Config {
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        produce_timeout_ms: 2_000,
        ..Config::default()
    }
}

fn all_topics() -> Vec<String> {
    vec![
        names::TRACE_LOGS_TOPIC.into(),
        names::SERVICE_LOGS_TOPIC.into(),
        names::HEARTBEAT_LOGS_TOPIC.into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_waits_for_the_stage_ack_and_records_match_the_kafka_contract() {
    let (sender, mut source) = ChannelSource::new(8);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: all_topics(),
        sender,
    }]);
    let bridge = start_with_sink(config(), sink).await.unwrap();
    let url = format!("http://{}", bridge.grpc_addr());
    let t = trace_id(1);
    let request = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "a"), span(t, 2, "b")],
    );
    let sent = request.clone();
    let answer = tokio::spawn(async move {
        let mut client =
            opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(url)
                .await
                .unwrap();
        client.export(sent).await
    });

    let records = source
        .next_batch(10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].topic, names::TRACE_LOGS_TOPIC);
    assert_eq!(records[0].key_str().unwrap(), hex::encode(t));
    assert_eq!(decode_trace_record(&records[0]), request);
    assert!(
        !answer.is_finished(),
        "answered before the stage acknowledged"
    );
    source.ack(&records).await.unwrap();
    answer.await.unwrap().unwrap();
    bridge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_never_acks_makes_the_answer_unavailable() {
    let (sender, mut source) = ChannelSource::new(8);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: all_topics(),
        sender,
    }]);
    let bridge = start_with_sink(config(), sink).await.unwrap();
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", bridge.grpc_addr()),
        )
        .await
        .unwrap();
    let status = client
        .export(traces(
            resource("svc", "svc-1"),
            vec![span(trace_id(2), 1, "a")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("produce_timeout_ms"),
        "{}",
        status.message()
    );
    // The stage did receive it (at least once): acking late is harmless.
    let records = source.next_batch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(records.len(), 1);
    source.ack(&records).await.unwrap();
    bridge.shutdown().await.unwrap();
}

/// Records for a topic no stage reads used to be dropped and counted as produced; now the
/// bridge refuses to start, naming the setting and the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_channel_sink_without_a_reader_for_a_configured_topic_fails_the_start() {
    let (sender, _source) = ChannelSource::new(8);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: vec![
            names::TRACE_LOGS_TOPIC.into(),
            names::SERVICE_LOGS_TOPIC.into(),
        ],
        sender,
    }]);
    let err = start_with_sink(config(), sink)
        .await
        .err()
        .expect("started without a reader for heartbeat_logs")
        .to_string();
    assert!(
        err.contains("`heartbeat_logs_topic`") && err.contains("`heartbeat_logs`"),
        "{err}"
    );
}
