//! The record contract that every dlog stage shares.
//!
//! The bridge writes OTLP to Kafka; the storage and alerting stages read it back. This crate
//! pins what sits between them so that no stage re-derives it:
//!
//! * [`names`]: default topic names, ports, record header names, and the attribute and event
//!   names the SDK stamps on records (service dependencies, registration, heartbeat, calls);
//! * [`encoding`]: the `otlp_proto` / `otlp_json` value encodings and the record keys;
//! * [`model`]: the flattened span, log and heartbeat model decoded from OTLP, with the
//!   deterministic document ids that make store writes idempotent;
//! * [`source`]: the `Source` trait through which stages consume records and acknowledge them
//!   only once their output is durable, plus an in-process channel source;
//! * [`terminal`]: escaping of sender text before it reaches a terminal;
//! * `kafka` (feature `kafka`): the Kafka consumer source and the dead-letter producer;
//! * `process` (feature `process`): logging setup and graceful-shutdown signals for binaries;
//! * `admin` (feature `admin`): the `/metrics` and `/healthz` listener of the stages;
//! * `config` (feature `config`): TOML settings files and errors naming file, key and reason;
//! * `stage` (feature `stage`): the runtime the consuming stages share (backoff, shutdown,
//!   consumer settings, the batch driver).
//!
//! ```
//! use dlog_core::encoding::{Encoding, decode_traces, encode_traces};
//! use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
//!
//! let request = ExportTraceServiceRequest::default();
//! let bytes = encode_traces(Encoding::OtlpProto, &request).unwrap();
//! assert_eq!(decode_traces(Encoding::OtlpProto, &bytes).unwrap(), request);
//! ```

pub mod cli;
pub mod encoding;
pub mod model;
pub mod names;
pub mod redact;
pub mod source;
pub mod terminal;

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "listen")]
pub mod listen;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "stage")]
pub mod stage;

/// `error` followed by its sources, joined with `: ` (a source whose text repeats the one
/// before is left out). HTTP and TLS clients put the reason (for example "invalid peer
/// certificate: UnknownIssuer") in a source, not in the top-level text.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if part != last && !last.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        last = part;
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layer(text: &'static str, source: Option<Layer>) -> Layer {
        Layer {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn error_chain_joins_the_sources_and_skips_repeats() {
        let reason = layer("invalid peer certificate: UnknownIssuer", None);
        let connect = layer("client error (Connect)", Some(reason));
        let repeated = layer("error sending request", Some(connect));
        let top = layer("error sending request", Some(repeated));
        assert_eq!(
            super::error_chain(&top),
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }
}
