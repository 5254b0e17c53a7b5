//! Segment files: `<base offset, 20 digits>.wal`, each holding consecutive frames starting at
//! its base offset, and recovery of the set at open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::frame::{self, Damage, HEADER_BYTES};
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

/// Creates an empty segment and makes its directory entry durable.
pub(crate) fn create(dir: &Path, base: u64) -> Result<(File, PathBuf), WalError> {
    let path = path(dir, base);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|source| WalError::io("create segment", &path, source))?;
    sync_dir(dir)?;
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
    /// Segments removed because an earlier one was damaged.
    pub dropped_segments: u64,
}

/// Lists the segments in `dir`, checks every frame of every segment, cuts a torn or damaged
/// tail off the segment where damage starts and removes the segments after it (their offsets
/// would no longer follow on), as Prometheus' WAL repair does. Only whole, checked frames
/// survive, so a reader never meets a damaged one.
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
    let mut damaged = false;
    for base in bases {
        let path = path(dir, base);
        if damaged {
            tracing::error!(segment = %path.display(), "removing a local-log segment that follows a damaged one");
            fs::remove_file(&path).map_err(|source| WalError::io("remove", &path, source))?;
            out.dropped_segments += 1;
            continue;
        }
        if let Some(previous) = out.segments.last() {
            if previous.end() != base {
                // A gap: the offsets would not follow on. Treat like damage at this point.
                tracing::error!(segment = %path.display(), expected = previous.end(), "local-log segment does not follow on; removing it and every later one");
                fs::remove_file(&path).map_err(|source| WalError::io("remove", &path, source))?;
                out.dropped_segments += 1;
                damaged = true;
                continue;
            }
        }
        let (records, valid, len, damage) = scan(&path)?;
        if let Some(damage) = damage {
            tracing::error!(segment = %path.display(), at_byte = valid, %damage, "local log: cutting a torn or damaged tail");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| WalError::io("open", &path, source))?;
            file.set_len(valid)
                .and_then(|()| file.sync_all())
                .map_err(|source| WalError::io("cut the tail of", &path, source))?;
            out.cut_bytes += len - valid;
            damaged = true;
        }
        out.segments.push(Segment {
            base,
            records,
            bytes: valid,
            path,
        });
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
        if let Err(damage) = frame::check(&buf) {
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
        file.read_exact(&mut header)?;
        let len = frame::payload_len(&header)
            .map_err(|d| io::Error::new(io::ErrorKind::InvalidData, d.to_string()))?;
        at += (HEADER_BYTES + len) as u64;
        file.seek(SeekFrom::Start(at))?;
    }
    Ok(at)
}
