//! The all-in-one mode's sink: each request's records are appended to the durable local log
//! ([`dlog_wal`]) and the sender is answered once they are fsynced. The indexing and alerting
//! stages read the log behind the bridge, each at its own pace, so neither sits on the
//! request path, as with Kafka.

use std::time::{SystemTime, UNIX_EPOCH};

use dlog_wal::{AppendError, Frames, Wal};
use prometheus_client::registry::Registry;

use super::{OutRecord, Sink, SinkError};

/// Appends batches to a [`Wal`].
#[derive(Debug, Clone)]
pub struct LocalLogSink {
    wal: Wal,
}

impl LocalLogSink {
    /// A sink appending to `wal`.
    pub fn new(wal: Wal) -> Self {
        LocalLogSink { wal }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Sink for LocalLogSink {
    async fn publish(&self, batch: Vec<OutRecord>) -> Result<(), SinkError> {
        let bytes: usize = batch.iter().map(|r| r.size() + 64).sum();
        let mut frames = Frames::with_capacity(bytes);
        let timestamp = now_ms();
        for record in &batch {
            let headers = record.headers();
            let headers: [(&str, &[u8]); 2] = [
                (headers[0].0, headers[0].1.as_bytes()),
                (headers[1].0, headers[1].1.as_bytes()),
            ];
            frames
                .push(
                    &record.topic,
                    Some(record.key.as_bytes()),
                    &headers,
                    &record.value,
                    Some(timestamp),
                )
                .map_err(|e| SinkError::Rejected(e.to_string()))?;
        }
        drop(batch);
        match self.wal.append(frames).await {
            Ok(_) => Ok(()),
            Err(e @ (AppendError::Full { .. } | AppendError::Closed)) => {
                Err(SinkError::Unavailable(e.to_string()))
            }
            // A failed write or fsync: the sender should retry, against a restarted process.
            Err(e @ AppendError::Failed(_)) => Err(SinkError::Unavailable(e.to_string())),
            Err(e @ AppendError::TooLarge { .. }) => Err(SinkError::Rejected(e.to_string())),
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.wal.metrics().register(registry);
    }

    fn describe(&self) -> String {
        format!("local log {}", self.wal.dir().display())
    }
}
