//! Where alerts go: the terminal, the Kafka `alerts` topic, a webhook, the store.
//!
//! Each output is an [`AlertSink`] behind a [`Filter`]. Required outputs are delivered to
//! before offsets are acknowledged (the stage retries them with backoff and keeps what they
//! still owe in the state file's outbox); best-effort outputs get their alerts through a
//! bounded queue and never hold the stage up.

pub mod kafka;
pub mod silences;
pub mod store;
pub mod terminal;
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::alert::{Alert, Transition, TransitionKind};
use crate::config::Filter;
use crate::metrics::Metrics;

/// A destination for alert transitions.
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Short name, used in metrics, logs and the state file (`terminal`, `kafka`, ...).
    fn name(&self) -> &'static str;

    /// Delivers the transitions, in order. `Ok` means the destination accepted all of them.
    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError>;

    /// Delivers the transitions, in order, and says what became of each one, so that a
    /// required output retries only what failed and drops what the destination refused for
    /// good. The default sends them all at once: all delivered, or all to retry.
    async fn send_each(&self, transitions: &[Transition]) -> Vec<Delivery> {
        match self.send(transitions).await {
            Ok(()) => transitions.iter().map(|_| Delivery::Delivered).collect(),
            Err(e) => transitions
                .iter()
                .map(|_| Delivery::Retry(e.message.clone()))
                .collect(),
        }
    }
}

/// What became of one transition sent to an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The destination accepted it.
    Delivered,
    /// The destination refused it for good (retrying cannot help): it is dropped.
    Rejected(String),
    /// Not delivered yet (the destination is down, or an earlier transition failed): retry.
    Retry(String),
}

/// An output did not accept alerts.
#[derive(Debug, thiserror::Error)]
#[error("output `{output}`: {message}")]
pub struct SinkError {
    /// Which output.
    pub output: &'static str,
    /// What went wrong.
    pub message: String,
}

impl SinkError {
    /// An error of `output`.
    pub fn new(output: &'static str, message: impl Into<String>) -> Self {
        SinkError {
            output,
            message: message.into(),
        }
    }
}

impl Filter {
    /// True when this output gets the transition.
    pub fn accepts(&self, transition: &Transition) -> bool {
        transition.alert.severity >= self.min_severity
            && (transition.kind != TransitionKind::Updated || self.updates)
    }
}

/// A configured output. Each output's folder has its `config.rs` and a `build()` that
/// makes one of these from it.
#[derive(Clone)]
pub struct Output {
    /// The sink.
    pub sink: Arc<dyn AlertSink>,
    /// Which transitions it gets.
    pub filter: Filter,
    /// Whether offsets wait for it.
    pub required: bool,
    /// Alerts queued for it when it is best effort.
    pub queue: usize,
}

impl Output {
    /// The sink's name.
    pub fn name(&self) -> &'static str {
        self.sink.name()
    }
}

/// Most alerts a best-effort output is handed in one call.
const BEST_EFFORT_BATCH: usize = 100;

/// A best-effort output: a bounded queue and a task that drains it.
pub(crate) struct BestEffort {
    name: &'static str,
    filter: Filter,
    tx: tokio::sync::mpsc::Sender<Transition>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl BestEffort {
    pub(crate) fn spawn(output: Output, capacity: usize, metrics: Arc<Metrics>) -> BestEffort {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Transition>(capacity.max(1));
        let sink = output.sink.clone();
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < BEST_EFFORT_BATCH {
                    match rx.try_recv() {
                        Ok(t) => batch.push(t),
                        Err(_) => break,
                    }
                }
                let name = sink.name();
                match sink.send(&batch).await {
                    Ok(()) => {
                        task_metrics.output(&task_metrics.output_sent, name, batch.len() as u64)
                    }
                    Err(e) => {
                        task_metrics.output(&task_metrics.output_errors, name, 1);
                        task_metrics.output(&task_metrics.output_dropped, name, batch.len() as u64);
                        tracing::warn!(error = %e, alerts = batch.len(), "best-effort output gave up on alerts");
                    }
                }
                batch.clear();
            }
        });
        BestEffort {
            name: output.name(),
            filter: output.filter,
            tx,
            task,
            metrics,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Queues what the filter accepts; drops (and counts) what does not fit.
    pub(crate) fn offer(&self, transitions: &[Transition]) {
        for t in transitions.iter().filter(|t| self.filter.accepts(t)) {
            if self.tx.try_send(t.clone()).is_err() {
                self.metrics
                    .output(&self.metrics.output_dropped, self.name, 1);
            }
        }
    }

    /// Stops taking alerts and waits up to `within` for the queue to drain.
    pub(crate) async fn close(self, within: std::time::Duration) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::warn!(
                output = self.name,
                "best-effort output did not drain in time"
            );
            task.abort();
        }
    }
}

/// The JSON document a webhook receives: the alert, what happened to it, and its times in
/// RFC 3339 next to the nanosecond fields.
#[derive(Debug, Serialize)]
pub struct AlertJson<'a> {
    /// `fired`, `updated` or `resolved`.
    pub event: &'static str,
    /// The alert.
    #[serde(flatten)]
    pub alert: &'a Alert,
    /// `first_seen_unix_nano` in RFC 3339.
    pub first_seen: String,
    /// `last_seen_unix_nano` in RFC 3339.
    pub last_seen: String,
}

impl<'a> AlertJson<'a> {
    /// The document for one transition.
    pub fn new(transition: &'a Transition) -> Self {
        AlertJson {
            event: transition.kind.as_str(),
            alert: &transition.alert,
            first_seen: rfc3339(transition.alert.first_seen_unix_nano),
            last_seen: rfc3339(transition.alert.last_seen_unix_nano),
        }
    }
}

/// A Unix-nanosecond time in RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(unix_nanos: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix_nanos.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_millis() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
