//! TLS from the SDK's exporter (rustls): an `https://` collector whose certificate chains to a
//! CA given by `with_ca_certificate_file` gets the spans, logs and token; one whose CA is not
//! trusted gets nothing.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use distributed_logger::Telemetry;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::Receiver;

/// A CA, and a certificate it issued for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn issue_pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
    }
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dlog-sdk-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn export_once(receiver: &Receiver, ca_file: &PathBuf) -> distributed_logger::ShutdownReport {
    let telemetry = Telemetry::builder("tls")
        .with_endpoint(format!("https://{}", receiver.addr))
        .with_ca_certificate_file(ca_file)
        .with_header("authorization", "Bearer over-tls")
        .with_stderr(false)
        .with_export_timeout(Duration::from_secs(5))
        .with_shutdown_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    tracing::dispatcher::with_default(telemetry.dispatch(), || {
        tracing::info_span!("checkout").in_scope(|| tracing::info!("paid"));
    });
    telemetry.shutdown()
}

#[test]
fn exports_over_tls_to_a_collector_signed_by_the_configured_ca() {
    let pki = issue_pki("trusted");
    let receiver = Receiver::start_tls("127.0.0.1:0".parse().unwrap(), &pki.cert_pem, &pki.key_pem);
    let ca_file = write_temp("ca.pem", &pki.ca_pem);

    let report = export_once(&receiver, &ca_file);
    assert!(report.is_complete(), "{report}");
    assert_eq!(receiver.span_count(), 1);
    let metadata = receiver.metadata();
    assert!(metadata.len() >= 2, "span and log requests");
    assert!(metadata.iter().all(|m| m
        .get("authorization")
        .is_some_and(|v| v == "Bearer over-tls")));

    // A collector whose certificate another CA signed is refused: nothing arrives.
    let other = issue_pki("untrusted");
    let impostor = Receiver::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        &other.cert_pem,
        &other.key_pem,
    );
    let report = export_once(&impostor, &ca_file);
    assert!(!report.is_complete(), "{report}");
    assert!(
        report.stats.failed_spans + report.stats.queued_spans >= 1,
        "{report}"
    );
    assert_eq!(report.stats.exported_spans, 0, "{report}");
    assert!(impostor.metadata().is_empty(), "no request got through");
    std::fs::remove_file(ca_file).unwrap();
}
