//! The input side of a stage.
//!
//! A stage pulls batches of raw records from a [`Source`] and calls [`Source::ack`] only once
//! everything derived from them is durable downstream (store bulk acknowledged, alerts emitted).
//! The Kafka source commits offsets on ack; the [`ChannelSource`] used in-process (all-in-one
//! mode and tests) completes the sender's acknowledgement on ack. Records that were delivered
//! but never acknowledged are delivered again after a restart, so stages must be idempotent.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use crate::encoding::{DecodeError, Encoding};
use crate::names;

/// One record as read from the input, with the coordinates needed to acknowledge it and to
/// name it in a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

impl RawRecord {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value encoding named by the encoding header. A record without the header is taken
    /// as `otlp_proto`, which is what the OpenTelemetry Collector's kafka exporter writes.
    pub fn encoding(&self) -> Result<Encoding, DecodeError> {
        match self.header(names::ENCODING_HEADER) {
            None => Ok(Encoding::OtlpProto),
            Some(v) => String::from_utf8_lossy(v).parse(),
        }
    }

    /// The key as text (lossy).
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// A position to acknowledge: the record at `offset` of `topic`/`partition`, and every earlier
/// record of that partition, is durable downstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset of the last record acknowledged (not the next one to read).
    pub offset: i64,
}

impl Mark {
    /// A mark at `offset` of `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Mark {
            topic: topic.into(),
            partition,
            offset,
        }
    }

    /// The mark of one record.
    pub fn of(record: &RawRecord) -> Self {
        Mark::new(record.topic.clone(), record.partition, record.offset)
    }

    /// One mark per partition of `records`, at the highest offset among them.
    pub fn latest(records: &[RawRecord]) -> Vec<Mark> {
        let mut marks = Marks::default();
        for record in records {
            marks.advance(record);
        }
        marks.take()
    }
}

/// Marks gathered since the last acknowledgement: the highest offset taken per partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks(BTreeMap<String, BTreeMap<i32, i64>>);

impl Marks {
    /// Moves the mark of `record`'s partition up to its offset (never down).
    pub fn advance(&mut self, record: &RawRecord) {
        self.raise(&record.topic, record.partition, record.offset);
    }

    /// Moves the mark of `mark`'s partition up to its offset (never down).
    pub fn insert(&mut self, mark: Mark) {
        self.raise(&mark.topic, mark.partition, mark.offset);
    }

    fn raise(&mut self, topic: &str, partition: i32, offset: i64) {
        // Looked up by `&str` first: no allocation per record of a known topic.
        let partitions = match self.0.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.0.entry(topic.to_string()).or_default(),
        };
        let slot = partitions.entry(partition).or_insert(offset);
        *slot = (*slot).max(offset);
    }

    /// Whether nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The gathered marks, leaving none.
    pub fn take(&mut self) -> Vec<Mark> {
        std::mem::take(&mut self.0)
            .into_iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .into_iter()
                    .map(move |(partition, offset)| Mark::new(topic.clone(), partition, offset))
            })
            .collect()
    }

    /// Puts back marks that could not be acknowledged (merged with any gathered since).
    pub fn restore(&mut self, marks: Vec<Mark>) {
        for mark in marks {
            self.insert(mark);
        }
    }
}

/// A source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Kafka client reported an error.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The in-process sender went away.
    #[error("the in-process input was closed")]
    Closed,
    /// A local file (the write-ahead log in the all-in-one mode) could not be read.
    #[error("{0}")]
    Io(String),
    /// A task the source runs its blocking Kafka calls on panicked or was cancelled.
    #[error("the {task} task failed: {source}")]
    Task {
        /// Which task (`offset commit`).
        task: &'static str,
        /// Why it stopped.
        source: tokio::task::JoinError,
    },
}

/// Where a stage's records come from.
pub trait Source: Send {
    /// Waits up to `linger` for records and returns at most `max` of them; an empty batch
    /// means nothing arrived in time.
    fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> impl Future<Output = Result<Vec<RawRecord>, SourceError>> + Send;

    /// Declares every record up to each mark (in the mark's partition) durable downstream.
    fn ack(&mut self, marks: &[Mark]) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Stops fetching while the stage cannot make progress (the store is down), without
    /// leaving the consumer group.
    fn pause(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Undoes [`Source::pause`].
    fn resume(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// True when a paused source hands out (next to) nothing until resumed, so that it can be
    /// polled for as long as it stays paused (Kafka, which evicts a consumer that stops
    /// polling). False (the default) when pausing does not hold records back (an in-process
    /// channel): the stage then stops polling once its stash is full, and the sender is
    /// pushed back on instead.
    fn pause_holds_records(&self) -> bool {
        false
    }
}

/// A batch handed to a [`ChannelSource`], with the acknowledgement its sender waits for.
#[derive(Debug)]
pub struct InProcessBatch {
    /// The records, whose topic, key, payload and headers are as they would be on Kafka.
    /// Partition and offset are assigned by the source.
    pub records: Vec<RawRecord>,
    /// Completed once the stage acknowledged every record of the batch.
    pub ack: tokio::sync::oneshot::Sender<()>,
}

/// An in-process [`Source`] fed through a bounded channel (all-in-one mode, tests).
///
/// Senders get back-pressure from the channel's bound, and their acknowledgement completes
/// only once the stage acknowledged the whole batch.
pub struct ChannelSource {
    receiver: tokio::sync::mpsc::Receiver<InProcessBatch>,
    next_offset: i64,
    /// Delivered batches awaiting ack: (last offset, ack sender).
    pending: VecDeque<(i64, tokio::sync::oneshot::Sender<()>)>,
    /// Records of a received batch not yet handed out.
    buffered: VecDeque<RawRecord>,
}

impl ChannelSource {
    /// A source and the sender that feeds it, holding at most `capacity` batches in flight.
    pub fn new(capacity: usize) -> (tokio::sync::mpsc::Sender<InProcessBatch>, Self) {
        let (tx, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            tx,
            ChannelSource {
                receiver,
                next_offset: 0,
                pending: VecDeque::new(),
                buffered: VecDeque::new(),
            },
        )
    }

    fn accept(&mut self, batch: InProcessBatch) {
        if batch.records.is_empty() {
            let _ = batch.ack.send(());
            return;
        }
        for mut record in batch.records {
            record.partition = 0;
            record.offset = self.next_offset;
            self.next_offset += 1;
            self.buffered.push_back(record);
        }
        self.pending.push_back((self.next_offset - 1, batch.ack));
    }
}

impl Source for ChannelSource {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        if self.buffered.is_empty() {
            match tokio::time::timeout(linger, self.receiver.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => return Err(SourceError::Closed),
                Ok(Some(batch)) => self.accept(batch),
            }
        }
        while self.buffered.len() < max {
            match self.receiver.try_recv() {
                Ok(batch) => self.accept(batch),
                Err(_) => break,
            }
        }
        let take = self.buffered.len().min(max.max(1));
        Ok(self.buffered.drain(..take).collect())
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        let Some(max) = marks.iter().map(|m| m.offset).max() else {
            return Ok(());
        };
        while self.pending.front().is_some_and(|(last, _)| *last <= max) {
            if let Some((_, ack)) = self.pending.pop_front() {
                let _ = ack.send(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> RawRecord {
        RawRecord {
            topic: names::TRACE_LOGS_TOPIC.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.to_vec(),
            headers: vec![],
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn sender_ack_completes_only_after_the_whole_batch_is_acked() {
        let (tx, mut source) = ChannelSource::new(4);
        let (ack_tx, mut ack_rx) = tokio::sync::oneshot::channel();
        tx.send(InProcessBatch {
            records: vec![record(b"1"), record(b"2"), record(b"3")],
            ack: ack_tx,
        })
        .await
        .unwrap();
        let first = source
            .next_batch(2, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        source.ack(&Mark::latest(&first)).await.unwrap();
        assert!(ack_rx.try_recv().is_err(), "acked before the last record");
        let rest = source
            .next_batch(2, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        source.ack(&Mark::latest(&rest)).await.unwrap();
        assert!(ack_rx.try_recv().is_ok());
    }

    #[test]
    fn marks_keep_the_highest_offset_per_partition() {
        let at = |topic: &str, partition, offset| RawRecord {
            topic: topic.into(),
            partition,
            offset,
            ..record(b"")
        };
        let records = [at("a", 0, 5), at("a", 0, 3), at("a", 1, 2), at("b", 0, 9)];
        assert_eq!(
            Mark::latest(&records),
            vec![
                Mark::new("a", 0, 5),
                Mark::new("a", 1, 2),
                Mark::new("b", 0, 9)
            ]
        );
        let mut marks = Marks::default();
        marks.advance(&at("a", 0, 7));
        let taken = marks.take();
        assert!(marks.is_empty());
        marks.advance(&at("a", 0, 4));
        marks.restore(taken);
        assert_eq!(marks.take(), vec![Mark::new("a", 0, 7)]);
    }

    #[test]
    fn missing_encoding_header_means_otlp_proto() {
        assert_eq!(record(b"").encoding().unwrap(), Encoding::OtlpProto);
    }
}
