//! The bridge alone, against a real Kafka-protocol broker (tansu): what a sender sends is what
//! lands in Kafka, keyed, split and acknowledged as the record contract says.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use dlog_core::names;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_traces_and_logs_produce_exactly_the_expected_records() {
    let env = Env::start(|_| {}).await;
    let t1 = trace_id(1);
    let spans = traces(
        resource("orders", "orders-1"),
        vec![span(t1, 1, "GET /orders"), span(t1, 2, "SELECT orders")],
    );
    let response = env
        .trace_client()
        .await
        .export(spans.clone())
        .await
        .unwrap();
    assert_eq!(response.into_inner(), ExportTraceServiceResponse::default());

    let in_trace = log("order loaded", Some((t1, 2)), "");
    let plain = log("cache warmed", None, "");
    let heartbeat = log("", None, names::HEARTBEAT_EVENT);
    let response = env
        .logs_client()
        .await
        .export(logs(
            resource("orders", "orders-1"),
            vec![in_trace.clone(), plain.clone(), heartbeat.clone()],
        ))
        .await
        .unwrap();
    assert_eq!(response.into_inner(), ExportLogsServiceResponse::default());
    env.send_sentinels().await;

    let trace_records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert_eq!(trace_records.len(), 1);
    assert_eq!(trace_records[0].key_str().unwrap(), hex::encode(t1));
    assert_eq!(
        trace_records[0].header(names::ENCODING_HEADER),
        Some(&b"otlp_proto"[..])
    );
    assert_eq!(decode_trace_record(&trace_records[0]), spans);

    let service_records = env
        .records_before_sentinel(&env.config.service_logs_topic)
        .await;
    assert_eq!(service_records.len(), 2);
    assert_eq!(service_records[0].key_str().unwrap(), hex::encode(t1));
    assert_eq!(
        decode_logs_record(&service_records[0]),
        logs(resource("orders", "orders-1"), vec![in_trace])
    );
    assert_eq!(service_records[1].key_str().unwrap(), "orders-1");
    assert_eq!(
        decode_logs_record(&service_records[1]),
        logs(resource("orders", "orders-1"), vec![plain])
    );

    let heartbeat_records = env
        .records_before_sentinel(&env.config.heartbeat_logs_topic)
        .await;
    assert_eq!(heartbeat_records.len(), 1);
    assert_eq!(heartbeat_records[0].key_str().unwrap(), "orders-1");
    assert_eq!(
        decode_logs_record(&heartbeat_records[0]),
        logs(resource("orders", "orders-1"), vec![heartbeat])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_gzip_request_produces_exactly_the_expected_record() {
    let env = Env::start(|_| {}).await;
    let t = trace_id(2);
    let request = traces(resource("cart", "cart-1"), vec![span(t, 1, "POST /cart")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&request.encode_to_vec()).unwrap();
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = response.bytes().await.unwrap();
    assert_eq!(
        ExportTraceServiceResponse::decode(body).unwrap(),
        ExportTraceServiceResponse::default()
    );
    env.send_sentinels().await;

    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key_str().unwrap(), hex::encode(t));
    assert_eq!(decode_trace_record(&records[0]), request);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_requests_produce_exactly_the_expected_records_in_json_encoding() {
    let env = Env::start(|c| c.encoding = dlog_core::encoding::Encoding::OtlpJson).await;
    let t = trace_id(3);
    // Hand-written OTLP/JSON, as a sender would post it: hex ids, enum numbers, string int64.
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"pay"}}}},
            {{"key":"service.instance.id","value":{{"stringValue":"pay-1"}}}}]}},
          "scopeSpans":[{{"scope":{{"name":"manual"}},"spans":[
            {{"traceId":"{}","spanId":"1000000000000001","name":"charge","kind":2,
              "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000",
              "attributes":[{{"key":"amount","value":{{"intValue":"42"}}}}]}}]}}]}}]}}"#,
        hex::encode(t)
    );
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer, serde_json::json!({}));

    let logs_body = r#"{"resourceLogs":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"pay"}},
        {"key":"service.instance.id","value":{"stringValue":"pay-1"}}]},
      "scopeLogs":[{"logRecords":[
        {"timeUnixNano":"1700000000000000001","severityNumber":13,"severityText":"WARN",
         "body":{"stringValue":"slow charge"}}]}]}]}"#;
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/logs"))
        .header("content-type", "application/json")
        .body(logs_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    env.send_sentinels().await;

    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key_str().unwrap(), hex::encode(t));
    assert_eq!(
        records[0].header(names::ENCODING_HEADER),
        Some(&b"otlp_json"[..])
    );
    let expected: ExportTraceServiceRequest = serde_json::from_str(&body).unwrap();
    assert_eq!(decode_trace_record(&records[0]), expected);
    // The value is OTLP/JSON itself, readable without our decoder.
    let value: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(
        value["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
        hex::encode(t)
    );

    let records = env
        .records_before_sentinel(&env.config.service_logs_topic)
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key_str().unwrap(), "pay-1");
    let logs = decode_logs_record(&records[0]);
    let record = &logs.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_text, "WARN");
    assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_with_three_traces_yields_three_records_with_their_own_keys() {
    let env = Env::start(|c| c.topic_partitions = 3).await;
    let ids = [trace_id(10), trace_id(11), trace_id(12)];
    // Interleaved, as a batching exporter sends them.
    let spans = vec![
        span(ids[0], 1, "a1"),
        span(ids[1], 2, "b1"),
        span(ids[2], 3, "c1"),
        span(ids[0], 4, "a2"),
        span(ids[1], 5, "b2"),
    ];
    // Sent gzip-compressed, as otelcol's otlp exporter does by default.
    env.trace_client()
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .export(traces(resource("svc", "svc-1"), spans))
        .await
        .unwrap();

    let records = read_until(&env.kafka.brokers, &env.config.trace_logs_topic, |rs| {
        rs.len() >= 3
    })
    .await;
    let mut got: Vec<(String, Vec<String>)> = records
        .iter()
        .map(|r| (r.key_str().unwrap(), span_names(&decode_trace_record(r))))
        .collect();
    got.sort();
    let expected = vec![
        (
            hex::encode(ids[0]),
            vec!["a1".to_string(), "a2".to_string()],
        ),
        (
            hex::encode(ids[1]),
            vec!["b1".to_string(), "b2".to_string()],
        ),
        (hex::encode(ids[2]), vec!["c1".to_string()]),
    ];
    assert_eq!(got, expected);
    // Every record holds only its own trace's spans, with the resource and scope.
    for r in &records {
        let request = decode_trace_record(r);
        assert_eq!(
            request.resource_spans[0].resource,
            Some(resource("svc", "svc-1"))
        );
        assert_eq!(
            request.resource_spans[0].scope_spans[0].scope,
            Some(scope())
        );
        for s in &request.resource_spans[0].scope_spans[0].spans {
            assert_eq!(hex::encode(&s.trace_id), r.key_str().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_split_under_the_limit_and_a_span_too_big_alone_is_rejected() {
    const MAX: usize = 4096;
    let env = Env::start(|c| c.max_message_bytes = MAX).await;
    let t = trace_id(20);
    let mut spans: Vec<_> = (0..60u8)
        .map(|i| {
            let mut s = span(t, i, &format!("step-{i}"));
            s.attributes.push(string_kv("payload", &"p".repeat(200)));
            s
        })
        .collect();
    let mut huge = span(t, 200, "huge");
    huge.attributes
        .push(string_kv("blob", &"x".repeat(3 * MAX)));
    spans.insert(30, huge);
    let other = span(trace_id(21), 201, "other-trace");
    spans.push(other);

    let response = env
        .trace_client()
        .await
        .export(traces(resource("batch", "batch-1"), spans))
        .await
        .unwrap()
        .into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("huge")
            && partial.error_message.contains("max_message_bytes 4096"),
        "{}",
        partial.error_message
    );
    env.send_sentinels().await;

    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert!(
        records.len() > 2,
        "expected the trace split over several records"
    );
    let mut names = Vec::new();
    for r in &records {
        let size = r.payload.len()
            + r.key.as_ref().map_or(0, Vec::len)
            + r.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        assert!(size <= MAX, "record of {size} bytes over {MAX}");
        let request = decode_trace_record(r);
        assert_eq!(
            request.resource_spans[0].resource,
            Some(resource("batch", "batch-1"))
        );
        for n in span_names(&request) {
            let expected_key = if n == "other-trace" {
                hex::encode(trace_id(21))
            } else {
                hex::encode(t)
            };
            assert_eq!(r.key_str().unwrap(), expected_key, "{n}");
            names.push(n);
        }
    }
    let mut expected: Vec<String> = (0..60).map(|i| format!("step-{i}")).collect();
    expected.push("other-trace".into());
    assert_eq!(
        names, expected,
        "every span but the huge one, once, in order"
    );

    let text = metrics_text(env.bridge()).await;
    assert_eq!(
        metric(&text, "dlog_bridge_rejected_items_total{signal=\"traces\"}"),
        1.0
    );
}

/// Sends raw bytes as a gRPC TraceService/Export request.
async fn grpc_raw(url: &str, bytes: Vec<u8>) -> Result<ExportTraceServiceResponse, tonic::Status> {
    #[derive(Clone)]
    struct Raw;
    struct RawEncoder;
    struct ResponseDecoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            dst: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl tonic::codec::Decoder for ResponseDecoder {
        type Item = ExportTraceServiceResponse;
        type Error = tonic::Status;
        fn decode(
            &mut self,
            src: &mut tonic::codec::DecodeBuf<'_>,
        ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
            ExportTraceServiceResponse::decode(src)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = ExportTraceServiceResponse;
        type Encoder = RawEncoder;
        type Decoder = ResponseDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> ResponseDecoder {
            ResponseDecoder
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(bytes),
        http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// After hostile input, a good request over gRPC and one over HTTP both reach Kafka, once each.
async fn good_requests_still_reach_kafka(env: &Env, trace: u8, name: &str) {
    let good = traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(trace), 1, name)],
    );
    grpc_raw(&env.grpc_url(), good.encode_to_vec())
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(good.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    env.send_sentinels().await;
    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(decode_trace_record(r), good);
    }
}

/// 1 MB of `0x0B` (start-group of field 1, nested a million deep) used to overflow a worker's
/// stack and abort the whole process. Both transports must refuse it as malformed, and the
/// bridge must still deliver the next good request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_remote_crash_nested_groups_are_invalid_over_grpc_and_http() {
    let env = Env::start(|_| {}).await;
    let bomb = vec![0x0b_u8; 1 << 20];
    let client = reqwest::Client::new();
    for round in 0..2 {
        let status = grpc_raw(&env.grpc_url(), bomb.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("recursion limit"),
            "{}",
            status.message()
        );

        let response = client
            .post(env.http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "round {round}");
        let status = tonic_types::Status::decode(response.bytes().await.unwrap()).unwrap();
        assert!(
            status.message.contains("recursion limit"),
            "{}",
            status.message
        );

        // Logs take the same reader.
        let response = client
            .post(env.http_url("/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "round {round}");
    }

    good_requests_still_reach_kafka(&env, 31, "after the bomb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_invalid_argument_or_400_and_the_next_request_succeeds() {
    let env = Env::start(|_| {}).await;
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99];

    let status = grpc_raw(&env.grpc_url(), garbage.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let client = reqwest::Client::new();
    let response = client
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(garbage.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let status = tonic_types::Status::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(
        status.message.contains("ExportTraceServiceRequest"),
        "{}",
        status.message
    );

    let response = client
        .post(env.http_url("/v1/logs"))
        .header("content-type", "application/json")
        .body("{\"resourceLogs\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = client
        .post(env.http_url("/v1/traces"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // The bridge keeps serving: good requests on both transports go through.
    good_requests_still_reach_kafka(&env, 30, "after garbage").await;

    let text = metrics_text(env.bridge()).await;
    assert_eq!(
        metric(
            &text,
            "dlog_bridge_requests_total{signal=\"traces\",transport=\"grpc\",outcome=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "dlog_bridge_requests_total{signal=\"traces\",transport=\"http\",outcome=\"invalid\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_gets_unavailable_and_503_then_the_retried_data_arrives() {
    let env = Env::start(|c| {
        c.produce_timeout_ms = 2_000;
        c.retry_after_secs = 1;
    })
    .await;
    // A first request proves the producer is connected, so the failure below is the pause.
    let warm_up = traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(40), 1, "warm-up")],
    );
    env.trace_client().await.export(warm_up).await.unwrap();

    let t = trace_id(41);
    let request = traces(resource("svc", "svc-1"), vec![span(t, 1, "while paused")]);
    env.kafka.pause().unwrap();

    let mut client = env.trace_client().await;
    let status = client.export(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );

    let http = reqwest::Client::new();
    let response = http
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    env.kafka.resume().unwrap();
    // Retry as an OTLP exporter does, until the bridge says yes (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        match client.export(request.clone()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("retry did not succeed: {s:?}"),
        }
    }
    env.send_sentinels().await;
    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    let retried: Vec<_> = records
        .iter()
        .filter(|r| r.key_str().as_deref() == Some(hex::encode(t).as_str()))
        .collect();
    // At least once: the attempts answered UNAVAILABLE may also have landed once the broker
    // thawed, but every copy is exactly the request's data.
    assert!(!retried.is_empty(), "retried data missing");
    for r in retried {
        assert_eq!(decode_trace_record(r), request);
    }
    let text = metrics_text(env.bridge()).await;
    assert!(
        metric(
            &text,
            "dlog_bridge_requests_total{signal=\"traces\",transport=\"grpc\",outcome=\"unavailable\"}"
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_report_what_happened() {
    let env = Env::start(|_| {}).await;
    let health = reqwest::get(format!("http://{}/healthz", env.bridge().admin_addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let t = trace_id(50);
    env.trace_client()
        .await
        .export(traces(
            resource("svc", "svc-1"),
            vec![span(t, 1, "a"), span(t, 2, "b"), span(trace_id(51), 3, "c")],
        ))
        .await
        .unwrap();
    let text = metrics_text(env.bridge()).await;
    assert_eq!(
        metric(
            &text,
            "dlog_bridge_received_items_total{signal=\"traces\",transport=\"grpc\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "dlog_bridge_produced_records_total{{topic=\"{}\"}}",
                env.config.trace_logs_topic
            )
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "dlog_bridge_requests_total{signal=\"traces\",transport=\"grpc\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "dlog_bridge_in_flight_requests"), 0.0);
    assert_eq!(
        metric(&text, "dlog_bridge_produce_latency_seconds_count"),
        1.0
    );
    // The latency senders see: one answer, counted once its outcome was decided.
    assert_eq!(
        metric(&text, "dlog_bridge_answer_latency_seconds_count"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_the_request_in_flight_then_stops_listening() {
    let mut env = Env::start(|c| c.produce_timeout_ms = 20_000).await;
    env.trace_client()
        .await
        .export(traces(
            resource("svc", "svc-1"),
            vec![span(trace_id(60), 1, "warm-up")],
        ))
        .await
        .unwrap();
    let grpc_addr = env.bridge().grpc_addr();
    let admin_addr = env.bridge().admin_addr();

    // Hold a request in flight by freezing the broker under it.
    env.kafka.pause().unwrap();
    let t = trace_id(61);
    let request = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "in flight at shutdown")],
    );
    let mut client = env.trace_client().await;
    let in_flight = tokio::spawn(async move { client.export(request).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("http://{admin_addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "dlog_bridge_in_flight_requests") == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bridge = env.bridge.take().unwrap();
    let shutdown = tokio::spawn(bridge.shutdown());
    // Draining: health says so while the request waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = reqwest::get(format!("http://{admin_addr}/healthz"))
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.kafka.resume().unwrap();

    let answer = in_flight.await.unwrap();
    assert!(
        answer.is_ok(),
        "in-flight request was not finished: {answer:?}"
    );
    shutdown.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(grpc_addr).await.is_err(),
        "still accepting after shutdown"
    );
    let records = read_until(
        &env.kafka.brokers,
        &env.config.trace_logs_topic,
        move |rs| {
            rs.iter()
                .any(|r| r.key_str().as_deref() == Some(hex::encode(t).as_str()))
        },
    )
    .await;
    assert!(records
        .iter()
        .any(|r| r.key_str().as_deref() == Some(hex::encode(t).as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_and_scope_of_every_span_are_kept_across_resources() {
    let env = Env::start(|_| {}).await;
    let t = trace_id(70);
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("front", "front-1")),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: vec![span(t, 1, "front")],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                resource: Some(resource("back", "back-1")),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: vec![span(t, 2, "back")],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    env.trace_client()
        .await
        .export(request.clone())
        .await
        .unwrap();
    env.send_sentinels().await;
    let records = env
        .records_before_sentinel(&env.config.trace_logs_topic)
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(decode_trace_record(&records[0]), request);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_max_request_bytes_is_refused_for_good() {
    let env = Env::start(|c| c.max_request_bytes = 4096).await;
    let t = trace_id(80);
    let mut big = span(t, 1, "big");
    big.attributes.push(string_kv("blob", &"b".repeat(8192)));
    let request = traces(resource("svc", "svc-1"), vec![big]);

    // RESOURCE_EXHAUSTED without RetryInfo: OTLP senders do not retry it.
    let status = env
        .trace_client()
        .await
        .export(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Small requests still pass.
    let small = traces(resource("svc", "svc-1"), vec![span(t, 2, "small")]);
    env.trace_client().await.export(small).await.unwrap();
}

/// The admin port's `/metrics` value of `series`, polled until `done` holds (bounded).
async fn wait_for_metric(admin: std::net::SocketAddr, series: &str, done: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if done(metric(&text, series)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never got there: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the head of an OTLP/HTTP protobuf request and `first` bytes of `body`, leaving the
/// request being read.
async fn start_http_request(
    addr: std::net::SocketAddr,
    body: &[u8],
    first: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..first]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Memory used to be reserved only once a request was read, inflated and routed, with no
/// bound on concurrent requests. Now a request is refused with UNAVAILABLE / 503 (and the
/// retry hint) before its body is read when the in-flight budget is taken, and at once when
/// `max_concurrent_requests` are in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_unbounded_memory_busy_budget_and_concurrency_answer_unavailable() {
    let mut env = Env::start(|c| {
        c.produce_timeout_ms = 20_000;
        c.max_message_bytes = 8192;
        c.max_in_flight_bytes = 16384;
        c.admission_timeout_ms = 200;
        c.max_concurrent_requests = 3;
        c.retry_after_secs = 1;
    })
    .await;
    let admin = env.bridge().admin_addr();
    let padded = |t: [u8; 16], id: u8, pad: usize| {
        let mut s = span(t, id, "padded");
        s.attributes.push(string_kv("pad", &"p".repeat(pad)));
        s
    };
    env.trace_client()
        .await
        .export(traces(
            resource("svc", "svc-1"),
            vec![span(trace_id(90), 1, "warm-up")],
        ))
        .await
        .unwrap();

    // A holds about 7 KB of the 16 KB budget (its record) while the frozen broker does not
    // answer.
    env.kafka.pause().unwrap();
    let a = traces(
        resource("svc", "svc-1"),
        vec![padded(trace_id(91), 1, 7000)],
    );
    let mut a_client = env.trace_client().await;
    let a_sent = a.clone();
    let a_answer = tokio::spawn(async move { a_client.export(a_sent).await });
    wait_for_metric(admin, "dlog_bridge_in_flight_requests", |v| v == 1.0).await;
    wait_for_metric(admin, "dlog_bridge_in_flight_bytes", |v| v >= 7000.0).await;

    // B needs about 13 KB (its 6 KB body, bookkeeping, and its records next to the body):
    // refused for now, over both transports.
    let b = traces(
        resource("svc", "svc-1"),
        vec![
            padded(trace_id(92), 1, 2000),
            padded(trace_id(92), 2, 2000),
            padded(trace_id(92), 3, 2000),
        ],
    );
    let status = env
        .trace_client()
        .await
        .export(b.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("max_in_flight_bytes"),
        "{status:?}"
    );
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(b.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    // Two requests still being read fill max_concurrent_requests (3) with A: the next one is
    // shed at once.
    let small = traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(93), 1, "small")],
    );
    let body = small.encode_to_vec();
    let _c1 = start_http_request(env.bridge().http_addr(), &body, 1).await;
    let _c2 = start_http_request(env.bridge().http_addr(), &body, 1).await;
    wait_for_metric(admin, "dlog_bridge_in_flight_requests", |v| v == 3.0).await;
    let status = env
        .trace_client()
        .await
        .export(small.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("max_concurrent_requests"),
        "{status:?}"
    );
    drop(_c1);
    drop(_c2);

    // Once Kafka answers, A is acknowledged and the refused data goes through on retry.
    env.kafka.resume().unwrap();
    a_answer.await.unwrap().unwrap();
    wait_for_metric(admin, "dlog_bridge_in_flight_requests", |v| v == 0.0).await;
    env.trace_client().await.export(b).await.unwrap();
    env.trace_client().await.export(small).await.unwrap();
    let text = metrics_text(env.bridge()).await;
    assert!(
        metric(
            &text,
            "dlog_bridge_requests_total{signal=\"traces\",transport=\"grpc\",outcome=\"unavailable\"}"
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "dlog_bridge_in_flight_bytes"), 0.0);
    env.bridge.take().unwrap().shutdown().await.unwrap();
}

/// A request still being read (or decoded) used to count as idle for a graceful shutdown,
/// which then closed its connection. It is in flight from its arrival now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_shutdown_waits_for_a_request_still_being_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = Env::start(|_| {}).await;
    let admin = env.bridge().admin_addr();
    let t = trace_id(95);
    let request = traces(
        resource("svc", "svc-1"),
        vec![span(t, 1, "read during shutdown")],
    );
    let body = request.encode_to_vec();
    let mut stream = start_http_request(env.bridge().http_addr(), &body, body.len() / 2).await;
    wait_for_metric(admin, "dlog_bridge_in_flight_requests", |v| v == 1.0).await;

    let shutdown = tokio::spawn(env.bridge.take().unwrap().shutdown());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap()
        .status()
        != 503
    {
        assert!(tokio::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still waiting for the request: it holds the shutdown up until it is answered.
    wait_for_metric(admin, "dlog_bridge_in_flight_requests", |v| v == 1.0).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request"
    );

    stream.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    shutdown.await.unwrap().unwrap();
    let records = read_until(
        &env.kafka.brokers,
        &env.config.trace_logs_topic,
        move |rs| {
            rs.iter()
                .any(|r| r.key_str().as_deref() == Some(hex::encode(t).as_str()))
        },
    )
    .await;
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.key_str().as_deref() == Some(hex::encode(t).as_str()))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(decode_trace_record(mine[0]), request);
}

/// Kafka errors an operator can fix used to answer INTERNAL / 500, which senders never
/// retry. A missing topic now answers UNAVAILABLE / 503 naming the topic and the remedy (and
/// logs it as an error), so the data waits at the sender until the topic exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_missing_topic_is_unavailable_naming_the_topic_and_the_remedy() {
    let env = Env::start(|c| c.create_topics = false).await;
    let request = traces(
        resource("svc", "svc-1"),
        vec![span(trace_id(97), 1, "nowhere to go")],
    );
    let status = env
        .trace_client()
        .await
        .export(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&env.config.trace_logs_topic)
            && status.message().contains("create_topics"),
        "{status:?}"
    );
    let response = reqwest::Client::new()
        .post(env.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    // Once the topic exists, the retry is accepted.
    env.kafka
        .create_topics(&[&env.config.trace_logs_topic], 1)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match env.trace_client().await.export(request.clone()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("retry did not succeed: {s:?}"),
        }
    }
}
