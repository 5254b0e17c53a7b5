//! Alerts in the store (through the `dlog_storage::AlertStore` role), so the viewer can list them.
//! One document per alert id, upserted as it fires, updates and resolves.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use dlog_storage::{AlertDoc, AlertStore, StoreError};

pub mod config;

use super::{AlertSink, Delivery, Output, SinkError};
use crate::alert::{Alert, Transition};
use config::StoreOutputConfig;

/// The store output `config` describes, if enabled: opens the store.
pub async fn build(config: &StoreOutputConfig) -> Result<Option<Output>, dlog_storage::StoreError> {
    if !config.enabled {
        return Ok(None);
    }
    let store = dlog_storage::open_store(&config.backend).await?;
    Ok(Some(build_on(config, store)))
}

/// The store output over an open store.
pub fn build_on(config: &StoreOutputConfig, store: Arc<dyn AlertStore>) -> Output {
    Output {
        sink: Arc::new(StoreSink::new(store)),
        filter: config.filter(),
        required: config.required,
        queue: config.queue,
    }
}

/// Upserts alert documents.
pub struct StoreSink {
    store: Arc<dyn AlertStore>,
}

impl StoreSink {
    /// Writes to `store`.
    pub fn new(store: Arc<dyn AlertStore>) -> Self {
        StoreSink { store }
    }
}

/// The store document of an alert.
pub fn alert_doc(alert: &Alert) -> AlertDoc {
    AlertDoc {
        id: alert.id.clone(),
        rule: alert.rule.clone(),
        severity: alert.severity.as_str().to_string(),
        state: alert.state.as_str().to_string(),
        service: alert.service.clone(),
        instance: alert.instance.clone(),
        summary: alert.summary.clone(),
        first_seen_unix_nano: alert.first_seen_unix_nano,
        last_seen_unix_nano: alert.last_seen_unix_nano,
        occurrences: alert.occurrences,
        example_trace_ids: alert.example_trace_ids.clone(),
        root_cause: alert.root_cause.clone(),
        incident_id: alert.incident_id.clone(),
        labels: alert.labels.clone(),
    }
}

/// What became of an upsert, for one event.
fn delivery(result: &Result<(), StoreError>, backend: &str) -> Delivery {
    match result {
        Ok(()) => Delivery::Delivered,
        // Refused, invalid or unserializable: the same document will be refused again.
        Err(
            e @ (StoreError::Refused(_) | StoreError::InvalidQuery(_) | StoreError::Corrupt { .. }),
        ) => Delivery::Rejected(format!("{backend} store: {e}")),
        Err(e) => Delivery::Retry(format!("{backend} store: {e}")),
    }
}

#[async_trait]
impl AlertSink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        // Only the latest state of each alert matters to an upsert.
        let mut latest: BTreeMap<&str, &Alert> = BTreeMap::new();
        for t in transitions {
            latest.insert(&t.alert.id, &t.alert);
        }
        let docs: Vec<AlertDoc> = latest.values().map(|a| alert_doc(a)).collect();
        if docs.is_empty() {
            return Ok(());
        }
        self.store
            .upsert_alerts(&docs)
            .await
            .map_err(|e| SinkError::new("store", format!("{} store: {e}", self.store.backend())))
    }

    /// Upserts the latest state of each alert at once; when the store refuses the batch for
    /// good, upserts them one by one, so that only the alert it refuses is dropped.
    async fn send_each(&self, transitions: &[Transition]) -> Vec<Delivery> {
        let backend = self.store.backend();
        let mut latest: BTreeMap<&str, &Alert> = BTreeMap::new();
        for t in transitions {
            latest.insert(&t.alert.id, &t.alert);
        }
        let docs: Vec<AlertDoc> = latest.values().map(|a| alert_doc(a)).collect();
        let batch = if docs.is_empty() {
            Ok(())
        } else {
            self.store.upsert_alerts(&docs).await
        };
        let per_id: BTreeMap<String, Delivery> = match &batch {
            Err(e)
                if docs.len() > 1 && matches!(delivery(&batch, backend), Delivery::Rejected(_)) =>
            {
                tracing::debug!(error = %e, "store refused a batch of alerts; upserting them one by one");
                let mut each = BTreeMap::new();
                for doc in &docs {
                    let result = self.store.upsert_alerts(std::slice::from_ref(doc)).await;
                    each.insert(doc.id.clone(), delivery(&result, backend));
                }
                each
            }
            _ => docs
                .iter()
                .map(|d| (d.id.clone(), delivery(&batch, backend)))
                .collect(),
        };
        transitions
            .iter()
            .map(|t| {
                per_id
                    .get(&t.alert.id)
                    .cloned()
                    .unwrap_or(Delivery::Delivered)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use dlog_storage::{AlertQuery, Backend, Store};

    use super::*;
    use crate::alert::{Severity, TransitionKind};

    /// The embedded store's alerts, except that it refuses for good any batch holding an
    /// alert whose summary says `poison`, as a store refuses a document it cannot index. It
    /// has the alert role only: that is all the store output needs.
    struct Picky(Arc<dyn Store>);

    impl Backend for Picky {
        fn backend(&self) -> &'static str {
            "picky"
        }
    }

    #[async_trait]
    impl AlertStore for Picky {
        async fn upsert_alerts(&self, alerts: &[AlertDoc]) -> Result<(), StoreError> {
            if alerts.iter().any(|a| a.summary.contains("poison")) {
                return Err(StoreError::Refused("document too large".into()));
            }
            self.0.upsert_alerts(alerts).await
        }

        async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertDoc>, StoreError> {
            self.0.list_alerts(query).await
        }
    }

    fn transition(key: &str, summary: &str) -> Transition {
        Transition {
            kind: TransitionKind::Fired,
            alert: Alert::firing(
                "error_log",
                key.into(),
                Severity::Critical,
                "svc",
                summary.into(),
                1_700_000_000_000_000_000,
            ),
        }
    }

    /// Regression: the store output's one result for the whole batch meant one alert the
    /// store refused for good was retried forever, and every alert with it.
    #[tokio::test]
    async fn regression_store_rejects_only_the_alert_it_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let config = dlog_storage::StoreConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let inner = dlog_storage::open_store(&config).await.unwrap();
        let sink = StoreSink::new(Arc::new(Picky(inner.clone())));
        let results = sink
            .send_each(&[
                transition("svc|E1", "fine"),
                transition("svc|E2", "poison"),
                transition("svc|E3", "fine too"),
            ])
            .await;
        assert_eq!(results[0], Delivery::Delivered);
        assert!(
            matches!(&results[1], Delivery::Rejected(e) if e.contains("document too large")),
            "{results:?}"
        );
        assert_eq!(results[2], Delivery::Delivered);
        let stored = inner.list_alerts(&AlertQuery::default()).await.unwrap();
        let mut keys: Vec<String> = stored.iter().map(|a| a.summary.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["fine", "fine too"]);
    }
}
