//! dlog's storage: the [`Store`] trait, its two backends, and the trace-tree view. The
//! indexing stage that feeds them is the `dlog-indexer` crate.
//!
//! * [`Store`]: idempotent writes of spans, logs and heartbeats (deterministic document ids),
//!   alerts, and the queries the viewer and the alerting stage need: `get_trace`,
//!   `find_traces`, `search_logs`, `services`, `operations`, `dependencies`,
//!   `service_status`, `list_alerts`. Object-safe: stages hold an `Arc<dyn Store>`.
//! * [`open_store`]: the embedded SQLite store in one directory (the default, see
//!   [`embedded`]), or Elasticsearch when a URL is configured (see [`elastic`]: Jaeger's span
//!   model, flat daily log indices, a service registry).
//! * [`tree`]: the trace tree with a waterfall, as `dlog-indexer trace <id>` prints it.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 1)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dlog_storage::{open_store, AlertDoc, AlertQuery, StoreConfig};
//!
//! let dir = std::env::temp_dir().join(format!("dlog-doc-{}", std::process::id()));
//! let store = open_store(&StoreConfig::embedded(&dir)).await?;
//! let alert = AlertDoc {
//!     id: "error-rate/backend".into(),
//!     rule: "error_rate".into(),
//!     severity: "critical".into(),
//!     state: "firing".into(),
//!     service: "backend".into(),
//!     instance: None,
//!     summary: "backend: 12% of requests failed".into(),
//!     first_seen_unix_nano: 1,
//!     last_seen_unix_nano: 2,
//!     occurrences: 1,
//!     example_trace_ids: vec![],
//!     root_cause: None,
//!     incident_id: None,
//!     labels: Default::default(),
//! };
//! store.upsert_alerts(&[alert.clone()]).await?;
//! store.upsert_alerts(&[alert.clone()]).await?; // idempotent by id
//! assert_eq!(store.list_alerts(&AlertQuery::default()).await?, vec![alert]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod elastic;
pub mod embedded;
pub mod silence;
pub mod store;
pub mod tree;

use std::sync::Arc;

pub use config::StoreConfig;
pub use silence::{AlertAck, Silence};
pub use store::now_unix_nano;
pub use store::{
    AlertDoc, AlertQuery, AlertStore, Backend, DeclaredDependency, Dependencies, DependencyEdge,
    DependencyReader, Document, InstanceStatus, Liveness, LogCursor, LogOrder, LogQuery, LogReader,
    Operation, PartitionUsage, RegistryEntry, Retention, RetentionPolicy, RetentionReport,
    SpanCursor, SpanWriter, StatusQuery, StatusReader, Store, StoreError, StoreUsage, TimeRange,
    TimeWindow, TraceQuery, TraceReader, TraceSummary, WriteOutcome,
};

/// The storage traits, for calling their methods on a concrete backend
/// (`use dlog_storage::prelude::*;`): through `dyn Store` or a generic bound they are in
/// scope already.
pub mod prelude {
    pub use crate::store::{
        AlertStore, Backend, DependencyReader, LogReader, Retention, SpanWriter, StatusReader,
        Store, TraceReader,
    };
}

/// Opens the configured store: Elasticsearch when `elasticsearch_url` is set, otherwise the
/// embedded store in `data_dir`.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    config.validate()?;
    match &config.elasticsearch_url {
        None => {
            // Off the async threads: opening may wait for another process's upgrade.
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(dir))
                .await
                .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))??;
            Ok(Arc::new(
                store
                    .with_max_dictionary_entries(config.max_dictionary_entries)
                    .with_max_resources(config.max_resources)
                    .with_max_names(config.max_names),
            ))
        }
        Some(_) => Ok(Arc::new(elastic::ElasticStore::connect(config).await?)),
    }
}
