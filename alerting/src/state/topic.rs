//! The state checkpointed to Kafka, for a standby on another node to take over with.
//!
//! Each checkpoint is the state file's JSON, gzip-compressed, cut into chunks of at most
//! [`CHUNK_BYTES`] (well under Kafka's default 1 MB message size) and written to partition 0
//! of `state_topic` with `acks=all`, one record per produce request. A record's key is
//! `<group>/<chunk index>`, so that a broker that compacts keeps the last chunk of every
//! index; headers name the group, the holder's lease epoch (see
//! [`crate::lease::Lease::epoch`]), the checkpoint's sequence number, its chunk count and the
//! writing process (so that two writers' chunks are never mixed). Checkpoints are ordered by
//! (epoch, sequence number): a holder that lost the lease never wins over its successor. The
//! compressed state is bounded by [`MAX_STATE_BYTES`], its JSON by [`MAX_JSON_BYTES`].
//!
//! tansu 0.6.0 accepts `cleanup.policy=compact` but does not compact (500 records written
//! under one key were all still there after 40 s), so the topic grows by a checkpoint per
//! `checkpoint_interval_ms` while records arrive. Loading therefore never reads the topic
//! from the start: it reads windows of [`WINDOW`] records backwards from the end until it
//! finds the newest checkpoint of the group whose chunks are all there. One record per
//! request keeps tansu's high watermark right (it is wrong after a multi-record batch).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::StageState;

/// The state's partition.
const PARTITION: i32 = 0;
/// Largest chunk of compressed state in one record.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest compressed state written or read (256 chunks).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
/// Largest state JSON written or read back (bounds what decompressing a hostile record can
/// cost).
pub const MAX_JSON_BYTES: usize = 512 * 1024 * 1024;
/// Most chunk bytes a load holds at once: chunks of checkpoints whose first chunk lies in an
/// earlier window (a topic others may write could otherwise fill the memory).
const MAX_BUFFERED_BYTES: usize = 2 * MAX_STATE_BYTES;
/// Records read per step backwards from the end of the topic.
const WINDOW: i64 = 512;
/// Windows read, once a complete checkpoint was found, for the first chunk of a newer one
/// (a checkpoint has at most 256 chunks, so its first chunk is near its others).
const FALLBACK_WINDOWS: u32 = 2;
/// Longest a load reads the topic.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one checkpoint record may take to be acknowledged, from the call (waiting for
/// queue space) to the broker's acknowledgement (the producer's `message.timeout.ms`): a
/// record that failed is not written later.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

const GROUP_HEADER: &str = "dlog.state.group";
const CHECKPOINT_HEADER: &str = "dlog.state.checkpoint";
const CHUNK_HEADER: &str = "dlog.state.chunk";
const CHUNKS_HEADER: &str = "dlog.state.chunks";
const WRITER_HEADER: &str = "dlog.state.writer";
const EPOCH_HEADER: &str = "dlog.state.epoch";

/// The state topic failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicStateError {
    /// Kafka refused or timed out.
    #[error("state topic `{topic}`: {message}")]
    Kafka {
        /// The state topic.
        topic: String,
        /// What failed.
        message: String,
    },
    /// The state is larger than the topic may hold.
    #[error(
        "state topic `{topic}`: the state is {bytes} bytes, more than the {max} bytes a \
         checkpoint may have (lower the rules' bounds on windows and alerts)"
    )]
    TooLarge {
        /// The state topic.
        topic: String,
        /// Compressed size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// A checkpoint could not be read back.
    #[error("state topic `{topic}`: checkpoint {checkpoint} of group `{group}` is unreadable ({message})")]
    Corrupt {
        /// The state topic.
        topic: String,
        /// The group.
        group: String,
        /// Its sequence number.
        checkpoint: u64,
        /// Why.
        message: String,
    },
}

/// A consumer group's checkpoints on the state topic.
#[derive(Clone)]
pub struct StateTopic {
    config: ClientConfig,
    topic: String,
    group: String,
    /// Who writes, unique per process start: chunks of two writers that used the same
    /// checkpoint number are never mixed.
    writer: String,
    producer: FutureProducer,
    /// Cancelled when the group's lease is lost: no chunk is written after that.
    lost: Option<CancellationToken>,
}

impl std::fmt::Debug for StateTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTopic")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish()
    }
}

impl StateTopic {
    /// The checkpoints of `group` on `topic`, through clients made from `config` (brokers and
    /// security properties); creates the topic (one partition, compacted) when missing.
    pub async fn open(
        config: ClientConfig,
        topic: &str,
        group: &str,
    ) -> Result<StateTopic, TopicStateError> {
        let err = |message: String| TopicStateError::Kafka {
            topic: topic.to_string(),
            message,
        };
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(|e| err(e.to_string()))?;
        let new =
            NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| err(e.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(err(format!("cannot create it: {code}"))),
            }
        }
        let producer: FutureProducer = config
            .clone()
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.max.bytes", (CHUNK_BYTES * 2).to_string())
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create()
            .map_err(|e| err(e.to_string()))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(StateTopic {
            config,
            topic: topic.to_string(),
            group: group.to_string(),
            writer: format!("{}-{started}", std::process::id()),
            producer,
            lost: None,
        })
    }

    /// Writes no chunk once `lost` is cancelled (the group's lease was lost: the topic is
    /// the next holder's).
    pub fn with_lease_lost(mut self, lost: CancellationToken) -> Self {
        self.lost = Some(lost);
        self
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Compresses and chunks a state's JSON (what [`super::StateFile::save`] wrote).
    pub fn encode(&self, json: &[u8]) -> Result<Vec<Vec<u8>>, TopicStateError> {
        // A successor refuses larger ones when loading.
        if json.len() > MAX_JSON_BYTES {
            return Err(TopicStateError::TooLarge {
                topic: self.topic.clone(),
                bytes: json.len(),
                max: MAX_JSON_BYTES,
            });
        }
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(json)
            .and_then(|()| gz.flush())
            .map_err(|e| self.kafka(format!("cannot compress the state: {e}")))?;
        let compressed = gz
            .finish()
            .map_err(|e| self.kafka(format!("cannot compress the state: {e}")))?;
        if compressed.len() > MAX_STATE_BYTES {
            return Err(TopicStateError::TooLarge {
                topic: self.topic.clone(),
                bytes: compressed.len(),
                max: MAX_STATE_BYTES,
            });
        }
        Ok(compressed.chunks(CHUNK_BYTES).map(<[u8]>::to_vec).collect())
    }

    /// Writes checkpoint `checkpoint` of lease epoch `epoch` (chunks from
    /// [`StateTopic::encode`] of a state holding both), each chunk acknowledged by every
    /// in-sync replica before the next is sent. Returns the bytes written.
    pub async fn save(
        &self,
        epoch: u64,
        checkpoint: u64,
        chunks: &[Vec<u8>],
    ) -> Result<usize, TopicStateError> {
        self.save_first(epoch, checkpoint, chunks, chunks.len())
            .await
    }

    /// Writes only the first `n` chunks of a checkpoint: what a holder that crashed while
    /// writing it leaves (for tests).
    #[doc(hidden)]
    pub async fn save_first(
        &self,
        epoch: u64,
        checkpoint: u64,
        chunks: &[Vec<u8>],
        n: usize,
    ) -> Result<usize, TopicStateError> {
        let (seq, count) = (checkpoint.to_string(), chunks.len().to_string());
        let epoch = epoch.to_string();
        let mut bytes = 0;
        for (i, chunk) in chunks.iter().enumerate().take(n) {
            let index = i.to_string();
            let key = format!("{}/{i}", self.group);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: GROUP_HEADER,
                    value: Some(self.group.as_str()),
                })
                .insert(Header {
                    key: CHECKPOINT_HEADER,
                    value: Some(seq.as_str()),
                })
                .insert(Header {
                    key: CHUNK_HEADER,
                    value: Some(index.as_str()),
                })
                .insert(Header {
                    key: CHUNKS_HEADER,
                    value: Some(count.as_str()),
                })
                .insert(Header {
                    key: WRITER_HEADER,
                    value: Some(self.writer.as_str()),
                })
                .insert(Header {
                    key: EPOCH_HEADER,
                    value: Some(epoch.as_str()),
                });
            let lost = || {
                self.kafka(format!(
                    "checkpoint {checkpoint} not written: the lease was lost"
                ))
            };
            if self
                .lost
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
            {
                return Err(lost());
            }
            let send = self.producer.send(
                FutureRecord::to(&self.topic)
                    .partition(PARTITION)
                    .key(&key)
                    .payload(chunk)
                    .headers(headers),
                SEND_TIMEOUT,
            );
            let sent = match &self.lost {
                Some(token) => tokio::select! {
                    sent = send => sent,
                    () = token.cancelled() => return Err(lost()),
                },
                None => send.await,
            };
            sent.map_err(|(e, _)| self.kafka(format!("checkpoint {checkpoint} not written: {e}")))?;
            bytes += chunk.len();
        }
        Ok(bytes)
    }

    /// The group's newest complete checkpoint that can be read back, or `None` when the
    /// topic holds none (an unreadable one is passed over with a warning, for the next older
    /// one). Blocks: call it on the blocking pool.
    pub fn load_blocking(&self) -> Result<Option<StageState>, TopicStateError> {
        let reader: BaseConsumer = self
            .config
            .clone()
            .set("group.id", format!("{}.state-reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| self.kafka(e.to_string()))?;
        let (low, high) = reader
            .fetch_watermarks(&self.topic, PARTITION, Duration::from_secs(10))
            .map_err(|e| self.kafka(format!("cannot read its watermarks: {e}")))?;
        let deadline = Instant::now() + LOAD_TIMEOUT;
        let mut end = high;
        // Chunks of checkpoints, by epoch, checkpoint and writer, as far as read.
        let mut found: BTreeMap<Id, Found> = BTreeMap::new();
        let mut buffered = 0usize;
        // The newest complete checkpoint found below newer ones whose first chunk was not read
        // yet, and how many windows were read since: only newer chunks are buffered from then
        // on, and after FALLBACK_WINDOWS more windows (or a load that fails) it is the one.
        let mut fallback: Option<(Id, StageState)> = None;
        let mut windows_since = 0u32;
        while end > low {
            let start = (end - WINDOW).max(low);
            let floor = fallback.as_ref().map(|(id, _)| id.clone());
            if let Err(e) = self.read_window(
                &reader,
                start..end,
                deadline,
                floor.as_ref(),
                &mut found,
                &mut buffered,
            ) {
                match fallback {
                    Some((_, state)) => {
                        tracing::warn!(error = %e, "loading an older checkpoint from the state topic: newer ones could not be read whole");
                        return Ok(Some(state));
                    }
                    None => return Err(e),
                }
            }
            // Chunks are written in order: a checkpoint whose first chunk was read but not
            // all the others was cut short by a crash and is passed over (and dropped); one
            // whose first chunk was not read yet starts in an earlier window.
            let keys: Vec<Id> = found.keys().rev().cloned().collect();
            let mut unresolved = false;
            for key in keys {
                let Some(f) = found.get(&key) else { continue };
                if f.complete() {
                    match self.decode(&key, f) {
                        Ok(state) if !unresolved => return Ok(Some(state)),
                        Ok(state) => {
                            // Nothing older is needed any more.
                            let older: Vec<Id> =
                                found.range(..=&key).map(|(k, _)| k.clone()).collect();
                            for k in older {
                                if let Some(f) = found.remove(&k) {
                                    buffered -= f.bytes();
                                }
                            }
                            fallback = Some((key, state));
                            windows_since = 0;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "passing over an unreadable checkpoint on the state topic for the next older one");
                        }
                    }
                } else if !f.chunks.contains_key(&0) && start > low {
                    unresolved = true;
                    continue;
                }
                if let Some(f) = found.remove(&key) {
                    buffered -= f.bytes();
                }
            }
            if fallback.is_some() {
                windows_since += 1;
                if windows_since > FALLBACK_WINDOWS {
                    break;
                }
            }
            end = start;
        }
        if let Some((_, state)) = fallback {
            tracing::warn!("loading an older checkpoint from the state topic: the first chunk of a newer one was not found near it (records not written by dlog-alerter?)");
            return Ok(Some(state));
        }
        Ok(None)
    }

    fn read_window(
        &self,
        reader: &BaseConsumer,
        offsets: std::ops::Range<i64>,
        deadline: Instant,
        floor: Option<&Id>,
        found: &mut BTreeMap<Id, Found>,
        buffered: &mut usize,
    ) -> Result<(), TopicStateError> {
        let std::ops::Range { start, end } = offsets;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, PARTITION, Offset::Offset(start))
            .map_err(|e| self.kafka(e.to_string()))?;
        reader.assign(&tpl).map_err(|e| self.kafka(e.to_string()))?;
        loop {
            if Instant::now() >= deadline {
                return Err(self.kafka(format!(
                    "reading the newest checkpoint took longer than {LOAD_TIMEOUT:?}"
                )));
            }
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if m.offset() >= end {
                        return Ok(());
                    }
                    if let Some((id, index, count)) = self
                        .chunk_of(&m)
                        .filter(|(id, _, _)| floor.is_none_or(|floor| id > floor))
                    {
                        let payload = m.payload().unwrap_or_default();
                        let f = found.entry(id).or_insert_with(|| Found {
                            count,
                            chunks: BTreeMap::new(),
                        });
                        if f.count == count {
                            *buffered += payload.len();
                            if let Some(old) = f.chunks.insert(index, payload.to_vec()) {
                                *buffered -= old.len();
                            }
                        }
                        if *buffered > MAX_BUFFERED_BYTES {
                            return Err(self.kafka(format!(
                                "more than {MAX_BUFFERED_BYTES} bytes of incomplete checkpoints of \
                                 group `{}` near its end; records not written by dlog-alerter?",
                                self.group
                            )));
                        }
                    }
                    if m.offset() + 1 >= end {
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                    return Ok(())
                }
                Some(Err(e)) => tracing::debug!(error = %e, "reading the state topic"),
                None => {}
            }
        }
    }

    /// (checkpoint id, chunk index, chunk count) of a record of this group.
    fn chunk_of(&self, m: &impl Message) -> Option<(Id, usize, usize)> {
        let headers = m.headers()?;
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        if get(GROUP_HEADER)? != self.group {
            return None;
        }
        let checkpoint = get(CHECKPOINT_HEADER)?.parse().ok()?;
        let index: usize = get(CHUNK_HEADER)?.parse().ok()?;
        let count: usize = get(CHUNKS_HEADER)?.parse().ok()?;
        let writer = get(WRITER_HEADER).unwrap_or_default().to_string();
        // Written before epochs were: 0.
        let epoch = match get(EPOCH_HEADER) {
            Some(e) => e.parse().ok()?,
            None => 0,
        };
        let size = m.payload().map_or(0, <[u8]>::len);
        (index < count && count <= MAX_STATE_BYTES / CHUNK_BYTES && size <= CHUNK_BYTES).then_some(
            (
                Id {
                    epoch,
                    checkpoint,
                    writer,
                },
                index,
                count,
            ),
        )
    }

    fn decode(&self, id: &Id, f: &Found) -> Result<StageState, TopicStateError> {
        let corrupt = |message: String| TopicStateError::Corrupt {
            topic: self.topic.clone(),
            group: self.group.clone(),
            checkpoint: id.checkpoint,
            message,
        };
        let compressed: Vec<u8> = f.chunks.values().flatten().copied().collect();
        let mut json = Vec::new();
        GzDecoder::new(compressed.as_slice())
            .take(MAX_JSON_BYTES as u64 + 1)
            .read_to_end(&mut json)
            .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
        if json.len() > MAX_JSON_BYTES {
            return Err(corrupt(format!("more than {MAX_JSON_BYTES} bytes of JSON")));
        }
        let state: StageState =
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        if (state.epoch, state.checkpoint) != (id.epoch, id.checkpoint) {
            return Err(corrupt(format!(
                "it holds checkpoint {} of epoch {} instead of epoch {}",
                state.checkpoint, state.epoch, id.epoch
            )));
        }
        Ok(state)
    }

    fn kafka(&self, message: String) -> TopicStateError {
        TopicStateError::Kafka {
            topic: self.topic.clone(),
            message,
        }
    }
}

/// Which checkpoint a chunk belongs to; ordered oldest first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Id {
    /// The writing holder's lease epoch.
    epoch: u64,
    /// Its checkpoint number.
    checkpoint: u64,
    /// The writing process (two writers of one epoch and number cannot both hold the lease;
    /// kept apart all the same).
    writer: String,
}

/// The chunks of one checkpoint read so far.
struct Found {
    count: usize,
    chunks: BTreeMap<usize, Vec<u8>>,
}

impl Found {
    fn complete(&self) -> bool {
        self.chunks.len() == self.count
    }

    fn bytes(&self) -> usize {
        self.chunks.values().map(Vec::len).sum()
    }
}
