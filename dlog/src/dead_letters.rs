//! Dead letters without Kafka: the all-in-one process appends each record it cannot store to
//! `dead_letters.jsonl` in its data directory, with the reason and the source coordinates, and
//! syncs the file before the stage acknowledges the record. `dlog dead-letters` lists them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dlog_core::source::{RawRecord, SourceError};
use dlog_storage::stage::DeadLetterSink;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// File name of the dead letters inside the data directory.
pub const DEAD_LETTERS_FILE: &str = "dead_letters.jsonl";

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
    pub fn read_all(data_dir: &Path) -> std::io::Result<Vec<DeadLetter>> {
        let text = match std::fs::read_to_string(data_dir.join(DEAD_LETTERS_FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .collect()
    }
}

#[async_trait]
impl DeadLetterSink for FileDeadLetters {
    async fn send(&self, record: &RawRecord, reason: &str) -> Result<(), SourceError> {
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
        let mut line = serde_json::to_vec(&letter)
            .map_err(|e| SourceError::Io(format!("cannot encode a dead letter: {e}")))?;
        line.push(b'\n');
        let path = self.path.clone();
        let _guard = self.lock.lock().await;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(|e| SourceError::Io(format!("dead-letter writer failed: {e}")))?
        .map_err(|e| {
            SourceError::Io(format!(
                "cannot write dead letter to {}: {e}",
                self.path.display()
            ))
        })
    }
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

        let letters = FileDeadLetters::read_all(dir.path()).unwrap();
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

    #[test]
    fn no_file_means_no_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileDeadLetters::read_all(dir.path()).unwrap().is_empty());
    }
}
