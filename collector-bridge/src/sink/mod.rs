//! Where routed records go: the [`Sink`] trait, with Kafka ([`KafkaSink`]) for the distributed
//! deployment, the durable local log ([`LocalLogSink`]) for the all-in-one mode, and an
//! in-process fan-out ([`ChannelSink`]) for tests.
//!
//! Every sink follows the same acknowledgement rule: [`Sink::publish`] resolves `Ok` only once
//! every record of the batch is durable at the next hop. The bridge answers OTLP success on
//! that and on nothing less.

mod channel;
mod kafka;
mod local_log;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dlog_core::encoding::{Encoding, Signal};
use dlog_core::names;
use dlog_core::source::RawRecord;

pub use channel::{ChannelSink, Subscriber};
pub(crate) use kafka::{check_topic_limits, RESERVED_BY, TOPIC_CHECK_TIMEOUT};
pub use kafka::{producer_config, KafkaSink, KafkaSinkConfig, TopicTooSmall};
pub use local_log::LocalLogSink;
use prometheus_client::registry::Registry;

/// One record as it will be written: topic, key, value and the two contract headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Record key: a trace id in lowercase hex, or a service instance.
    pub key: String,
    /// The encoded export request.
    pub value: Vec<u8>,
    /// How `value` is encoded (the [`names::ENCODING_HEADER`] header).
    pub encoding: Encoding,
    /// Which OTLP signal `value` holds (the [`names::SIGNAL_HEADER`] header).
    pub signal: Signal,
}

impl OutRecord {
    /// The record headers, in the order they are written.
    pub fn headers(&self) -> [(&'static str, &'static str); 2] {
        [
            (names::ENCODING_HEADER, self.encoding.as_str()),
            (names::SIGNAL_HEADER, self.signal.as_str()),
        ]
    }

    /// Bytes the record occupies as `max_message_bytes` counts them: value, key and headers.
    pub fn size(&self) -> usize {
        self.value.len() + self.key.len() + headers_len(self.encoding, self.signal)
    }

    /// The record as a stage would read it from Kafka (partition and offset left at 0).
    pub fn into_raw(self) -> RawRecord {
        let headers = self
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        RawRecord {
            topic: self.topic.to_string(),
            partition: 0,
            offset: 0,
            key: Some(self.key.into_bytes()),
            payload: self.value,
            headers,
            timestamp_ms: None,
        }
    }
}

/// Header bytes (names and values) of a record with this encoding and signal.
pub(crate) fn headers_len(encoding: Encoding, signal: Signal) -> usize {
    names::ENCODING_HEADER.len()
        + encoding.as_str().len()
        + names::SIGNAL_HEADER.len()
        + signal.as_str().len()
}

/// A sink could not make a batch durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The next hop is unreachable, slow or full; the sender should retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The next hop refused the records for a reason retrying will not fix.
    #[error("{0}")]
    Rejected(String),
}

/// The output of the bridge.
pub trait Sink: Send + Sync + 'static {
    /// Writes every record of `batch` and resolves once all of them are durable, or with the
    /// first failure. A caller may drop the future (its deadline passed); records already
    /// handed on may still land, so delivery is at least once.
    fn publish(&self, batch: Vec<OutRecord>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called before the bridge starts, once for each topic it will publish to. An error says
    /// why records for `topic` could not be delivered, and the bridge refuses to start with
    /// it. The default accepts every topic (Kafka reports unknown topics per record).
    fn check_topic(&self, topic: &str) -> Result<(), String> {
        let _ = topic;
        Ok(())
    }

    /// Adds the sink's own series to the bridge's `/metrics`. The default adds none.
    fn register_metrics(&self, registry: &mut Registry) {
        let _ = registry;
    }

    /// Where records go, for the start-up line (`Kafka brokers ...`, `local log ...`).
    fn describe(&self) -> String {
        "an in-process sink".to_string()
    }

    /// Waits up to `timeout` for records still on their way (graceful shutdown).
    fn flush(&self, timeout: Duration) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = timeout;
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_value_key_and_headers() {
        let r = OutRecord {
            topic: Arc::from("t"),
            key: "k".repeat(32),
            value: vec![0; 100],
            encoding: Encoding::OtlpProto,
            signal: Signal::Traces,
        };
        let raw = r.clone().into_raw();
        let header_bytes: usize = raw.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(r.size(), 100 + 32 + header_bytes);
        assert_eq!(raw.header(names::ENCODING_HEADER), Some(&b"otlp_proto"[..]));
        assert_eq!(raw.header(names::SIGNAL_HEADER), Some(&b"traces"[..]));
    }
}
