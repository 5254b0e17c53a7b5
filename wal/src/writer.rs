//! The writer thread: group commit, segment rolling, reader positions and truncation.
//!
//! One thread owns the segment being written. It takes every append waiting for it (up to
//! `max_group_bytes`), writes them one after another, fsyncs once, and only then completes
//! each append. While it fsyncs, new appends queue up and form the next group, so a lone
//! sender pays one fsync per append and many senders share them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::metrics::ReaderLabel;
use crate::segment::{self, Recovered};
use crate::{AppendError, Frames, Shared, WalConfig, WalError, READERS_DIR};

type Reply = oneshot::Sender<Result<u64, AppendError>>;

enum Command {
    Append(Frames, Reply),
    Close(oneshot::Sender<()>),
}

/// The handle the [`crate::Wal`] holds: the way into the writer thread.
pub(crate) struct Handle {
    commands: Mutex<Option<mpsc::Sender<Command>>>,
}

impl Handle {
    pub async fn append(&self, frames: Frames) -> Result<u64, AppendError> {
        let (reply, answer) = oneshot::channel();
        {
            let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
            let Some(commands) = commands.as_ref() else {
                return Err(AppendError::Closed);
            };
            commands
                .send(Command::Append(frames, reply))
                .map_err(|_| AppendError::Closed)?;
        }
        answer.await.map_err(|_| AppendError::Closed)?
    }

    pub async fn close(&self) {
        let commands = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(commands) = commands {
            let (done, closed) = oneshot::channel();
            if commands.send(Command::Close(done)).is_ok() {
                let _ = closed.await;
            }
        }
    }
}

/// Starts the writer on the recovered segments, creating the first segment of a new log.
pub(crate) fn start(
    config: WalConfig,
    shared: Arc<Shared>,
    recovered: Recovered,
    lock: File,
) -> Result<Handle, WalError> {
    let mut sizes: BTreeMap<u64, u64> = recovered
        .segments
        .iter()
        .map(|s| (s.base, s.bytes))
        .collect();
    let (active_base, file) = match recovered.segments.last() {
        Some(last) => {
            let file = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(|source| WalError::io("open for writing", &last.path, source))?;
            (last.base, file)
        }
        None => {
            let (file, path) = segment::create(&config.dir, 0)?;
            shared
                .segments
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((0, path));
            sizes.insert(0, 0);
            (0, file)
        }
    };
    let next_offset = shared.durable_end();
    let total_bytes = sizes.values().sum();
    shared.metrics.segments.set(sizes.len() as i64);
    let mut writer = Writer {
        active_bytes: sizes.get(&active_base).copied().unwrap_or(0),
        config,
        shared,
        file,
        active_base,
        next_offset,
        total_bytes,
        sizes,
        failed: None,
        saved: BTreeMap::new(),
        last_maintenance: Instant::now(),
        lock: Some(lock),
    };
    let (commands, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("dlog-wal-writer".into())
        .spawn(move || writer.run(receiver))
        .map_err(|source| WalError::io("start the writer thread for", Path::new("."), source))?;
    Ok(Handle {
        commands: Mutex::new(Some(commands)),
    })
}

struct Writer {
    config: WalConfig,
    shared: Arc<Shared>,
    file: File,
    active_base: u64,
    active_bytes: u64,
    next_offset: u64,
    total_bytes: u64,
    /// Bytes of every segment on disk, by base offset.
    sizes: BTreeMap<u64, u64>,
    /// Set after a failed write or fsync: from then on every append fails.
    failed: Option<String>,
    /// Positions last saved, by reader.
    saved: BTreeMap<String, u64>,
    last_maintenance: Instant,
    /// Held until the writer stops, and released before `close` returns.
    lock: Option<File>,
}

impl Writer {
    fn run(&mut self, commands: mpsc::Receiver<Command>) {
        let interval = self.config.position_interval;
        loop {
            let first = match commands.recv_timeout(interval) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.maintain();
                    self.lock = None;
                    return;
                }
            };
            let mut group = Vec::new();
            let mut group_bytes = 0usize;
            let mut close = None;
            let mut next = first;
            while let Some(command) = next.take() {
                match command {
                    Command::Append(frames, reply) => {
                        group_bytes += frames.bytes();
                        group.push((frames, reply));
                    }
                    Command::Close(done) => close = Some(done),
                }
                if group_bytes < self.config.max_group_bytes && close.is_none() {
                    next = commands.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(group);
            }
            if close.is_some() || self.last_maintenance.elapsed() >= interval {
                self.maintain();
            }
            if let Some(done) = close {
                // Released before `close` returns, so the log can be opened again at once.
                self.lock = None;
                let _ = done.send(());
                return;
            }
        }
    }

    fn slowest_reader(&self) -> (String, u64) {
        let readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        readers
            .iter()
            .map(|(name, at)| (name.clone(), at.load(Ordering::Acquire)))
            .min_by_key(|(_, at)| *at)
            .map(|(name, at)| (name, self.next_offset.saturating_sub(at)))
            .unwrap_or_else(|| ("(none)".to_string(), 0))
    }

    fn commit(&mut self, group: Vec<(Frames, Reply)>) {
        let metrics = &self.shared.metrics;
        if let Some(reason) = &self.failed {
            metrics.failed.inc_by(group.len() as u64);
            for (_, reply) in group {
                let _ = reply.send(Err(AppendError::Failed(reason.clone())));
            }
            return;
        }
        let mut accepted = Vec::with_capacity(group.len());
        let mut pending = 0u64;
        // The segment being written is never removed, so an append needs room beside it.
        let largest = self
            .config
            .max_bytes
            .saturating_sub(self.config.segment_bytes);
        for (frames, reply) in group {
            let needed = frames.bytes() as u64;
            if needed > largest {
                metrics.failed.inc();
                let _ = reply.send(Err(AppendError::TooLarge { needed, largest }));
                continue;
            }
            if self.total_bytes + pending + needed > self.config.max_bytes {
                metrics.refused_full.inc();
                let (slowest, lag) = self.slowest_reader();
                let _ = reply.send(Err(AppendError::Full {
                    held: self.total_bytes + pending,
                    needed,
                    max_bytes: self.config.max_bytes,
                    slowest,
                    lag,
                }));
                continue;
            }
            pending += needed;
            accepted.push((frames, reply));
        }
        if accepted.is_empty() {
            return;
        }

        let mut written = Ok(());
        for (frames, _) in &accepted {
            written = self.file.write_all(&frames.bytes);
            if written.is_err() {
                break;
            }
        }
        if let Err(e) = written {
            // The write may have left part of the group in the file, and a reader may have
            // buffered it; cutting it and writing other records over the same bytes could
            // hand those out under the wrong offsets. Stop appending instead; a restart
            // recovers what is on disk (and cuts the partial write).
            let _ = self.file.set_len(self.active_bytes);
            self.fail(
                format!(
                    "cannot write segment {} ({e}); restart dlog once the disk has room and is healthy",
                    segment::path(&self.config.dir, self.active_base).display()
                ),
                accepted,
            );
            return;
        }
        if let Some(hook) = &self.config.before_sync {
            hook();
        }
        let started = Instant::now();
        let synced = self.file.sync_data();
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            // After a failed fsync the kernel may have dropped the dirty pages: nothing
            // written since the last good fsync can be trusted, and retrying the fsync would
            // report success. Refuse everything from now on; a restart recovers what is
            // really on disk.
            let _ = self.file.set_len(self.active_bytes);
            self.fail(
                format!(
                    "fsync of segment {} failed ({e}); restart dlog once the disk is healthy",
                    segment::path(&self.config.dir, self.active_base).display()
                ),
                accepted,
            );
            return;
        }
        metrics.fsyncs.inc();
        metrics.appends_per_fsync.observe(accepted.len() as f64);
        self.active_bytes += pending;
        self.total_bytes += pending;
        *self.sizes.entry(self.active_base).or_insert(0) += pending;
        metrics.bytes.set(self.total_bytes as i64);
        metrics.appended_bytes.inc_by(pending);
        metrics.appends.inc_by(accepted.len() as u64);

        let mut offset = self.next_offset;
        let mut firsts = Vec::with_capacity(accepted.len());
        for (frames, _) in &accepted {
            firsts.push(offset);
            offset += frames.count;
        }
        metrics.records.inc_by(offset - self.next_offset);
        self.next_offset = offset;
        // Readers see the records before the senders hear back: either order is safe, since
        // both happen after the fsync.
        self.shared.durable.send_replace(offset);
        for ((_, reply), first) in accepted.into_iter().zip(firsts) {
            let _ = reply.send(Ok(first));
        }
        if self.active_bytes >= self.config.segment_bytes {
            self.roll();
        }
    }

    /// Stops accepting appends for good: answers `group` and every later append with
    /// `reason`, and tells whoever watches the log (the process exits).
    fn fail(&mut self, reason: String, group: Vec<(Frames, Reply)>) {
        tracing::error!(%reason, "local log stopped accepting records");
        self.shared.metrics.failed.inc_by(group.len() as u64);
        for (_, reply) in group {
            let _ = reply.send(Err(AppendError::Failed(reason.clone())));
        }
        self.shared.failure.send_replace(Some(reason.clone()));
        self.failed = Some(reason);
    }

    /// Starts a new segment at the next offset. A failure is logged and retried after the
    /// next append: the current segment simply grows meanwhile.
    fn roll(&mut self) {
        match segment::create(&self.config.dir, self.next_offset) {
            Ok((file, path)) => {
                self.shared
                    .segments
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.next_offset, path));
                self.file = file;
                self.active_base = self.next_offset;
                self.active_bytes = 0;
                self.sizes.insert(self.active_base, 0);
                self.shared.metrics.segments.set(self.sizes.len() as i64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new local-log segment; the current one keeps growing");
            }
        }
    }

    /// Saves readers' positions that moved, updates their lag, and removes every segment
    /// that all saved positions have passed.
    fn maintain(&mut self) {
        self.last_maintenance = Instant::now();
        let readers: Vec<(String, u64)> = {
            let readers = self
                .shared
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            readers
                .iter()
                .map(|(name, at)| (name.clone(), at.load(Ordering::Acquire)))
                .collect()
        };
        let dir = self.config.dir.join(READERS_DIR);
        for (name, at) in &readers {
            self.shared
                .metrics
                .reader_lag
                .get_or_create(&ReaderLabel {
                    reader: name.clone(),
                })
                .set(self.next_offset.saturating_sub(*at) as i64);
            if self.saved.get(name) == Some(at) {
                continue;
            }
            match write_position(&dir, name, *at) {
                Ok(()) => {
                    self.saved.insert(name.clone(), *at);
                }
                Err(e) => {
                    tracing::warn!(reader = %name, error = %e, "cannot save a local-log reader position; its segments are kept");
                }
            }
        }
        // Only positions that are saved count: a reader restarting after a crash resumes
        // from its saved position, whose records must still be there. The readers' lock is
        // held while deciding, so a reader registering meanwhile (its position not saved
        // yet, so counted as 0) holds back removal.
        loop {
            let removable = {
                let readers = self
                    .shared
                    .readers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let Some(passed) = readers
                    .keys()
                    .map(|name| self.saved.get(name).copied().unwrap_or(0))
                    .min()
                else {
                    break;
                };
                let mut segments = self
                    .shared
                    .segments
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match segments.get(1) {
                    Some((next_base, _)) if *next_base <= passed => {
                        let next_base = *next_base;
                        let (base, path) = segments.remove(0);
                        self.shared.first_offset.store(next_base, Ordering::Release);
                        Some((base, path))
                    }
                    _ => None,
                }
            };
            let Some((base, path)) = removable else { break };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot remove a passed local-log segment");
                }
            }
            let bytes = self.sizes.remove(&base).unwrap_or(0);
            self.total_bytes = self.total_bytes.saturating_sub(bytes);
            self.shared.metrics.removed_segments.inc();
            self.shared.metrics.bytes.set(self.total_bytes as i64);
            self.shared.metrics.segments.set(self.sizes.len() as i64);
        }
    }
}

fn position_path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.pos"))
}

/// Saves a reader's position: write a temporary file, then rename it over the old one, so the
/// file always holds a whole position. It is not fsynced: a position lost with the page cache
/// (a power cut) only makes the reader replay, and every stage is idempotent.
fn write_position(dir: &Path, name: &str, at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = position_path(dir, name);
    let tmp = dir.join(format!("{name}.pos.tmp"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(segment::FILE_MODE)
        .open(&tmp)?;
    file.write_all(format!("{at}\n").as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, &path)
}

/// A reader's saved position; `None` when it has none (or it is unreadable, which replays).
pub(crate) fn read_position(dir: &Path, name: &str) -> Result<Option<u64>, WalError> {
    let path = position_path(dir, name);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(at) => Ok(Some(at)),
            Err(_) => {
                tracing::warn!(file = %path.display(), "unreadable local-log reader position; the reader starts at the oldest record");
                Ok(None)
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WalError::io("read", &path, source)),
    }
}
