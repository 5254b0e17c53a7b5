//! A stage's view of the log: a [`Source`] that reads durable records from its position on
//! and moves its committed position on [`Source::ack`].

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlog_core::source::{Mark, RawRecord, Source, SourceError};

use crate::frame::{self, HEADER_BYTES};
use crate::segment;
use crate::{Shared, WalError};

struct OpenSegment {
    base: u64,
    path: PathBuf,
    /// Base of the following segment, when there was one at open time.
    next_base: Option<u64>,
    file: BufReader<File>,
}

/// One reader of the log (see [`crate::Wal::reader`]). Its records carry partition 0 and
/// their log offset, so a stage handles them exactly as Kafka records.
pub struct WalReader {
    shared: Arc<Shared>,
    name: String,
    committed: Arc<AtomicU64>,
    /// The next offset to hand out.
    cursor: u64,
    durable: tokio::sync::watch::Receiver<u64>,
    open: Option<OpenSegment>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("name", &self.name)
            .field("cursor", &self.cursor)
            .field("committed", &self.committed.load(Ordering::Relaxed))
            .finish()
    }
}

enum Step {
    Record(RawRecord),
    /// The open segment has no more records.
    EndOfSegment,
}

impl WalReader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: String,
        committed: Arc<AtomicU64>,
        start: u64,
    ) -> Self {
        let durable = shared.durable.subscribe();
        WalReader {
            shared,
            name,
            committed,
            cursor: start,
            durable,
            open: None,
            buf: Vec::new(),
        }
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next offset it will hand out.
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// The offset up to which it has acknowledged.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    fn open_at(&mut self, offset: u64) -> Result<(), WalError> {
        let Some((base, path, next_base)) = self.shared.segment_of(offset) else {
            return Err(WalError::Damaged {
                offset,
                path: self.shared.dir.clone(),
                reason: "no segment holds it (removed before this reader passed it)".into(),
            });
        };
        let mut file = File::open(&path).map_err(|source| WalError::io("open", &path, source))?;
        segment::seek_to(&mut file, base, offset)
            .map_err(|source| WalError::io("find a record in", &path, source))?;
        self.open = Some(OpenSegment {
            base,
            path,
            next_base,
            file: BufReader::with_capacity(256 * 1024, file),
        });
        Ok(())
    }

    fn step(&mut self) -> Result<Step, WalError> {
        let offset = self.cursor;
        let Some(open) = self.open.as_mut() else {
            return Ok(Step::EndOfSegment);
        };
        if open.next_base.is_some_and(|next| offset >= next) {
            return Ok(Step::EndOfSegment);
        }
        let mut header = [0u8; HEADER_BYTES];
        match open.file.read_exact(&mut header) {
            Ok(()) => {}
            // Durable records are whole, so this is the end of a segment that was rolled
            // since it was opened; the caller reopens at the offset, which also discards any
            // partial read.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Step::EndOfSegment),
            Err(source) => return Err(WalError::io("read", &open.path, source)),
        }
        let damaged = |reason: String, path: &PathBuf| WalError::Damaged {
            offset,
            path: path.clone(),
            reason,
        };
        let len = frame::payload_len(&header).map_err(|d| damaged(d.to_string(), &open.path))?;
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.resize(HEADER_BYTES + len, 0);
        open.file
            .read_exact(&mut self.buf[HEADER_BYTES..])
            .map_err(|source| WalError::io("read", &open.path, source))?;
        let payload = frame::check(&self.buf).map_err(|d| damaged(d.to_string(), &open.path))?;
        let record =
            frame::decode(payload, offset).map_err(|d| damaged(d.to_string(), &open.path))?;
        Ok(Step::Record(record))
    }

    /// Reads up to `max` records below `end` (all durable). On an error after some records
    /// were read, those are returned and the error comes back on the next call; the open
    /// segment is dropped either way, so that the next read finds its frame by offset again.
    fn read(&mut self, end: u64, max: usize) -> Result<Vec<RawRecord>, WalError> {
        let mut out = Vec::new();
        match self.read_into(end, max, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.open = None;
                if out.is_empty() {
                    Err(e)
                } else {
                    Ok(out)
                }
            }
        }
    }

    fn read_into(
        &mut self,
        end: u64,
        max: usize,
        out: &mut Vec<RawRecord>,
    ) -> Result<(), WalError> {
        let mut bytes = 0usize;
        let mut reopened_at = None;
        while out.len() < max.max(1) && self.cursor < end && bytes < self.shared.max_batch_bytes {
            if self.open.is_none() {
                self.open_at(self.cursor)?;
            }
            match self.step()? {
                Step::Record(record) => {
                    bytes += record.payload.len() + HEADER_BYTES;
                    out.push(record);
                    self.cursor += 1;
                    reopened_at = None;
                }
                Step::EndOfSegment => {
                    let (base, path, next_base) = match self.open.take() {
                        Some(open) => (open.base, open.path, open.next_base),
                        None => (u64::MAX, PathBuf::new(), None),
                    };
                    if let Some(next) = next_base.filter(|next| self.cursor < *next) {
                        // Offsets lost to a damaged tail at recovery: the next segment
                        // starts past them.
                        tracing::warn!(reader = %self.name, from = self.cursor, to = next, "skipping local-log offsets lost to damage");
                        self.cursor = next;
                        continue;
                    }
                    // The segment was rolled since it was opened: look the offset up again.
                    // Twice at the same offset in the same segment means it is missing.
                    if reopened_at == Some((self.cursor, base)) {
                        return Err(WalError::Damaged {
                            offset: self.cursor,
                            path,
                            reason: "the record is durable but not in its segment".into(),
                        });
                    }
                    reopened_at = Some((self.cursor, base));
                    self.open_at(self.cursor)?;
                }
            }
        }
        Ok(())
    }
}

fn source_error(e: WalError) -> SourceError {
    SourceError::Io(e.to_string())
}

impl Source for WalReader {
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Result<Vec<RawRecord>, SourceError> {
        let deadline = tokio::time::Instant::now() + linger;
        let end = loop {
            let end = *self.durable.borrow_and_update();
            if self.cursor < end {
                break end;
            }
            match tokio::time::timeout_at(deadline, self.durable.changed()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Err(_)) => return Err(SourceError::Closed),
                Ok(Ok(())) => {}
            }
        };
        // Reads come from the page cache almost always; on a multi-threaded runtime tell it
        // this thread may block on the disk meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let read = if multi_thread {
            tokio::task::block_in_place(|| self.read(end, max))
        } else {
            self.read(end, max)
        };
        read.map_err(source_error)
    }

    async fn ack(&mut self, marks: &[Mark]) -> Result<(), SourceError> {
        if let Some(last) = marks.iter().map(|m| m.offset).max() {
            let next = u64::try_from(last).unwrap_or(0).saturating_add(1);
            self.committed
                .fetch_max(next.min(self.cursor), Ordering::AcqRel);
        }
        Ok(())
    }
}
