//! The bridge over the in-process sink (all-in-one mode): a stage reading a `ChannelSource`
//! gets the same records Kafka would hold, and the sender's answer waits for the stage's ack.

mod common;

use std::time::Duration;

use collector_bridge::{start_with_sink, ChannelSink, Config, Subscriber};
use common::*;
use dlog_core::names;
use dlog_core::source::{ChannelSource, Mark, Source};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::trace::v1::span::Event;
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
    source.ack(&Mark::latest(&records)).await.unwrap();
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
    source.ack(&Mark::latest(&records)).await.unwrap();
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

/// A stage that acknowledges everything it reads and hands the records to the test.
fn acking_stage() -> (
    ChannelSink,
    tokio::sync::mpsc::UnboundedReceiver<dlog_core::source::RawRecord>,
) {
    let (sender, mut source) = ChannelSource::new(64);
    let sink = ChannelSink::new(vec![Subscriber {
        name: "storage".into(),
        topics: all_topics(),
        sender,
    }]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(records) = source.next_batch(100, Duration::from_secs(3600)).await {
            if source.ack(&Mark::latest(&records)).await.is_err() {
                break;
            }
            for r in records {
                if tx.send(r).is_err() {
                    return;
                }
            }
        }
    });
    (sink, rx)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> &'a any_value::Value {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("no attribute `{key}` in {attributes:?}"))
}

fn string(value: &str) -> any_value::Value {
    any_value::Value::StringValue(value.into())
}

fn redacted() -> any_value::Value {
    string("[REDACTED]")
}

/// Attributes with secrets next to look-alikes that are not secrets.
fn sensitive_attributes() -> Vec<KeyValue> {
    vec![
        string_kv("http.request.header.authorization", "Bearer abc.def"),
        string_kv("db.password", "hunter2"),
        KeyValue {
            key: "gen_ai.usage.input_tokens".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(812)),
            }),
            ..Default::default()
        },
        string_kv("token_count", "17"),
        string_kv("http.request.header.x-api-key", "k-456"),
        string_kv("oauth.accessToken", "t-789"),
        string_kv("ui.monkey", "chimp"),
        string_kv("http.request.header.x-token-count", "3"),
        KeyValue {
            key: "request".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![string_kv("Api-Key", "k-123"), string_kv("path", "/login")],
                })),
            }),
            ..Default::default()
        },
    ]
}

fn assert_redacted(attributes: &[KeyValue]) {
    assert_eq!(
        attribute(attributes, "http.request.header.authorization"),
        &redacted()
    );
    assert_eq!(attribute(attributes, "db.password"), &redacted());
    assert_eq!(
        attribute(attributes, "gen_ai.usage.input_tokens"),
        &any_value::Value::IntValue(812)
    );
    assert_eq!(attribute(attributes, "token_count"), &string("17"));
    // Names that end a key as a whole word count; look-alikes do not.
    assert_eq!(
        attribute(attributes, "http.request.header.x-api-key"),
        &redacted()
    );
    assert_eq!(attribute(attributes, "oauth.accessToken"), &redacted());
    assert_eq!(attribute(attributes, "ui.monkey"), &string("chimp"));
    assert_eq!(
        attribute(attributes, "http.request.header.x-token-count"),
        &string("3")
    );
    let any_value::Value::KvlistValue(nested) = attribute(attributes, "request") else {
        panic!("request is not a kvlist");
    };
    assert_eq!(attribute(&nested.values, "Api-Key"), &redacted());
    assert_eq!(attribute(&nested.values, "path"), &string("/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_secrets_in_attributes_are_redacted_before_they_leave_the_bridge() {
    let (sink, mut records) = acking_stage();
    let bridge = start_with_sink(config(), sink).await.unwrap();
    let t = trace_id(3);
    let mut resource = resource("svc", "svc-1");
    resource.attributes.extend(sensitive_attributes());
    let mut secret_span = span(t, 1, "login");
    secret_span.attributes.extend(sensitive_attributes());
    secret_span.events.push(Event {
        name: "retry".into(),
        attributes: sensitive_attributes(),
        ..Default::default()
    });
    // A span without secrets next to it keeps its exact bytes.
    let plain_span = span(t, 2, "plain");
    let request = traces(resource.clone(), vec![secret_span, plain_span.clone()]);
    let mut log = log("login failed for password hunter2", Some((t, 1)), "");
    log.attributes.extend(sensitive_attributes());
    log.body = Some(AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: vec![string_kv("password", "in the body")],
        })),
    });
    let logs_request = logs(resource.clone(), vec![log]);

    // Protobuf over gRPC (read in place) and OTLP/JSON over HTTP (decoded).
    let mut client = TraceServiceClient::connect(format!("http://{}", bridge.grpc_addr()))
        .await
        .unwrap();
    client.export(request.clone()).await.unwrap();
    LogsServiceClient::connect(format!("http://{}", bridge.grpc_addr()))
        .await
        .unwrap()
        .export(logs_request)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&request).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    for path in ["gRPC protobuf", "HTTP JSON"] {
        let record = records.recv().await.unwrap();
        assert_eq!(record.topic, names::TRACE_LOGS_TOPIC, "{path}");
        let stored = decode_trace_record(&record);
        let rs = &stored.resource_spans[0];
        assert_redacted(&rs.resource.as_ref().unwrap().attributes);
        let spans = &rs.scope_spans[0].spans;
        assert_redacted(&spans[0].attributes);
        assert_redacted(&spans[0].events[0].attributes);
        assert_eq!(spans[1], plain_span, "{path}");
        if path == "gRPC protobuf" {
            let log_record = records.recv().await.unwrap();
            assert_eq!(log_record.topic, names::SERVICE_LOGS_TOPIC);
            let stored = decode_logs_record(&log_record);
            let rl = &stored.resource_logs[0];
            assert_redacted(&rl.resource.as_ref().unwrap().attributes);
            let stored_log = &rl.scope_logs[0].log_records[0];
            assert_redacted(&stored_log.attributes);
            // Bodies are left alone unless redact_log_bodies is set.
            let Some(any_value::Value::KvlistValue(body)) =
                stored_log.body.as_ref().and_then(|b| b.value.as_ref())
            else {
                panic!("body changed: {:?}", stored_log.body);
            };
            assert_eq!(attribute(&body.values, "password"), &string("in the body"));
        }
    }
    bridge.shutdown().await.unwrap();
}

/// OTLP/JSON nested deeper than protobuf decoding allows (each JSON object is one message),
/// or deeper than `serde_json` decodes, is refused with a 400 naming the limit before its
/// decoded size is reserved; the next request goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_past_the_depth_limits_gets_a_400_naming_the_limit() {
    let (sink, mut records) = acking_stage();
    let bridge = start_with_sink(config(), sink).await.unwrap();
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(format!("http://{}/v1/traces", bridge.http_addr()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let request = traces(resource("svc", "svc-1"), vec![span(trace_id(4), 1, "op")]);
    let good = serde_json::to_string(&request).unwrap();
    // The span object sits 3 levels below the request: an unknown member nesting 98 more
    // objects reaches depth 101.
    let deep_objects = |levels: usize| {
        let member = format!(
            "{}{{}}{}",
            r#"{"x":"#.repeat(levels - 1),
            "}".repeat(levels - 1)
        );
        good.replacen(r#""name":"op""#, &format!(r#""x":{member},"name":"op""#), 1)
    };
    let answer = post(deep_objects(97)).await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let answer = post(deep_objects(98)).await.unwrap();
    assert_eq!(answer.status(), 400);
    let text = answer.text().await.unwrap();
    assert!(text.contains("more than 100 levels"), "{text}");
    // 40 nested arrayValues: 130 arrays and objects deep.
    let mut value = r#"{"stringValue":"x"}"#.to_string();
    for _ in 0..40 {
        value = format!(r#"{{"arrayValue":{{"values":[{value}]}}}}"#);
    }
    let deep_values = good.replacen(
        r#""name":"op""#,
        &format!(r#""name":"op","attributes":[{{"key":"v","value":{value}}}]"#),
        1,
    );
    let answer = post(deep_values).await.unwrap();
    assert_eq!(answer.status(), 400);
    let text = answer.text().await.unwrap();
    assert!(text.contains("more than 128 levels"), "{text}");
    let answer = post(good).await.unwrap();
    assert_eq!(answer.status(), 200);
    // The two accepted requests, nothing from the refused ones.
    for _ in 0..2 {
        let record = records.recv().await.unwrap();
        assert_eq!(record.topic, names::TRACE_LOGS_TOPIC);
        assert_eq!(
            decode_trace_record(&record).resource_spans[0].scope_spans[0].spans[0].name,
            "op"
        );
    }
    bridge.shutdown().await.unwrap();
    assert!(records.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_can_be_turned_off_and_extended_to_log_bodies() {
    let mut log = log("body", None, "");
    log.attributes.push(string_kv("db.password", "hunter2"));
    log.attributes.push(string_kv("user.ssn", "123-45-6789"));
    log.body = Some(AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: vec![string_kv("password", "in the body")],
        })),
    });
    let request = logs(resource("svc", "svc-1"), vec![log]);
    for (redact, expected_password, expected_ssn, expected_body) in [
        (
            false,
            string("hunter2"),
            string("123-45-6789"),
            string("in the body"),
        ),
        (true, redacted(), redacted(), redacted()),
    ] {
        let (sink, mut records) = acking_stage();
        let bridge = start_with_sink(
            Config {
                redact_attributes: redact,
                redact_extra_keys: vec!["ssn".into()],
                redact_log_bodies: true,
                ..config()
            },
            sink,
        )
        .await
        .unwrap();
        LogsServiceClient::connect(format!("http://{}", bridge.grpc_addr()))
            .await
            .unwrap()
            .export(request.clone())
            .await
            .unwrap();
        let stored = decode_logs_record(&records.recv().await.unwrap());
        let stored = &stored.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(
            attribute(&stored.attributes, "db.password"),
            &expected_password
        );
        assert_eq!(attribute(&stored.attributes, "user.ssn"), &expected_ssn);
        let Some(any_value::Value::KvlistValue(body)) =
            stored.body.as_ref().and_then(|b| b.value.as_ref())
        else {
            panic!("body changed: {:?}", stored.body);
        };
        assert_eq!(attribute(&body.values, "password"), &expected_body);
        bridge.shutdown().await.unwrap();
    }
}

/// Two HTTP requests that declare 16 MiB bodies and send nothing, and two gRPC requests whose
/// frame header announces 16 MiB and nothing follows, used to hold the whole in-flight budget
/// (32 MiB) until they went away, so every other sender got 503 / UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_slow_clients_declared_bodies_do_not_hold_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (sink, mut records) = acking_stage();
    let body_timeout = Duration::from_secs(5);
    let bridge = start_with_sink(
        Config {
            request_body_timeout_ms: body_timeout.as_millis() as u64,
            max_in_flight_bytes: 32 * 1024 * 1024,
            ..config()
        },
        sink,
    )
    .await
    .unwrap();

    let mut hanging_http = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(bridge.http_addr())
            .await
            .unwrap();
        socket
            .write_all(
                b"POST /v1/traces HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/x-protobuf\r\ncontent-length: 16777216\r\n\r\n",
            )
            .await
            .unwrap();
        hanging_http.push(socket);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bridge.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut hanging_grpc = Vec::new();
    for _ in 0..2 {
        let mut header = vec![0u8];
        header.extend_from_slice(&(16u32 << 20).to_be_bytes());
        let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(
            hyper::body::Frame::data(bytes::Bytes::from(header)),
        )])
        .chain(futures::stream::pending());
        let request = http::Request::builder()
            .method("POST")
            .uri("http://bridge/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::StreamBody::new(
                frames,
            )))
            .unwrap();
        let mut channel = channel.clone();
        hanging_grpc.push(tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                <tonic::transport::Channel as tower::Service<
                    http::Request<tonic::body::Body>,
                >>::poll_ready(&mut channel, cx)
            })
            .await
            .unwrap();
            let response = tower::Service::call(&mut channel, request).await.unwrap();
            if let Some(status) = response.headers().get("grpc-status") {
                return status.to_str().unwrap().to_string();
            }
            let collected = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|s| s.to_str().unwrap().to_string())
                .unwrap_or_default()
        }));
    }
    // Wait until the bridge is handling all four.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_text(&bridge).await;
        if metric(&text, "dlog_bridge_in_flight_requests") >= 4.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A good request is answered 200 while they hang.
    let t = trace_id(5);
    let good = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "while others hang")],
    );
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", "application/x-protobuf")
        .timeout(Duration::from_secs(60))
        .body(prost::Message::encode_to_vec(&good))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let record = records.recv().await.unwrap();
    assert_eq!(decode_trace_record(&record), good);
    // ... and they were still hanging then.
    let mut probe = [0u8; 1];
    for socket in &hanging_http {
        assert!(
            matches!(socket.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a hanging connection was answered before the good request"
        );
    }
    assert!(hanging_grpc.iter().all(|task| !task.is_finished()));

    // At the body deadline they are answered (408, DEADLINE_EXCEEDED) and the HTTP
    // connections closed.
    for mut socket in hanging_http {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut answer))
            .await
            .expect("the hanging connection was not closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_body_timeout_ms"), "{answer}");
    }
    for task in hanging_grpc {
        let status = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the hanging gRPC request was not answered")
            .unwrap();
        assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    }
    bridge.shutdown().await.unwrap();
}

/// A connection that sends nothing, stops inside its headers, or stops inside the HTTP/2
/// preface used to keep its place for ever: the header-read timeout now closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_slow_clients_silent_connections_are_closed_by_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (sink, mut records) = acking_stage();
    let bridge = start_with_sink(
        Config {
            http_header_read_timeout_ms: 500,
            ..config()
        },
        sink,
    )
    .await
    .unwrap();
    let mut connections = Vec::new();
    for sent in [
        &b""[..],
        b"POST /v1/traces HTTP/1.1\r\nhost: bri",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut socket = tokio::net::TcpStream::connect(bridge.http_addr())
            .await
            .unwrap();
        socket.write_all(sent).await.unwrap();
        connections.push((sent, socket));
    }
    for (sent, mut socket) in connections {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), socket.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a connection that sent {:?} was not closed",
                    String::from_utf8_lossy(sent)
                )
            });
        // Closed: an orderly end, or a reset when unread bytes were left behind.
        match read {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    // Others are served as before.
    let t = trace_id(6);
    let good = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "after the silent ones")],
    );
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", bridge.http_addr()))
        .header("content-type", "application/x-protobuf")
        .body(prost::Message::encode_to_vec(&good))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(decode_trace_record(&records.recv().await.unwrap()), good);
    bridge.shutdown().await.unwrap();
}
