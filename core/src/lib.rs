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
