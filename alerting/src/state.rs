//! The stage's persisted state: the engine snapshot, which input offsets it already
//! reflects, and the alert transitions not yet delivered to every required output.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory) before offsets
//! are acknowledged, so after a crash the stage resumes from a state that matches what Kafka
//! will replay: replayed records below the recorded offsets are skipped instead of evaluated
//! twice, and transitions left in the outbox are delivered again rather than lost.
//!
//! With `standby` set, each checkpoint also goes to the state topic ([`topic`]) before the
//! offsets are acknowledged, so that an alerter on another node that takes the lease over
//! resumes from it. Every checkpoint carries its holder's lease epoch and a sequence number
//! that grows across handoffs; at start the newer of the state file and the state topic, by
//! (epoch, number), wins.

pub mod topic;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alert::Transition;
use crate::engine::EngineSnapshot;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "alerter-state.json";
/// Mode of a state directory the stage creates: its owner only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Mode of the state file: its owner only.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// A transition some required outputs still owe delivery of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The transition.
    pub transition: Transition,
    /// Names of the outputs that have not accepted it yet.
    pub outputs: BTreeSet<String>,
}

/// Everything the stage persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageState {
    /// The engine's alerts, trackers and windows.
    pub engine: EngineSnapshot,
    /// Per topic and partition, the offset after the last record the engine evaluated.
    pub applied: AppliedOffsets,
    /// Transitions not yet delivered to every required output, oldest first.
    pub outbox: Vec<Pending>,
    /// Per notifying output, the events a silence holds back (sent when it ends).
    #[serde(default)]
    pub held: BTreeMap<String, Vec<Transition>>,
    /// Sequence number of the checkpoint: one more than the state it resumed from.
    #[serde(default)]
    pub checkpoint: u64,
    /// The lease epoch of the holder that saved it: the offset of its lease record, higher
    /// for every later holder (0 without a lease). Of two saved states (file, topic), the one
    /// with the higher `(epoch, checkpoint)` is the newer: a holder cut off from the group
    /// (or a stale local file) never wins over a later holder's checkpoints.
    #[serde(default)]
    pub epoch: u64,
}

/// Per topic and partition, the offset after the last record evaluated.
pub type AppliedOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// True when the record at `offset` was already evaluated.
pub fn is_applied(applied: &AppliedOffsets, topic: &str, partition: i32, offset: i64) -> bool {
    applied
        .get(topic)
        .and_then(|p| p.get(&partition))
        .is_some_and(|next| offset < *next)
}

/// Marks the record at `offset` evaluated.
pub fn mark_applied(applied: &mut AppliedOffsets, topic: &str, partition: i32, offset: i64) {
    let partitions = match applied.get_mut(topic) {
        Some(p) => p,
        None => applied.entry(topic.to_string()).or_default(),
    };
    let next = partitions.entry(partition).or_insert(0);
    *next = (*next).max(offset + 1);
}

/// The state to resume from: the one with the higher `(epoch, checkpoint)`, the local one on
/// a tie (the same holder's same checkpoint: the file is written before the topic). The flag
/// says whether it is `remote`.
pub fn newer(local: Option<StageState>, remote: Option<StageState>) -> (Option<StageState>, bool) {
    match (local, remote) {
        (Some(l), Some(r)) if (r.epoch, r.checkpoint) > (l.epoch, l.checkpoint) => (Some(r), true),
        (Some(l), _) => (Some(l), false),
        (None, Some(r)) => (Some(r), true),
        (None, None) => (None, false),
    }
}

/// A borrowed [`StageState`], to save without copying the engine's state.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StateView<'a> {
    /// See [`StageState::engine`].
    pub engine: &'a EngineSnapshot,
    /// See [`StageState::applied`].
    pub applied: &'a AppliedOffsets,
    /// See [`StageState::outbox`].
    pub outbox: &'a [Pending],
}

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or file could not be created, read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but is not a state this version can read.
    #[error(
        "state file {path} is not readable state ({message}); move it away to start from scratch"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        message: String,
    },
}

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl StateFile {
    /// The state file in `dir`, creating the directory if needed (0700: the state holds
    /// alert summaries, which quote log records).
    pub fn open(dir: &Path) -> Result<StateFile, StateError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        builder.create(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(StateFile {
            dir: dir.to_path_buf(),
            path: dir.join(STATE_FILE),
            tmp: dir.join(format!("{STATE_FILE}.tmp")),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<StageState>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Replaces the saved state atomically and durably. Returns the bytes written.
    pub fn save<T: Serialize>(&self, state: &T) -> Result<usize, StateError> {
        let bytes = serde_json::to_vec(state).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        self.save_json(&bytes)?;
        Ok(bytes.len())
    }

    /// Replaces the saved state with `bytes` (a state's JSON) atomically and durably.
    pub fn save_json(&self, bytes: &[u8]) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
        let mut file = options.open(&self.tmp).map_err(io(&self.tmp))?;
        file.write_all(bytes).map_err(io(&self.tmp))?;
        file.sync_all().map_err(io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        // The rename is durable only once the directory entry is.
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_tracks_applied_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(&dir.path().join("nested")).unwrap();
        assert!(file.load().unwrap().is_none());
        let mut state = StageState::default();
        mark_applied(&mut state.applied, "trace_logs", 2, 41);
        mark_applied(&mut state.applied, "trace_logs", 2, 7);
        assert!(is_applied(&state.applied, "trace_logs", 2, 41));
        assert!(!is_applied(&state.applied, "trace_logs", 2, 42));
        assert!(!is_applied(&state.applied, "trace_logs", 1, 0));
        file.save(&state).unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded.applied, state.applied);
    }

    /// Regression: the state directory and file were created with the default umask
    /// (world-readable), though they hold alert summaries quoting log records.
    #[cfg(unix)]
    #[test]
    fn regression_state_dir_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let file = StateFile::open(&state_dir).unwrap();
        file.save(&StageState::default()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir), 0o700);
        assert_eq!(mode(file.path()), 0o600);
    }

    #[test]
    fn the_newer_checkpoint_wins_and_the_file_on_a_tie() {
        let at = |checkpoint: u64, offset: i64| {
            let mut s = StageState {
                checkpoint,
                ..Default::default()
            };
            mark_applied(&mut s.applied, "trace_logs", 0, offset);
            Some(s)
        };
        let pick = |l, r| {
            let (s, remote) = newer(l, r);
            (s.map(|s: StageState| s.applied["trace_logs"][&0]), remote)
        };
        // Another node held the lease since: the topic is newer.
        assert_eq!(pick(at(10, 100), at(25, 250)), (Some(251), true));
        // The topic write of the last checkpoint failed, or the topic was recreated.
        assert_eq!(pick(at(26, 260), at(25, 250)), (Some(261), false));
        assert_eq!(pick(at(25, 255), at(25, 250)), (Some(256), false));
        assert_eq!(pick(None, at(3, 30)), (Some(31), true));
        assert_eq!(pick(at(3, 30), None), (Some(31), false));
        assert_eq!(pick(None, None), (None, false));
    }

    /// Regression: a holder killed between its file write and its topic write, whose
    /// successor resumed from the topic and saved once before dying too, took the group back
    /// from its own stale file (a higher checkpoint number), losing the successor's work.
    #[test]
    fn a_later_holders_checkpoint_wins_over_a_higher_number_of_an_earlier_one() {
        let state = |epoch: u64, checkpoint: u64, offset: i64| {
            let mut s = StageState {
                epoch,
                checkpoint,
                ..Default::default()
            };
            mark_applied(&mut s.applied, "trace_logs", 0, offset);
            Some(s)
        };
        let (s, remote) = newer(state(4, 11, 110), state(9, 10, 105));
        assert_eq!((s.unwrap().applied["trace_logs"][&0], remote), (106, true));
        // The other way round: the file is the later holder's.
        let (s, remote) = newer(state(9, 10, 105), state(4, 11, 110));
        assert_eq!((s.unwrap().applied["trace_logs"][&0], remote), (106, false));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(dir.path()).unwrap();
        fs::write(file.path(), b"{not json").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains(STATE_FILE), "{err}");
    }
}
