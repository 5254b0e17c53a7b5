//! Segment files: `<base offset, 20 digits>.wal`, each holding consecutive frames starting at
//! its base offset, and recovery of the set at open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::frame::{self, Damage, HEADER_BYTES, MIN_FRAME_BYTES};
use crate::WalError;

const SUFFIX: &str = ".wal";

/// Files and directories the log creates are private to the user running dlog.
pub(crate) const FILE_MODE: u32 = 0o600;
pub(crate) const DIR_MODE: u32 = 0o700;

/// A segment as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub base: u64,
    /// Frames in it.
    pub records: u64,
    /// Valid bytes in it.
    pub bytes: u64,
    pub path: PathBuf,
}

impl Segment {
    /// One past its last offset.
    pub fn end(&self) -> u64 {
        self.base + self.records
    }
}

pub(crate) fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), WalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| WalError::io("create the directory", dir, source))
}

/// Creates an empty segment, opened for appending, and makes its directory entry durable. A
/// file already there is a leftover (a new segment always starts past the log's end) and is
/// replaced. If any step fails the file is removed again, so that no empty segment is left
/// to confuse recovery.
pub(crate) fn create(dir: &Path, base: u64) -> Result<(File, PathBuf), WalError> {
    let path = path(dir, base);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(WalError::io("replace a leftover segment", &path, source)),
    }
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|source| WalError::io("create segment", &path, source))?;
    if let Err(e) = sync_dir(dir) {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok((file, path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| WalError::io("sync the directory", dir, source))
}

/// What recovery found and did.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    /// Bytes cut from torn or damaged tails.
    pub cut_bytes: u64,
}

/// Lists the segments in `dir` and checks every frame of every segment. A torn or damaged
/// tail is cut off the segment it is in; later segments are kept (they are whole), and
/// readers step over the offsets that were lost. Empty segments left behind by a roll that
/// failed halfway are removed. When the last segment lost its tail, appends continue in a new
/// segment numbered past every offset the cut bytes could have held, so that no offset a
/// reader may have seen (and the alerter may have recorded as applied) is ever reused.
pub(crate) fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let mut bases = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| WalError::io("list", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| WalError::io("list", dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(base) = stem.parse::<u64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();

    let mut out = Recovered::default();
    let mut last_cut = 0u64;
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let path = path(dir, base);
        let (records, valid, len, damage) = scan(&path)?;
        let is_last = i + 1 == count;
        if records == 0 && !is_last {
            // Nothing readable in it: a roll that failed after creating the file, or a
            // segment damaged from its first byte.
            if damage.is_some() {
                tracing::error!(segment = %path.display(), "removing a local-log segment with no readable record");
                out.cut_bytes += len;
            }
            fs::remove_file(&path).map_err(|source| WalError::io("remove", &path, source))?;
            continue;
        }
        if let Some(previous) = out.segments.last() {
            if base < previous.end() {
                return Err(WalError::Damaged {
                    offset: base,
                    path: path.clone(),
                    reason: format!(
                        "the segment starts inside the previous one (which ends at {}): the directory was changed by hand; move it aside to start a new log",
                        previous.end()
                    ),
                });
            }
        }
        last_cut = 0;
        if let Some(damage) = damage {
            tracing::error!(segment = %path.display(), at_byte = valid, %damage, "local log: cutting a torn or damaged tail");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| WalError::io("open", &path, source))?;
            file.set_len(valid)
                .and_then(|()| file.sync_all())
                .map_err(|source| WalError::io("cut the tail of", &path, source))?;
            last_cut = len - valid;
            out.cut_bytes += last_cut;
        }
        out.segments.push(Segment {
            base,
            records,
            bytes: valid,
            path,
        });
    }
    if last_cut > 0 {
        if let Some(last) = out.segments.last() {
            let lost = last_cut.div_ceil(MIN_FRAME_BYTES as u64);
            let base = last.end() + lost;
            create(dir, base)?;
            out.segments.push(Segment {
                base,
                records: 0,
                bytes: 0,
                path: path(dir, base),
            });
        }
    }
    Ok(out)
}

/// Reads a segment frame by frame: (frames, valid bytes, file length, first damage).
fn scan(path: &Path) -> Result<(u64, u64, u64, Option<Damage>), WalError> {
    let mut file = File::open(path).map_err(|source| WalError::io("open", path, source))?;
    let len = file
        .metadata()
        .map_err(|source| WalError::io("stat", path, source))?
        .len();
    let mut records = 0u64;
    let mut at = 0u64;
    let mut buf = Vec::new();
    let mut header = [0u8; HEADER_BYTES];
    while at < len {
        if len - at < HEADER_BYTES as u64 {
            return Ok((records, at, len, Some(Damage::Torn)));
        }
        file.read_exact(&mut header)
            .map_err(|source| WalError::io("read", path, source))?;
        let payload = match frame::payload_len(&header) {
            Ok(n) => n,
            Err(damage) => return Ok((records, at, len, Some(damage))),
        };
        let total = (HEADER_BYTES + payload) as u64;
        if len - at < total {
            return Ok((records, at, len, Some(Damage::Torn)));
        }
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(total as usize, 0);
        file.read_exact(&mut buf[HEADER_BYTES..])
            .map_err(|source| WalError::io("read", path, source))?;
        if let Err(damage) = frame::check(&buf).and_then(|payload| frame::decode(payload, 0)) {
            return Ok((records, at, len, Some(damage)));
        }
        records += 1;
        at += total;
    }
    Ok((records, at, len, None))
}

/// Positions `file` (a segment starting at `base`) at the frame of `offset`, skipping frames
/// by their lengths. Returns the byte position.
pub(crate) fn seek_to(file: &mut File, base: u64, offset: u64) -> io::Result<u64> {
    let mut at = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    file.seek(SeekFrom::Start(0))?;
    for _ in base..offset {
        match file.read_exact(&mut header) {
            Ok(()) => {}
            // The segment ends before `offset` (offsets lost to damage): the reader meets
            // the end of the segment and steps over the gap.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                file.seek(SeekFrom::Start(at))?;
                return Ok(at);
            }
            Err(e) => return Err(e),
        }
        let len = frame::payload_len(&header)
            .map_err(|d| io::Error::new(io::ErrorKind::InvalidData, d.to_string()))?;
        at += (HEADER_BYTES + len) as u64;
        file.seek(SeekFrom::Start(at))?;
    }
    Ok(at)
}
