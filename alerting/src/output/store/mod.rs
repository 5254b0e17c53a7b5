//! Alerts in the store (through the `dlog_storage::Store` trait), so the viewer can list them.
//! One document per alert id, upserted as it fires, updates and resolves.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use dlog_storage::{AlertDoc, Store};

pub mod config;

use super::{AlertSink, Output, SinkError};
use crate::alert::{Alert, Transition};
use config::StoreOutputConfig;

/// The store output `config` describes, if enabled: opens the store.
pub async fn build(config: &StoreOutputConfig) -> Result<Option<Output>, dlog_storage::StoreError> {
    if !config.enabled {
        return Ok(None);
    }
    let store = dlog_storage::open_store(&config.backend).await?;
    Ok(Some(Output {
        sink: Arc::new(StoreSink::new(store)),
        filter: config.filter(),
        required: config.required,
        queue: config.queue,
    }))
}

/// Upserts alert documents.
pub struct StoreSink {
    store: Arc<dyn Store>,
}

impl StoreSink {
    /// Writes to `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
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
}
