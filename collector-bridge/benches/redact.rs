//! Cost of redaction's key matching, which runs for every attribute key of every request
//! (on the protobuf path while the validator reads each key, on the JSON path over the
//! decoded request). Prints nanoseconds per key and per span, p50 and p99 over rounds, for
//! keys that match nothing (the common case) and for a mix with secrets.
//!
//!   cargo bench -p collector-bridge --bench redact

use std::hint::black_box;
use std::time::Instant;

use collector_bridge::redact::Redactor;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Attribute keys of the semantic conventions, as HTTP, database and RPC spans carry them.
const PLAIN: &[&str] = &[
    "http.request.method",
    "http.response.status_code",
    "http.route",
    "url.full",
    "url.path",
    "url.scheme",
    "server.address",
    "server.port",
    "client.address",
    "network.protocol.version",
    "user_agent.original",
    "service.name",
    "service.instance.id",
    "service.version",
    "db.system.name",
    "db.namespace",
    "db.query.text",
    "db.operation.name",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "messaging.destination.name",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "thread.id",
    "code.function.name",
    "exception.type",
    "exception.message",
    "peer.service",
    "http.request.header.content-type",
    "http.response.header.content-length",
    "deployment.environment.name",
];

/// Keys that are redacted, in every form the matching knows.
const SECRET: &[&str] = &[
    "http.request.header.authorization",
    "http.request.header.x-api-key",
    "db.password",
    "http.request.header.cookie",
    "oauth.accessToken",
    "aws.secret_access_key",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Nanoseconds per call of `f` over `per_round` calls, p50 and p99 of `rounds` rounds.
fn measure(rounds: usize, per_round: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            f();
        }
        samples.push(start.elapsed().as_nanos() as f64 / per_round as f64);
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn span(keys: &[&str]) -> Span {
    Span {
        attributes: keys
            .iter()
            .map(|k| KeyValue {
                key: (*k).into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("value".into())),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn main() {
    let redactor = Redactor::new([], false);
    let mixed: Vec<&str> = PLAIN.iter().chain(SECRET).copied().collect();
    println!("redaction key matching (ns; p50 / p99 of 200 rounds)");
    println!(
        "{:<44} {:>10} {:>10} {:>14}",
        "case", "p50", "p99", "per s (p50)"
    );
    for (name, keys) in [
        ("per key, no key matches", PLAIN),
        ("per key, 6 of 38 match", &mixed[..]),
    ] {
        let (p50, p99) = measure(200, 2000, || {
            for key in keys {
                black_box(redactor.matches(black_box(key.as_bytes())));
            }
        });
        let (p50, p99) = (p50 / keys.len() as f64, p99 / keys.len() as f64);
        println!("{name:<44} {p50:>10.1} {p99:>10.1} {:>14.0}", 1e9 / p50);
    }
    // A span of 32 plain attributes: redaction checks every key and rewrites nothing, so the
    // same span serves every call.
    let mut plain = span(PLAIN);
    let (p50, p99) = measure(200, 2000, || {
        redactor.span(black_box(&mut plain));
    });
    println!(
        "{:<44} {p50:>10.1} {p99:>10.1} {:>14.0}",
        "per span of 32 attributes, none redacted",
        1e9 / p50
    );
}
