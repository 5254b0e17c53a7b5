//! The durable local log of the all-in-one mode: the next hop of `dlog up`, as Kafka is the
//! next hop of the distributed deployment.
//!
//! The bridge appends each request's records and answers the sender once they are written and
//! fsynced; the indexing and alerting stages read behind it, each from its own committed
//! position, through the same [`Source`](dlog_core::source::Source) trait they use for Kafka.
//! No stage's checkpoint sits on a sender's request path.
//!
//! It is built the way durable logs are built (Prometheus' WAL, Tempo's, Kafka's own):
//! - **segment files** named by their first offset, rolled at `segment_bytes`;
//! - **a checksum per record** (CRC-32), checked at recovery and on every read;
//! - **recovery that cuts a torn tail**: at open, every frame is checked; the first damaged or
//!   incomplete one and everything after it are cut;
//! - **group commit**: one writer thread takes every append waiting for it, writes them and
//!   fsyncs once for all; a lone sender never waits for a timer, and throughput grows with
//!   senders;
//! - **truncation** of whole segments once every reader's persisted position has passed them;
//! - **a bound**: while the log holds `max_bytes`, appends are refused with
//!   [`AppendError::Full`] (the bridge answers `UNAVAILABLE` / 503), never dropped.
//!
//! No crate in the ecosystem offered this shape (a multi-reader log with per-reader positions,
//! group commit with a completion per append, and a byte bound) without bringing a storage
//! engine along, so it is kept small here and tested hard.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use dlog_core::source::{Mark, Source};
//! use dlog_wal::{Frames, Wal, WalConfig};
//!
//! let wal = Wal::open(WalConfig::new("./dlog-data/wal"))?;
//! let mut reader = wal.reader("indexing")?;
//! let mut frames = Frames::new();
//! frames.push("trace_logs", Some(b"trace-id"), &[], b"value", None)?;
//! let first_offset = wal.append(frames).await?; // durable once this returns
//! let batch = reader.next_batch(100, std::time::Duration::from_millis(100)).await?;
//! reader.ack(&Mark::latest(&batch)).await?; // the reader's position moves past the batch
//! # let _ = first_offset; Ok(()) }
//! ```

mod frame;
mod metrics;
mod reader;
mod segment;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use frame::FrameError;

/// Entry points for the fuzz targets under `fuzz/`: not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use dlog_core::source::RawRecord;

    /// Reads one whole frame (header and payload, exactly) as the reader does: checks its
    /// length and checksum, then decodes the payload at `offset`.
    pub fn read_frame(frame: &[u8], offset: u64) -> Result<RawRecord, String> {
        let payload = crate::frame::check(frame).map_err(|d| d.to_string())?;
        crate::frame::decode(payload, offset).map_err(|d| d.to_string())
    }

    /// Encodes one frame, as the writer does.
    pub fn encode_frame(
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<Vec<u8>, crate::FrameError> {
        let mut out = Vec::new();
        crate::frame::encode(&mut out, topic, key, headers, value, timestamp_ms)?;
        Ok(out)
    }
}
pub use metrics::WalMetrics;
pub use reader::WalReader;

/// Default size at which a segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound of the whole log on disk.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Default interval at which readers' positions are saved and passed segments removed.
pub const DEFAULT_POSITION_INTERVAL: Duration = Duration::from_millis(200);
/// Default bytes of appends one fsync may cover.
pub const DEFAULT_MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Default bytes a reader hands out in one batch.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

const LOCK_FILE: &str = "LOCK";
const READERS_DIR: &str = "readers";

/// A hook called on the writer thread right before each fsync (see
/// [`WalConfig::before_sync`]).
pub type SyncHook = Arc<dyn Fn() + Send + Sync>;

/// Settings of the local log.
#[derive(Clone)]
pub struct WalConfig {
    /// Directory of the segments, the reader positions and the lock file. Created (0700) when
    /// missing.
    pub dir: PathBuf,
    /// Size at which a segment is closed and the next one started. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bytes the log may hold on disk. Appends past it are refused until every reader has
    /// moved on and whole segments can be removed. Default 1 GiB.
    pub max_bytes: u64,
    /// How often readers' positions are saved and passed segments removed. Default 200 ms.
    pub position_interval: Duration,
    /// Bytes of waiting appends that one fsync may cover. Default 16 MiB.
    pub max_group_bytes: usize,
    /// Bytes a reader hands out in one batch (at least one record). Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Called on the writer thread right before each fsync: lets a test hold the fsync and
    /// show that no append completes before the fsync covering it has returned.
    pub before_sync: Option<SyncHook>,
}

impl fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalConfig")
            .field("dir", &self.dir)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("position_interval", &self.position_interval)
            .field("max_group_bytes", &self.max_group_bytes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("before_sync", &self.before_sync.is_some())
            .finish()
    }
}

impl WalConfig {
    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            position_interval: DEFAULT_POSITION_INTERVAL,
            max_group_bytes: DEFAULT_MAX_GROUP_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            before_sync: None,
        }
    }
}

/// The log could not be opened or kept.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("local log: cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process has the log open.
    #[error("local log {path} is in use by another process (its lock is held); stop it, or give this one another data directory")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A setting is out of range.
    #[error("local log setting `{key}`: {reason}")]
    Config {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// A reader name that cannot be a file name.
    #[error("local log reader name `{0}` must be 1-64 characters of a-z, 0-9, `_` and `-`")]
    ReaderName(String),
    /// A record on disk does not match its checksum or layout.
    #[error("local log: record {offset} in {path} is damaged: {reason}")]
    Damaged {
        /// The record's offset.
        offset: u64,
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl WalError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An append was not made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The log holds `max_bytes`: a reader is behind. Retry later.
    #[error("the local log is full: it holds {held} bytes and this append needs {needed} more, past max_bytes ({max_bytes}); the slowest reader is `{slowest}`, {lag} records behind")]
    Full {
        /// Bytes on disk.
        held: u64,
        /// Bytes of the refused append.
        needed: u64,
        /// The bound.
        max_bytes: u64,
        /// The reader furthest behind.
        slowest: String,
        /// How many records it is behind.
        lag: u64,
    },
    /// Writing or fsyncing failed. After a failed write (a full disk) only this append is
    /// refused; after a failed fsync every later one is too, since what the page cache still
    /// holds is then unknown.
    #[error("the local log cannot write: {0}")]
    Failed(String),
    /// The append is larger than the log could ever hold beside the segment being written;
    /// retrying will not help.
    #[error("{needed} bytes cannot be appended to the local log: at most {largest} fit beside the segment being written (raise max_bytes)")]
    TooLarge {
        /// Bytes of the refused append.
        needed: u64,
        /// The most an append may have.
        largest: u64,
    },
    /// The log was closed.
    #[error("the local log is closed")]
    Closed,
}

/// Records encoded for one append. Encoding happens on the caller's thread, so concurrent
/// requests encode in parallel and the writer only copies bytes.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    bytes: Vec<u8>,
    count: u64,
}

impl Frames {
    /// No records.
    pub fn new() -> Self {
        Frames::default()
    }

    /// Room for about `bytes` of records.
    pub fn with_capacity(bytes: usize) -> Self {
        Frames {
            bytes: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Adds a record. `timestamp_ms` is what a Kafka record's timestamp would be.
    pub fn push(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<(), FrameError> {
        frame::encode(&mut self.bytes, topic, key, headers, value, timestamp_ms)?;
        self.count += 1;
        Ok(())
    }

    /// Records added.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// What the writer, the readers and the handle share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    /// (base offset, path) of every segment, oldest first; the last is the one written to.
    pub segments: Mutex<Vec<(u64, PathBuf)>>,
    /// One past the last durable record.
    pub durable: tokio::sync::watch::Sender<u64>,
    /// Committed position of every reader (the next offset it needs).
    pub readers: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// The oldest offset still on disk.
    pub first_offset: AtomicU64,
    pub metrics: WalMetrics,
    pub max_batch_bytes: usize,
    /// Why the log stopped accepting appends, once it has.
    pub failure: tokio::sync::watch::Sender<Option<String>>,
}

impl Shared {
    pub fn durable_end(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The segment holding `offset`: its base, its path and the base of the next one (None
    /// while it is the segment being written).
    pub fn segment_of(&self, offset: u64) -> Option<(u64, PathBuf, Option<u64>)> {
        let segments = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        let i = segments.partition_point(|(base, _)| *base <= offset);
        if i == 0 {
            return None;
        }
        let (base, path) = &segments[i - 1];
        Some((*base, path.clone(), segments.get(i).map(|(b, _)| *b)))
    }
}

/// The local log. Cloning gives another handle to the same log; the writer stops when the
/// last handle is dropped or [`Wal::close`] is called.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Arc<writer::Handle>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("durable_end", &self.shared.durable_end())
            .finish()
    }
}

impl Wal {
    /// Opens (or creates) the log in `config.dir`: takes its lock, checks every record, cuts a
    /// torn tail, and starts the writer thread.
    pub fn open(config: WalConfig) -> Result<Wal, WalError> {
        if config.segment_bytes < 4096 {
            return Err(WalError::Config {
                key: "segment_bytes",
                reason: format!("{} is below the minimum of 4096", config.segment_bytes),
            });
        }
        if config.max_bytes < config.segment_bytes.saturating_mul(2) {
            return Err(WalError::Config {
                key: "max_bytes",
                reason: format!(
                    "{} must be at least twice segment_bytes ({}), or no segment could ever be removed while appends go on",
                    config.max_bytes, config.segment_bytes
                ),
            });
        }
        segment::create_dir(&config.dir)?;
        segment::create_dir(&config.dir.join(READERS_DIR))?;
        let lock = lock(&config.dir)?;
        let recovered = segment::recover(&config.dir)?;
        let metrics = WalMetrics::default();
        metrics.recovered_cut_bytes.inc_by(recovered.cut_bytes);
        let (first_offset, end) = match (recovered.segments.first(), recovered.segments.last()) {
            (Some(first), Some(last)) => (first.base, last.end()),
            _ => (0, 0),
        };
        let bytes: u64 = recovered.segments.iter().map(|s| s.bytes).sum();
        metrics.bytes.set(bytes as i64);
        let (durable, _) = tokio::sync::watch::channel(end);
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            segments: Mutex::new(
                recovered
                    .segments
                    .iter()
                    .map(|s| (s.base, s.path.clone()))
                    .collect(),
            ),
            durable,
            readers: Mutex::new(BTreeMap::new()),
            first_offset: AtomicU64::new(first_offset),
            metrics,
            max_batch_bytes: config.max_batch_bytes.max(1),
            failure: tokio::sync::watch::channel(None).0,
        });
        let writer = writer::start(config, Arc::clone(&shared), recovered, lock)?;
        if recovered_cut(&shared) {
            tracing::warn!(dir = %shared.dir.display(), "local log recovered from a torn or damaged tail");
        }
        Ok(Wal {
            shared,
            writer: Arc::new(writer),
        })
    }

    /// Appends `frames` and resolves once they are durable (written and fsynced), with the
    /// offset of the first. Concurrent appends share one fsync.
    pub async fn append(&self, frames: Frames) -> Result<u64, AppendError> {
        if frames.is_empty() {
            return Ok(self.shared.durable_end());
        }
        self.writer.append(frames).await
    }

    /// A reader named `name` (for example `indexing`): it starts at its saved position, or at
    /// the oldest record when it has none, and its acknowledgements hold back truncation. A
    /// reader stays registered as long as the log is open, so a stage that stopped keeps its
    /// records until it comes back (or the bound pushes back on senders).
    pub fn reader(&self, name: &str) -> Result<WalReader, WalError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(WalError::ReaderName(name.to_string()));
        }
        let saved = writer::read_position(&self.shared.dir.join(READERS_DIR), name)?;
        // Registered under the readers' lock, which segment removal also holds, so that the
        // oldest offset read here is still on disk once the reader counts.
        let (committed, start) = {
            let mut readers = self
                .shared
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let first = self.shared.first_offset.load(Ordering::Acquire);
            let end = self.shared.durable_end();
            // A saved position outside the log (segments removed by hand, or removed before
            // the position was saved) starts at the oldest record: nothing is skipped.
            let start = match saved {
                Some(p) if p >= first && p <= end => p,
                Some(p) => {
                    tracing::warn!(reader = name, saved = p, first, end, "saved local-log position is outside the log; starting at its oldest record");
                    first
                }
                None => first,
            };
            let committed = Arc::clone(
                readers
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(AtomicU64::new(start))),
            );
            committed.store(start, Ordering::Release);
            (committed, start)
        };
        Ok(WalReader::new(
            Arc::clone(&self.shared),
            name.to_string(),
            committed,
            start,
        ))
    }

    /// One past the last durable record.
    pub fn end_offset(&self) -> u64 {
        self.shared.durable_end()
    }

    /// The oldest record still on disk.
    pub fn first_offset(&self) -> u64 {
        self.shared.first_offset.load(Ordering::Acquire)
    }

    /// The position up to which reader `name` has acknowledged, if it is registered.
    pub fn committed(&self, name: &str) -> Option<u64> {
        let readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        readers.get(name).map(|at| at.load(Ordering::Acquire))
    }

    /// Resolves, with the reason, once the log has stopped accepting appends for good (a
    /// failed write or fsync). Never resolves while it works.
    pub async fn failed(&self) -> String {
        let mut failure = self.shared.failure.subscribe();
        let reason = match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => return std::future::pending().await,
        };
        reason
    }

    /// The reason the log stopped accepting appends, if it has.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.borrow().clone()
    }

    /// The log's counters and gauges (fsyncs, bytes, reader lag...).
    pub fn metrics(&self) -> &WalMetrics {
        &self.shared.metrics
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Saves every reader's position, stops the writer and releases the lock. Appends still
    /// waiting are completed first; later ones get [`AppendError::Closed`].
    pub async fn close(&self) {
        self.writer.close().await;
    }
}

fn recovered_cut(shared: &Shared) -> bool {
    shared.metrics.recovered_cut_bytes.get() > 0
}

fn lock(dir: &Path) -> Result<File, WalError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(segment::FILE_MODE)
        .open(&path)
        .map_err(|source| WalError::io("open the lock file", &path, source))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(WalError::io("lock", &path, source)),
    }
}
