//! An in-process sink for the all-in-one mode: batches go straight to the stages'
//! [`ChannelSource`](dlog_core::source::ChannelSource)s instead of through Kafka.

use dlog_core::source::{InProcessBatch, RawRecord};
use tokio::sync::{mpsc, oneshot};

use super::{OutRecord, Sink, SinkError};

/// A stage fed by a [`ChannelSink`]: the topics it reads and the sender of its
/// `ChannelSource`.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// A name for errors ("storage", "alerting").
    pub name: String,
    /// The topics whose records this stage receives.
    pub topics: Vec<String>,
    /// The sender returned by `ChannelSource::new`.
    pub sender: mpsc::Sender<InProcessBatch>,
}

/// Hands each batch to every stage that reads its topics, and resolves once every one of
/// them acknowledged it, which is the same rule a Kafka acknowledgement stands for.
///
/// Every topic the bridge publishes to must have a reader: the bridge refuses to start when a
/// configured topic has none ([`Sink::check_topic`]), and a batch holding a record for a topic
/// nobody reads is refused as a whole ([`SinkError::Rejected`]), because answering success
/// for records nobody received would lose them silently.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    subscribers: Vec<Subscriber>,
}

impl ChannelSink {
    /// A sink feeding `subscribers`.
    pub fn new(subscribers: Vec<Subscriber>) -> ChannelSink {
        ChannelSink { subscribers }
    }
}

impl ChannelSink {
    /// Whether some subscriber reads `topic`.
    pub fn has_reader(&self, topic: &str) -> bool {
        self.subscribers
            .iter()
            .any(|s| s.topics.iter().any(|t| t == topic))
    }
}

impl Sink for ChannelSink {
    fn check_topic(&self, topic: &str) -> Result<(), String> {
        if self.has_reader(topic) {
            return Ok(());
        }
        let names: Vec<&str> = self.subscribers.iter().map(|s| s.name.as_str()).collect();
        Err(format!(
            "no in-process stage reads topic `{topic}` (stages: {}), so its records would be lost: add it to a subscriber's topics",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    }

    async fn publish(&self, batch: Vec<OutRecord>) -> Result<(), SinkError> {
        if let Some(record) = batch.iter().find(|r| !self.has_reader(&r.topic)) {
            return Err(SinkError::Rejected(format!(
                "no in-process stage reads topic `{}`",
                record.topic
            )));
        }
        let mut per_subscriber: Vec<Vec<RawRecord>> = vec![Vec::new(); self.subscribers.len()];
        for record in batch {
            let readers: Vec<usize> = self
                .subscribers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.topics.iter().any(|t| **t == *record.topic))
                .map(|(i, _)| i)
                .collect();
            if let Some((&last, rest)) = readers.split_last() {
                let raw = record.into_raw();
                for &i in rest {
                    per_subscriber[i].push(raw.clone());
                }
                per_subscriber[last].push(raw);
            }
        }
        let mut acks = Vec::new();
        for (subscriber, records) in self.subscribers.iter().zip(per_subscriber) {
            if records.is_empty() {
                continue;
            }
            let (ack, acked) = oneshot::channel();
            subscriber
                .sender
                .send(InProcessBatch { records, ack })
                .await
                .map_err(|_| stopped(&subscriber.name))?;
            acks.push((acked, &subscriber.name));
        }
        for (acked, name) in acks {
            acked.await.map_err(|_| stopped(name))?;
        }
        Ok(())
    }
}

fn stopped(name: &str) -> SinkError {
    SinkError::Unavailable(format!("the in-process {name} stage has stopped"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use dlog_core::encoding::{Encoding, Signal};
    use dlog_core::source::{ChannelSource, Mark, Source};

    use super::*;

    fn record(topic: &str, key: &str) -> OutRecord {
        OutRecord {
            topic: Arc::from(topic),
            key: key.into(),
            value: key.as_bytes().to_vec(),
            encoding: Encoding::OtlpProto,
            signal: Signal::Traces,
        }
    }

    #[tokio::test]
    async fn publish_resolves_only_after_every_stage_acked() {
        let (storage_tx, mut storage) = ChannelSource::new(4);
        let (alerting_tx, mut alerting) = ChannelSource::new(4);
        let sink = ChannelSink::new(vec![
            Subscriber {
                name: "storage".into(),
                topics: vec!["trace_logs".into(), "service_logs".into()],
                sender: storage_tx,
            },
            Subscriber {
                name: "alerting".into(),
                topics: vec!["service_logs".into()],
                sender: alerting_tx,
            },
        ]);
        let publish = tokio::spawn(async move {
            sink.publish(vec![
                record("trace_logs", "t1"),
                record("service_logs", "s1"),
            ])
            .await
        });
        let got = storage
            .next_batch(10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key.as_deref(), Some(&b"t1"[..]));
        storage.ack(&Mark::latest(&got)).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!publish.is_finished(), "resolved before alerting acked");
        let got = alerting
            .next_batch(10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic, "service_logs");
        alerting.ack(&Mark::latest(&got)).await.unwrap();
        publish.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn regression_records_for_a_topic_nobody_reads_are_refused_not_counted_delivered() {
        let (tx, _source) = ChannelSource::new(1);
        let sink = ChannelSink::new(vec![Subscriber {
            name: "storage".into(),
            topics: vec!["trace_logs".into()],
            sender: tx,
        }]);
        assert!(sink.check_topic("trace_logs").is_ok());
        let reason = sink.check_topic("heartbeat_logs").unwrap_err();
        assert!(
            reason.contains("`heartbeat_logs`") && reason.contains("storage"),
            "{reason}"
        );
        let err = sink
            .publish(vec![record("heartbeat_logs", "i")])
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Rejected(m) if m.contains("heartbeat_logs")));
    }

    #[tokio::test]
    async fn a_stopped_stage_is_unavailable() {
        let (tx, source) = ChannelSource::new(1);
        drop(source);
        let sink = ChannelSink::new(vec![Subscriber {
            name: "storage".into(),
            topics: vec!["trace_logs".into()],
            sender: tx,
        }]);
        let err = sink
            .publish(vec![record("trace_logs", "t")])
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Unavailable(m) if m.contains("storage")));
    }
}
