//! Records/s the alerting engine evaluates with every rule on, over a realistic mix of spans,
//! logs, service calls and heartbeats: once pre-decoded (the engine alone) and once from the
//! Kafka record values (decode + flatten + engine), on one thread.
//!
//! `cargo bench -p dlog-alerting --bench engine` (release). Prints figures; asserts nothing.

use std::sync::Arc;
use std::time::Instant;

use dlog_alerting::record::decode_into;
use dlog_alerting::{Engine, ManualClock, Record, RulesConfig};
use dlog_core::encoding::{encode_logs, encode_traces, Encoding, Signal};
use dlog_core::names;
use dlog_core::source::RawRecord;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

const T0: u64 = 1_750_000_000_000_000_000;
const SERVICES: usize = 12;
const REQUESTS: usize = 40_000;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn svc(i: usize) -> String {
    format!("svc-{i:02}")
}

fn resource(i: usize) -> Resource {
    // Each service declares the next one; calls to the one after that are drift.
    let deps = vec![AnyValue {
        value: Some(s(&svc((i + 1) % SERVICES))),
    }];
    Resource {
        attributes: vec![
            kv(names::SERVICE_NAME, s(&svc(i))),
            kv(names::SERVICE_VERSION, s("1.4.2")),
            kv(names::SERVICE_INSTANCE_ID, s(&format!("{}-1", svc(i)))),
            kv(
                names::SERVICE_DEPENDENCIES,
                any_value::Value::ArrayValue(ArrayValue { values: deps }),
            ),
            kv("host.name", s("vm1")),
        ],
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &[u8],
    id: u64,
    parent: Option<u64>,
    name: &str,
    kind: span::SpanKind,
    ms: u64,
    error: bool,
    at: u64,
    attrs: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: at,
        end_time_unix_nano: at + ms * 1_000_000,
        attributes: attrs,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            message: if error {
                "upstream failed".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

fn traces(service: usize, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs(service: usize, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn log(
    level: i32,
    text: &str,
    body: &str,
    trace: &[u8],
    at: u64,
    attrs: Vec<KeyValue>,
    event: &str,
) -> LogRecord {
    LogRecord {
        time_unix_nano: at,
        severity_number: level,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(s(body)),
        }),
        trace_id: trace.to_vec(),
        span_id: vec![7; 8],
        attributes: attrs,
        event_name: event.into(),
        ..Default::default()
    }
}

fn raw(topic: &str, value: Vec<u8>) -> RawRecord {
    RawRecord {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: value,
        headers: vec![(names::ENCODING_HEADER.into(), b"otlp_proto".to_vec())],
        timestamp_ms: None,
    }
}

/// The Kafka records of one simulated stretch of traffic: per request, 3 spans in 2 records
/// (caller with a server and a client span, callee with a server span), 2 logs and a
/// service.call record; some warnings, errors, slow and failing requests; a heartbeat per
/// service every 10 s of simulated time.
fn workload() -> Vec<(Signal, RawRecord)> {
    let mut out = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut span_id = 1u64;
    for r in 0..REQUESTS {
        let at = T0 + r as u64 * 1_500_000; // ~667 requests/s of simulated time
        let caller = r % SERVICES;
        // 1 call in 50 goes to an undeclared service (drift), the rest to the declared one.
        let callee = if r % 50 == 0 {
            (caller + 2) % SERVICES
        } else {
            (caller + 1) % SERVICES
        };
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&next().to_be_bytes());
        trace[8..].copy_from_slice(&(r as u64).to_be_bytes());
        let roll = next() % 1000;
        let failed = roll < 8; // 0.8% failing calls
        let slow = roll >= 990; // 1% slow
        let ms = if slow { 1_500 } else { 5 + next() % 60 };
        let (root, client, server) = (span_id, span_id + 1, span_id + 2);
        span_id += 3;
        let op = format!("GET /api/{}", r % 7);
        let caller_spans = vec![
            span(
                &trace,
                root,
                None,
                &op,
                span::SpanKind::Server,
                ms + 2,
                failed,
                at,
                vec![kv("http.route", s(&op))],
            ),
            span(
                &trace,
                client,
                Some(root),
                "GET",
                span::SpanKind::Client,
                ms + 1,
                failed,
                at,
                vec![
                    kv(names::PEER_SERVICE, s(&svc(callee))),
                    kv("server.address", s("127.0.0.1")),
                ],
            ),
        ];
        out.push((
            Signal::Traces,
            raw(
                names::TRACE_LOGS_TOPIC,
                encode_traces(Encoding::OtlpProto, &traces(caller, caller_spans))
                    .unwrap_or_default(),
            ),
        ));
        let callee_span = vec![span(
            &trace,
            server,
            Some(client),
            "GET /internal",
            span::SpanKind::Server,
            ms,
            failed,
            at,
            vec![],
        )];
        out.push((
            Signal::Traces,
            raw(
                names::TRACE_LOGS_TOPIC,
                encode_traces(Encoding::OtlpProto, &traces(callee, callee_span))
                    .unwrap_or_default(),
            ),
        ));
        let mut records = vec![
            log(
                9,
                "INFO",
                "request received",
                &trace,
                at,
                vec![kv("http.route", s(&op))],
                "",
            ),
            log(
                if failed { 13 } else { 9 },
                if failed { "WARN" } else { "INFO" },
                "call",
                &trace,
                at,
                vec![
                    kv(names::CALL_SOURCE, s(&svc(caller))),
                    kv(names::CALL_TARGET, s(&svc(callee))),
                    kv(names::CALL_SUCCESS, any_value::Value::BoolValue(!failed)),
                    kv(
                        names::CALL_STATUS,
                        s(if failed { "FAILURE" } else { "SUCCESS" }),
                    ),
                    kv(
                        names::CALL_DURATION_MS,
                        any_value::Value::DoubleValue(ms as f64),
                    ),
                ],
                names::SERVICE_CALL_EVENT,
            ),
        ];
        if roll % 50 == 1 {
            records.push(log(
                13,
                "WARN",
                &format!("cache miss ratio {}%", roll % 100),
                &trace,
                at,
                vec![],
                "",
            ));
        }
        if failed {
            records.push(log(
                17,
                "ERROR",
                "request failed",
                &trace,
                at,
                vec![
                    kv(names::ERROR_CODE, s(&format!("E5{:02}", roll % 4))),
                    kv(names::ERROR_MESSAGE, s("upstream failed")),
                    kv(names::DEPENDENT_SERVICE, s(&svc(callee))),
                ],
                "",
            ));
        }
        if slow {
            records.push(log(
                13,
                "WARN",
                "slow response",
                &trace,
                at,
                vec![
                    kv(
                        names::RESPONSE_TIME_MS,
                        any_value::Value::IntValue(ms as i64),
                    ),
                    kv(names::THRESHOLD_LIMIT_MS, any_value::Value::IntValue(1000)),
                ],
                "",
            ));
        }
        out.push((
            Signal::Logs,
            raw(
                names::SERVICE_LOGS_TOPIC,
                encode_logs(Encoding::OtlpProto, &logs(caller, records)).unwrap_or_default(),
            ),
        ));
        // Heartbeats: every service every 10 s of simulated time.
        if r % (10_000 / SERVICES) == 0 {
            for i in 0..SERVICES {
                let hb = log(
                    9,
                    "INFO",
                    names::HEARTBEAT_EVENT,
                    &[],
                    at,
                    vec![
                        kv(names::SERVICE_STATUS, s("UP")),
                        kv(
                            names::HEARTBEAT_INTERVAL_MS,
                            any_value::Value::IntValue(10_000),
                        ),
                    ],
                    names::HEARTBEAT_EVENT,
                );
                out.push((
                    Signal::Logs,
                    raw(
                        names::HEARTBEAT_LOGS_TOPIC,
                        encode_logs(Encoding::OtlpProto, &logs(i, vec![hb])).unwrap_or_default(),
                    ),
                ));
            }
        }
    }
    out
}

fn new_engine() -> (Engine, ManualClock) {
    let clock = ManualClock::new(T0);
    let engine = Engine::new(RulesConfig::default(), Arc::new(clock.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    (engine, clock)
}

/// Simulated time advances with the records, ticking once per simulated second.
fn time_of(i: usize, total: usize) -> u64 {
    T0 + (i as u64 * REQUESTS as u64 * 1_500_000) / total.max(1) as u64
}

fn main() {
    let kafka_records = workload();
    let mut decoded: Vec<Record> = Vec::new();
    for (kind, r) in &kafka_records {
        decode_into(r, *kind, &mut decoded).unwrap_or_else(|e| panic!("{e}"));
    }
    let (spans, logs_n, hbs) = decoded.iter().fold((0, 0, 0), |acc, r| match r {
        Record::Span(_) => (acc.0 + 1, acc.1, acc.2),
        Record::Log(_) => (acc.0, acc.1 + 1, acc.2),
        Record::Heartbeat(_) => (acc.0, acc.1, acc.2 + 1),
    });
    let bytes: usize = kafka_records.iter().map(|(_, r)| r.payload.len()).sum();
    println!(
        "workload: {} Kafka records ({:.1} MB), {} records = {spans} spans + {logs_n} logs + {hbs} heartbeats, {SERVICES} services",
        kafka_records.len(),
        bytes as f64 / 1e6,
        decoded.len()
    );

    let rounds = 5;
    let mut best_engine = 0f64;
    let mut best_full = 0f64;
    let mut transitions = std::collections::BTreeMap::<(String, &'static str), usize>::new();
    for round in 0..rounds {
        // The engine alone, on pre-decoded records.
        let (mut engine, _clock) = new_engine();
        let total = decoded.len();
        let started = Instant::now();
        let mut last_tick = T0;
        let mut emitted = Vec::new();
        for (i, record) in decoded.iter().enumerate() {
            let now = time_of(i, total);
            emitted.extend(engine.process_at(record, now));
            if now - last_tick >= 1_000_000_000 {
                emitted.extend(engine.tick(now));
                last_tick = now;
            }
        }
        let engine_rate = total as f64 / started.elapsed().as_secs_f64();
        transitions.clear();
        for t in emitted {
            *transitions
                .entry((t.alert.rule, t.kind.as_str()))
                .or_default() += 1;
        }

        // Decode + flatten + engine, from the Kafka record values.
        let (mut engine, _clock) = new_engine();
        let started = Instant::now();
        let mut buf = Vec::new();
        let mut n = 0usize;
        let mut last_tick = T0;
        for (i, (kind, r)) in kafka_records.iter().enumerate() {
            let now = time_of(i, kafka_records.len());
            decode_into(r, *kind, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            for record in buf.drain(..) {
                engine.process_at(&record, now);
                n += 1;
            }
            if now - last_tick >= 1_000_000_000 {
                engine.tick(now);
                last_tick = now;
            }
        }
        let full_rate = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "round {}: engine only {:>9.0} records/s | decode + engine {:>9.0} records/s",
            round + 1,
            engine_rate,
            full_rate
        );
        best_engine = best_engine.max(engine_rate);
        best_full = best_full.max(full_rate);
    }
    println!("alert events per run (rule, event: count): {transitions:?}");
    println!("best of {rounds}: engine only {best_engine:.0} records/s; decode + engine {best_full:.0} records/s (target 100000)");
}
