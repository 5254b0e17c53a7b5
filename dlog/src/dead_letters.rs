//! Dead letters without Kafka: the all-in-one process appends each record it cannot store to
//! `dead_letters.jsonl` in its data directory, with the reason and the source coordinates, and
//! syncs the file before the stage acknowledges the record. `dlog dead-letters` lists them.
//!
//! The file is rotated by day: the first letter of a new UTC day moves the previous day's
//! file to `dead_letters-YYYY-MM-DD.jsonl`. Retention drops those day files by the same age
//! and size policy as the store (never the current file for size alone).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dlog_core::kafka::DeadLetterError;
use dlog_core::source::RawRecord;
use dlog_indexer::retention::Retained;
use dlog_indexer::DeadLetterSink;
use dlog_storage::RetentionPolicy;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// File name of the dead letters inside the data directory.
pub const DEAD_LETTERS_FILE: &str = "dead_letters.jsonl";
/// Name of the rotated file of a day's dead letters: `dead_letters-YYYY-MM-DD.jsonl`.
pub fn day_file_name(day: &str) -> String {
    format!("dead_letters-{day}.jsonl")
}

const DAY_NANOS: u64 = 86_400_000_000_000;

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// The rotated day files in `dir`, oldest first: (day since the epoch, path, bytes).
fn day_files(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(day) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dead_letters-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(dlog_storage::elastic::model::days_of_date)
        else {
            continue;
        };
        out.push((day, entry.path(), entry.metadata()?.len()));
    }
    out.sort();
    Ok(out)
}

/// Moves the current file to its day's file when it was last written on an earlier UTC day
/// than `now`. Appends when that day's file exists already (a clock set back).
fn rotate(dir: &Path, now_unix_nano: u64) -> std::io::Result<()> {
    let current = dir.join(DEAD_LETTERS_FILE);
    let modified = match std::fs::metadata(&current) {
        Ok(m) => unix_nanos(m.modified()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let day = modified / DAY_NANOS;
    if day >= now_unix_nano / DAY_NANOS {
        return Ok(());
    }
    let target = dir.join(day_file_name(&dlog_storage::elastic::model::date_of_days(
        day as i64,
    )));
    if target.exists() {
        let text = std::fs::read(&current)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(&target)?;
        file.write_all(&text)?;
        file.sync_data()?;
        std::fs::remove_file(&current)?;
    } else {
        std::fs::rename(&current, &target)?;
    }
    Ok(())
}

/// One dead letter, one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was written, ns since the Unix epoch.
    pub time_unix_nano: u64,
    /// Why the record could not be stored.
    pub reason: String,
    /// The topic the record was routed to.
    pub topic: String,
    /// Its partition and offset in the in-process input.
    pub partition: i32,
    /// Its offset in the in-process input.
    pub offset: i64,
    /// The record key, as text.
    pub key: Option<String>,
    /// The record headers, values as text.
    pub headers: Vec<(String, String)>,
    /// The record value, hex.
    pub payload_hex: String,
}

/// Appends dead letters to a file and syncs it before answering.
#[derive(Clone)]
pub struct FileDeadLetters {
    path: PathBuf,
    // One writer at a time keeps lines whole.
    lock: Arc<Mutex<()>>,
}

impl FileDeadLetters {
    /// Dead letters go to `data_dir/dead_letters.jsonl`.
    pub fn new(data_dir: &Path) -> Self {
        FileDeadLetters {
            path: data_dir.join(DEAD_LETTERS_FILE),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Every dead letter written so far, oldest first. A missing file means none.
    ///
    /// A line that is not a whole dead letter (the last line torn by a crash mid-write, or a
    /// damaged one) is skipped and reported in [`DeadLetters::skipped`] rather than hiding
    /// every other letter.
    pub fn read_all(data_dir: &Path) -> std::io::Result<DeadLetters> {
        let mut all = DeadLetters::default();
        let mut files: Vec<PathBuf> = day_files(data_dir)?.into_iter().map(|f| f.1).collect();
        files.push(data_dir.join(DEAD_LETTERS_FILE));
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(line) {
                    Ok(letter) => all.letters.push(letter),
                    Err(e) => all.skipped.push(SkippedLine {
                        file: path.clone(),
                        line: index + 1,
                        reason: e.to_string(),
                    }),
                }
            }
        }
        Ok(all)
    }
}

/// What [`FileDeadLetters::read_all`] found.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// The whole dead letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Lines that could not be read as a dead letter.
    pub skipped: Vec<SkippedLine>,
}

/// A line of the dead-letter file that is not a whole dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedLine {
    /// The file it is in.
    pub file: PathBuf,
    /// Its 1-based line number in the file.
    pub line: usize,
    /// Why it could not be read.
    pub reason: String,
}

#[async_trait]
impl DeadLetterSink for FileDeadLetters {
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), DeadLetterError> {
        let letter = DeadLetter {
            time_unix_nano: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
            reason: reason.to_string(),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record.key_str(),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            payload_hex: hex::encode(&record.payload),
        };
        let mut line = serde_json::to_vec(&letter).map_err(DeadLetterError::Encode)?;
        line.push(b'\n');
        let path = self.path.clone();
        let now = letter.time_unix_nano;
        let _guard = self.lock.lock().await;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut line = line;
            if let Some(dir) = path.parent() {
                rotate(dir, now)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            // A crash mid-write leaves a torn last line; start on a fresh line so this
            // letter is not glued to it and lost with it.
            if ends_without_newline(&mut file)? {
                line.insert(0, b'\n');
            }
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(DeadLetterError::Task)?
        .map_err(|source| DeadLetterError::File {
            path: self.path.clone(),
            source,
        })
    }
}

#[async_trait]
impl Retained for FileDeadLetters {
    fn name(&self) -> &'static str {
        "dead letters"
    }

    /// Rotates a current file left from an earlier day, then drops day files older than the
    /// age and, oldest first, while all the files hold more than the budget.
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_unix_nano: u64,
    ) -> Result<Vec<String>, String> {
        let policy = *policy;
        let path = self.path.clone();
        let _guard = self.lock.lock().await;
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let Some(dir) = path.parent() else {
                return Ok(Vec::new());
            };
            rotate(dir, now_unix_nano)?;
            let files = day_files(dir)?;
            let current = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let mut used = current + files.iter().map(|f| f.2).sum::<u64>();
            let cutoff = policy
                .max_age
                .map(|age| now_unix_nano.saturating_sub(age.as_nanos() as u64));
            let mut dropped = Vec::new();
            for (day, file, bytes) in files {
                let too_old = cutoff.is_some_and(|c| (day as u64 + 1) * DAY_NANOS <= c);
                let over = policy.max_bytes.is_some_and(|b| used > b);
                if !too_old && !over {
                    break;
                }
                std::fs::remove_file(&file)?;
                used = used.saturating_sub(bytes);
                dropped.push(file.display().to_string());
            }
            Ok(dropped)
        })
        .await
        .map_err(|e| format!("dead-letter retention failed: {e}"))?
        .map_err(|e| format!("dead-letter retention in {}: {e}", self.path.display()))
    }
}

/// True when the file is not empty and its last byte is not a newline.
fn ends_without_newline(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_letter_is_on_disk_with_its_reason_and_coordinates_once_sent() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileDeadLetters::new(dir.path());
        let record = RawRecord {
            topic: "trace_logs".into(),
            partition: 0,
            offset: 41,
            key: Some(b"0af7651916cd43dd8448eb211c80319c".to_vec()),
            payload: vec![0xff, 0x00, 0x01],
            headers: vec![("otlp.encoding".into(), b"otlp_proto".to_vec())],
            timestamp_ms: None,
        };
        sink.send(
            &record,
            "value is not a valid protobuf OTLP trace export request",
        )
        .await
        .unwrap();
        let second = RawRecord {
            offset: 42,
            ..record.clone()
        };
        sink.send(&second, "rejected").await.unwrap();

        let letters = FileDeadLetters::read_all(dir.path()).unwrap().letters;
        assert_eq!(letters.len(), 2);
        assert_eq!(
            letters[0].reason,
            "value is not a valid protobuf OTLP trace export request"
        );
        assert_eq!(letters[0].topic, "trace_logs");
        assert_eq!(letters[0].offset, 41);
        assert_eq!(
            letters[0].key.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(letters[0].payload_hex, "ff0001");
        assert_eq!(
            letters[0].headers,
            vec![("otlp.encoding".to_string(), "otlp_proto".to_string())]
        );
        assert_eq!(letters[1].offset, 42);
    }

    #[tokio::test]
    async fn dead_letters_rotate_by_day_and_old_days_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileDeadLetters::new(dir.path());
        sink.send(&record(1), "yesterday's").await.unwrap();
        // The current file was last written yesterday: the next letter rotates it.
        let now = std::time::SystemTime::now();
        let yesterday = now - std::time::Duration::from_secs(86_400);
        std::fs::File::options()
            .append(true)
            .open(dir.path().join(DEAD_LETTERS_FILE))
            .unwrap()
            .set_modified(yesterday)
            .unwrap();
        sink.send(&record(2), "today's").await.unwrap();
        let day =
            |t: std::time::SystemTime| dlog_storage::elastic::model::date_of_nanos(unix_nanos(t));
        let rotated = dir.path().join(day_file_name(&day(yesterday)));
        assert!(rotated.exists());
        // Older days, as earlier rotations left them.
        for (days_back, size) in [(10u64, 100usize), (3, 100)] {
            let t = now - std::time::Duration::from_secs(days_back * 86_400);
            std::fs::write(dir.path().join(day_file_name(&day(t))), "x".repeat(size)).unwrap();
        }
        let reasons = |d: &Path| -> Vec<String> {
            FileDeadLetters::read_all(d)
                .unwrap()
                .letters
                .into_iter()
                .map(|l| l.reason)
                .collect()
        };
        assert_eq!(reasons(dir.path()), vec!["yesterday's", "today's"]);
        let now_ns = unix_nanos(now);
        // By age: a week drops the 10-day-old file only.
        let dropped = sink
            .apply_retention(
                &RetentionPolicy {
                    max_age: Some(std::time::Duration::from_secs(7 * 86_400)),
                    max_bytes: None,
                },
                now_ns,
            )
            .await
            .unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].ends_with(&day_file_name(&day(
            now - std::time::Duration::from_secs(10 * 86_400)
        ))));
        // By size: one byte drops every day file, oldest first, but never the current file.
        let dropped = sink
            .apply_retention(
                &RetentionPolicy {
                    max_age: None,
                    max_bytes: Some(1),
                },
                now_ns,
            )
            .await
            .unwrap();
        assert_eq!(dropped.len(), 2);
        assert_eq!(reasons(dir.path()), vec!["today's"]);
    }

    #[test]
    fn no_file_means_no_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let all = FileDeadLetters::read_all(dir.path()).unwrap();
        assert!(all.letters.is_empty() && all.skipped.is_empty());
    }

    fn record(offset: i64) -> RawRecord {
        RawRecord {
            topic: "trace_logs".into(),
            partition: 0,
            offset,
            key: None,
            payload: vec![0x01],
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[tokio::test]
    async fn regression_torn_last_dead_letter_line_is_skipped_and_the_rest_listed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileDeadLetters::new(dir.path());
        sink.send(&record(1), "first").await.unwrap();
        sink.send(&record(2), "second").await.unwrap();
        // A crash in the middle of the third write.
        let path = dir.path().join(DEAD_LETTERS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(br#"{"time_unix_nano":17,"reason":"thi"#)
            .unwrap();
        drop(file);

        let all = FileDeadLetters::read_all(dir.path()).unwrap();
        let offsets: Vec<i64> = all.letters.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        assert_eq!(all.skipped.len(), 1);
        assert_eq!(all.skipped[0].line, 3);

        // The next letter after the restart is not glued to the torn line.
        sink.send(&record(4), "after the crash").await.unwrap();
        let all = FileDeadLetters::read_all(dir.path()).unwrap();
        let offsets: Vec<i64> = all.letters.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![1, 2, 4]);
        assert_eq!(all.skipped.len(), 1);
        assert_eq!(all.skipped[0].line, 3);
    }
}
