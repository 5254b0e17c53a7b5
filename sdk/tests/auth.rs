//! Headers on every export (a collector that requires a token): from
//! `OTEL_EXPORTER_OTLP_HEADERS` and from the builder, as a real OTLP/gRPC receiver sees them.
//! One test per binary: it sets a process-wide environment variable.

mod support;

use std::time::Duration;

use distributed_logger::{Telemetry, ENV_OTLP_HEADERS};
use support::Receiver;

/// Builds a service against `receiver`, emits one span and one log, and shuts it down.
fn export_once(receiver: &Receiver, extra_header: Option<(&str, &str)>) {
    let mut builder = Telemetry::builder("auth")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .with_shutdown_timeout(Duration::from_secs(10));
    if let Some((key, value)) = extra_header {
        builder = builder.with_header(key, value);
    }
    let telemetry = builder.build().unwrap();
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        tracing::info_span!("checkout").in_scope(|| tracing::info!("paid"));
    });
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");
}

/// The values of `key` in every request the receiver answered (spans and logs).
fn values(receiver: &Receiver, key: &str) -> Vec<Vec<String>> {
    receiver
        .metadata()
        .iter()
        .map(|metadata| {
            metadata
                .get_all(key)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn export_headers_come_from_the_environment_and_the_builder() {
    std::env::set_var(
        ENV_OTLP_HEADERS,
        "authorization=Bearer%20from-env, x-tenant=acme",
    );

    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    export_once(&receiver, None);
    let requests = receiver.metadata().len();
    assert!(requests >= 2, "span and log requests: {requests}");
    assert_eq!(
        values(&receiver, "authorization"),
        vec![vec!["Bearer from-env".to_string()]; requests],
        "every request carries the token, percent-decoded"
    );
    assert_eq!(
        values(&receiver, "x-tenant"),
        vec![vec!["acme".to_string()]; requests]
    );

    // The builder wins over the environment for the same key; other keys stay.
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    export_once(&receiver, Some(("Authorization", "Bearer from-code")));
    let requests = receiver.metadata().len();
    assert!(requests >= 2, "span and log requests: {requests}");
    assert_eq!(
        values(&receiver, "authorization"),
        vec![vec!["Bearer from-code".to_string()]; requests]
    );
    assert_eq!(
        values(&receiver, "x-tenant"),
        vec![vec!["acme".to_string()]; requests]
    );

    // A header the exporter would silently skip fails the build instead.
    std::env::set_var(ENV_OTLP_HEADERS, "authorization");
    let err = Telemetry::builder("auth")
        .with_stderr(false)
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(ENV_OTLP_HEADERS), "{err}");
    std::env::remove_var(ENV_OTLP_HEADERS);
}
