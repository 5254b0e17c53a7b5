//! Alerts on a Kafka topic: one `dlog.alert.v1.AlertEvent` (protobuf) per transition, keyed
//! by alert id so an alert's events stay in order on one partition, produced with acks=all
//! and idempotence.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub mod config;

use std::sync::Arc;

use super::{AlertSink, Output, SinkError};
use crate::alert::Transition;
use config::KafkaOutputConfig;

/// The Kafka output `config` describes, if enabled; `default_brokers` when it names none.
pub fn build(
    config: &KafkaOutputConfig,
    default_brokers: &str,
) -> Result<Option<Output>, SinkError> {
    if !config.enabled {
        return Ok(None);
    }
    let brokers = config.brokers.as_deref().unwrap_or(default_brokers);
    let sink = KafkaSink::new(
        brokers,
        &config.topic,
        Duration::from_millis(config.timeout_ms),
        &config.producer,
    )?;
    Ok(Some(Output {
        sink: Arc::new(sink),
        filter: config.filter(),
        required: config.required,
        queue: config.queue,
    }))
}

/// Record header naming the value's message type.
pub const MESSAGE_TYPE_HEADER: &str = "dlog.message.type";
/// Value of [`MESSAGE_TYPE_HEADER`].
pub const ALERT_EVENT_TYPE: &str = "dlog.alert.v1.AlertEvent";

/// Produces alert events.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaSink {
    /// A producer for `topic` on `brokers`.
    pub fn new(
        brokers: &str,
        topic: &str,
        timeout: Duration,
        extra: &BTreeMap<String, String>,
    ) -> Result<Self, SinkError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string());
        for (k, v) in extra {
            config.set(k, v);
        }
        let producer: FutureProducer = config.create().map_err(|e| {
            SinkError::new(
                "kafka",
                format!("cannot create producer for {brokers}: {e}"),
            )
        })?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            timeout,
        })
    }
}

#[async_trait]
impl AlertSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        let encoded: Vec<(String, Vec<u8>)> = transitions
            .iter()
            .map(|t| (t.alert.id.clone(), t.alert.to_event().encode_to_vec()))
            .collect();
        // Enqueue everything first, then wait for every acknowledgement.
        let mut deliveries = Vec::with_capacity(encoded.len());
        for (key, value) in &encoded {
            let headers = OwnedHeaders::new().insert(Header {
                key: MESSAGE_TYPE_HEADER,
                value: Some(ALERT_EVENT_TYPE),
            });
            let record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(value)
                .headers(headers);
            deliveries.push(self.producer.send(record, self.timeout));
        }
        for result in futures::future::join_all(deliveries).await {
            if let Err((e, _)) = result {
                return Err(SinkError::new(
                    "kafka",
                    format!("topic `{}` did not acknowledge an alert: {e}", self.topic),
                ));
            }
        }
        Ok(())
    }
}
