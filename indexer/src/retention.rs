//! The retention loop: every `interval` it applies the store's retention policy (whole days
//! past the age, then the oldest days while over the byte budget), and the same policy to
//! other kept files (the all-in-one process's dead letters). It only ever logs and counts
//! what fails: ingest never waits for it and never stops because of it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use dlog_storage::store::{RetentionPolicy, Store, StoreError, StoreUsage};

/// Default `retention.max_age_secs`: 7 days.
pub const DEFAULT_RETENTION_MAX_AGE_SECS: u64 = 7 * 86_400;
/// Default `retention.interval_secs`: 5 minutes.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 300;

/// A byte budget: none, a number of bytes, or a share of the filesystem that holds the
/// embedded store. Written `none`, `500MB`, `20GiB`, `1073741824` or `80%`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ByteBudget {
    /// No bound by size.
    #[default]
    Unbounded,
    /// At most this many bytes.
    Bytes(u64),
    /// At most this percentage (1-100) of the total size of the filesystem holding the
    /// embedded store's directory.
    DiskPercent(u8),
}

impl std::str::FromStr for ByteBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") || s == "0" {
            return Ok(ByteBudget::Unbounded);
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(ByteBudget::DiskPercent(p)),
                _ => Err(format!("`{text}`: a percentage of the disk is 1% to 100%")),
            };
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size like 500MB, 20GiB, 1073741824 or 80%"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, %)"
                ))
            }
        };
        value
            .checked_mul(scale)
            .map(ByteBudget::Bytes)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl TryFrom<String> for ByteBudget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ByteBudget> for String {
    fn from(b: ByteBudget) -> String {
        b.to_string()
    }
}

impl std::fmt::Display for ByteBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ByteBudget::Unbounded => f.write_str("none"),
            ByteBudget::Bytes(b) => write!(f, "{b}"),
            ByteBudget::DiskPercent(p) => write!(f, "{p}%"),
        }
    }
}

impl ByteBudget {
    /// The budget in bytes; a disk share is resolved against the filesystem holding `dir`.
    pub fn resolve(&self, dir: &Path) -> Result<Option<u64>, String> {
        match *self {
            ByteBudget::Unbounded => Ok(None),
            ByteBudget::Bytes(b) => Ok(Some(b)),
            ByteBudget::DiskPercent(p) => {
                let total = disk_size(dir)?;
                Ok(Some((total as u128 * u128::from(p) / 100) as u64))
            }
        }
    }
}

/// Total size of the filesystem holding `dir` (or its nearest existing ancestor), bytes.
pub fn disk_size(dir: &Path) -> Result<u64, String> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("."));
        if probe.as_os_str().is_empty() {
            probe = Path::new(".");
            break;
        }
    }
    let stat = rustix::fs::statvfs(probe)
        .map_err(|e| format!("size of the filesystem holding {}: {e}", dir.display()))?;
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
}

/// How long data is kept, the `[retention]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Drop a day of data once all of it is older than this, s; 0 keeps data forever.
    /// Default 604800 (7 days).
    pub max_age_secs: u64,
    /// Drop the oldest days while the store holds more than this: `none` (default), a size
    /// (`500MB`, `20GiB`, bytes) or a share of the embedded store's disk (`80%`). The current
    /// day is never dropped for size alone.
    pub max_bytes: ByteBudget,
    /// How often retention runs, s. Default 300.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_secs: DEFAULT_RETENTION_MAX_AGE_SECS,
            max_bytes: ByteBudget::Unbounded,
            interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
        }
    }
}

impl RetentionConfig {
    /// Checks the settings; `embedded_dir` is the embedded store's directory, or `None` for
    /// Elasticsearch (where a share of a local disk means nothing).
    pub fn validate(&self, embedded_dir: Option<&Path>) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("`retention.interval_secs` must be at least 1".into());
        }
        if let ByteBudget::DiskPercent(_) = self.max_bytes {
            match embedded_dir {
                None => {
                    return Err("`retention.max_bytes`: a share of the disk applies to the \
                         embedded store only; give Elasticsearch a size such as 500GiB"
                        .into())
                }
                Some(dir) => {
                    self.max_bytes.resolve(dir)?;
                }
            }
        }
        Ok(())
    }

    /// The policy, with a disk share resolved against `dir`.
    pub fn policy(&self, dir: &Path) -> Result<RetentionPolicy, String> {
        Ok(RetentionPolicy {
            max_age: (self.max_age_secs > 0).then(|| Duration::from_secs(self.max_age_secs)),
            max_bytes: self.max_bytes.resolve(dir)?,
        })
    }

    /// `interval_secs` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.max(1))
    }
}

/// Something besides the store that keeps files by day and follows the same policy.
#[async_trait]
pub trait Retained: Send + Sync {
    /// What it is, for logs (`dead letters`).
    fn name(&self) -> &'static str;
    /// Drops what the policy no longer keeps; returns the names of the dropped files.
    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_unix_nano: u64,
    ) -> Result<Vec<String>, String>;
}

fn set_usage(metrics: &Metrics, usage: &StoreUsage) {
    metrics
        .store_bytes_used
        .set(usage.bytes_used.min(i64::MAX as u64) as i64);
    metrics.store_oldest_seconds.set(
        usage
            .oldest_unix_nano
            .map_or(0, |n| (n / 1_000_000_000) as i64),
    );
    metrics
        .store_unindexed_attributes
        .set(usage.unindexed_attributes.min(i64::MAX as u64) as i64);
    metrics
        .store_unindexed_resources
        .set(usage.unindexed_resources.min(i64::MAX as u64) as i64);
    metrics
        .store_unindexed_names
        .set(usage.unindexed_names.min(i64::MAX as u64) as i64);
}

/// One retention pass over the store and `others`. Failures are logged and counted; `quiet`
/// remembers that the store has said it has no retention, so that it is logged once.
pub async fn retention_pass(
    store: &dyn Store,
    others: &[Arc<dyn Retained>],
    policy: &RetentionPolicy,
    metrics: &Metrics,
    quiet: &mut bool,
) {
    let now = dlog_storage::store::now_unix_nano();
    match store.apply_retention(policy, now).await {
        Ok(report) => {
            set_usage(metrics, &report.usage);
            if !report.dropped.is_empty() {
                metrics
                    .partitions_dropped
                    .inc_by(report.dropped.len() as u64);
                tracing::info!(backend = store.backend(), dropped = ?report.dropped,
                    bytes_used = report.usage.bytes_used, "retention dropped old partitions");
            }
        }
        Err(StoreError::Refused(message)) => {
            metrics.retention_errors.inc();
            if !*quiet {
                *quiet = true;
                tracing::warn!(backend = store.backend(), error = %message,
                    "the store refuses retention; nothing is dropped (logged once)");
            }
            if let Ok(usage) = store.usage().await {
                set_usage(metrics, &usage);
            }
        }
        Err(e) => {
            metrics.retention_errors.inc();
            tracing::warn!(backend = store.backend(), error = %e, "retention pass failed; next try in one interval");
        }
    }
    for other in others {
        match other.apply_retention(policy, now).await {
            Ok(dropped) if !dropped.is_empty() => {
                metrics.files_dropped.inc_by(dropped.len() as u64);
                tracing::info!(what = other.name(), ?dropped, "retention dropped old files");
            }
            Ok(_) => {}
            Err(e) => {
                metrics.retention_errors.inc();
                tracing::warn!(what = other.name(), error = %e, "retention failed");
            }
        }
    }
}

/// Runs [`retention_pass`] at once and then every `interval`, until `shutdown`.
pub async fn run_retention(
    store: Arc<dyn Store>,
    others: Vec<Arc<dyn Retained>>,
    policy: RetentionPolicy,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut quiet = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retention_pass(store.as_ref(), &others, &policy, &metrics, &mut quiet) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlog_storage::store::{
        AlertStore, Backend, DependencyReader, LogReader, Retention, SpanWriter, StatusReader,
        TraceReader,
    };

    #[test]
    fn budgets_parse_sizes_percentages_and_none() {
        let cases = [
            ("none", ByteBudget::Unbounded),
            ("0", ByteBudget::Unbounded),
            ("1048576", ByteBudget::Bytes(1 << 20)),
            ("500MB", ByteBudget::Bytes(500_000_000)),
            ("20GiB", ByteBudget::Bytes(20 << 30)),
            ("2 tib", ByteBudget::Bytes(2 << 40)),
            ("80%", ByteBudget::DiskPercent(80)),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<ByteBudget>(), Ok(expected), "{text}");
            if expected != ByteBudget::Unbounded {
                assert_eq!(expected.to_string().parse::<ByteBudget>(), Ok(expected));
            }
        }
        for bad in ["150%", "0%", "12XB", "-1", "GB", "99999999999999TB"] {
            assert!(bad.parse::<ByteBudget>().is_err(), "{bad}");
        }
    }

    /// A store as the embedded one is before it has retention: every call refused.
    struct NoRetention;

    impl Backend for NoRetention {
        fn backend(&self) -> &'static str {
            "embedded"
        }
    }

    #[async_trait]
    impl SpanWriter for NoRetention {
        async fn write(
            &self,
            _: &[dlog_storage::store::Document],
        ) -> Result<Vec<dlog_storage::store::WriteOutcome>, StoreError> {
            Ok(Vec::new())
        }

        async fn refresh(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[async_trait]
    impl TraceReader for NoRetention {
        async fn get_trace(
            &self,
            _: &str,
        ) -> Result<Vec<dlog_core::model::SpanRecord>, StoreError> {
            Ok(Vec::new())
        }

        async fn find_traces(
            &self,
            _: &dlog_storage::store::TraceQuery,
        ) -> Result<Vec<dlog_storage::store::TraceSummary>, StoreError> {
            Ok(Vec::new())
        }

        async fn services(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }

        async fn operations(
            &self,
            _: &str,
        ) -> Result<Vec<dlog_storage::store::Operation>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl DependencyReader for NoRetention {
        async fn dependencies(
            &self,
            _: dlog_storage::store::TimeRange,
        ) -> Result<dlog_storage::store::Dependencies, StoreError> {
            Ok(Default::default())
        }
    }

    #[async_trait]
    impl LogReader for NoRetention {
        async fn search_logs(
            &self,
            _: &dlog_storage::store::LogQuery,
        ) -> Result<Vec<dlog_core::model::LogEntry>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl StatusReader for NoRetention {
        async fn service_status(
            &self,
            _: &dlog_storage::store::StatusQuery,
        ) -> Result<Vec<dlog_storage::store::InstanceStatus>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl AlertStore for NoRetention {
        async fn upsert_alerts(
            &self,
            _: &[dlog_storage::store::AlertDoc],
        ) -> Result<(), StoreError> {
            Ok(())
        }

        async fn list_alerts(
            &self,
            _: &dlog_storage::store::AlertQuery,
        ) -> Result<Vec<dlog_storage::store::AlertDoc>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl Retention for NoRetention {}

    /// Keeps day files in memory and drops those older than the age.
    struct Files(std::sync::Mutex<Vec<u64>>);

    #[async_trait]
    impl Retained for Files {
        fn name(&self) -> &'static str {
            "test files"
        }
        async fn apply_retention(
            &self,
            policy: &RetentionPolicy,
            now: u64,
        ) -> Result<Vec<String>, String> {
            let cutoff = now - policy.max_age.unwrap().as_nanos() as u64;
            let mut days = self.0.lock().unwrap();
            let (old, keep): (Vec<u64>, Vec<u64>) = days.iter().partition(|d| **d < cutoff);
            *days = keep;
            Ok(old.iter().map(|d| d.to_string()).collect())
        }
    }

    #[tokio::test]
    async fn a_store_without_retention_is_counted_and_the_loop_goes_on() {
        let metrics = Arc::new(Metrics::new());
        let now = dlog_storage::store::now_unix_nano();
        let files = Arc::new(Files(std::sync::Mutex::new(vec![0, now])));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_retention(
            Arc::new(NoRetention),
            vec![files.clone()],
            RetentionPolicy {
                max_age: Some(Duration::from_secs(3600)),
                max_bytes: None,
            },
            Duration::from_millis(10),
            Arc::clone(&metrics),
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.retention_errors() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the loop stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The other kept files follow the policy even though the store refused it.
        assert_eq!(*files.0.lock().unwrap(), vec![now]);
        assert_eq!(metrics.files_dropped.get(), 1);
        assert_eq!(metrics.partitions_dropped(), 0);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
        let text = metrics.encode();
        assert!(
            text.contains("dlog_store_retention_errors_total "),
            "{text}"
        );
        assert!(text.contains("dlog_indexer_commits_total"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    /// Regression: the attributes and resources an embedded store keeps but does not index
    /// were only in its usage report (and counted from 0 again at every start): they are on
    /// `/metrics`, read from the store, so a restart keeps them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unindexed_attributes_resources_and_names_are_metrics_that_survive_a_restart() {
        use dlog_core::model::{ServiceInfo, SpanKind, SpanRecord, StatusCode};
        use dlog_storage::embedded::EmbeddedStore;
        use dlog_storage::Document;
        let dir = tempfile::tempdir().unwrap();
        let now = dlog_storage::store::now_unix_nano() - 3_600_000_000_000;
        let span = |i: u64| SpanRecord {
            trace_id: format!("{:032x}", 0x77 + i),
            span_id: "00000000000000a1".into(),
            parent_span_id: None,
            name: format!("op{i}"),
            kind: SpanKind::Server,
            start_unix_nano: now + i,
            end_unix_nano: now + i + 1,
            status: StatusCode::Unset,
            status_message: String::new(),
            service: ServiceInfo {
                name: "svc".into(),
                instance_id: Some(format!("i-{i}")),
                ..Default::default()
            },
            scope: String::new(),
            attributes: [(format!("key{i}"), serde_json::json!("v"))]
                .into_iter()
                .collect(),
            events: vec![],
            links: vec![],
        };
        {
            // One attribute key, one resource and three names (service, operation, scope)
            // fit; the second span's key, resource and operation name do not, nor the third's.
            let store = EmbeddedStore::open(dir.path())
                .unwrap()
                .with_max_dictionary_entries(1)
                .with_max_resources(1)
                .with_max_names(3);
            let docs: Vec<Document> = (0..3).map(|i| Document::Span(span(i))).collect();
            store.write(&docs).await.unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let metrics = Metrics::new();
        retention_pass(
            store.as_ref(),
            &[],
            &RetentionPolicy::default(),
            &metrics,
            &mut false,
        )
        .await;
        let text = metrics.encode();
        assert!(
            text.lines()
                .any(|l| l == "dlog_store_unindexed_attributes 2"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "dlog_store_unindexed_resources 2"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "dlog_store_unindexed_names 2"),
            "{text}"
        );
    }

    #[test]
    fn a_disk_share_resolves_against_the_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let total = disk_size(dir.path()).unwrap();
        assert!(total > 0);
        let half = ByteBudget::DiskPercent(50)
            .resolve(&dir.path().join("not/yet/created"))
            .unwrap()
            .unwrap();
        assert_eq!(half, total / 2);
        let config = RetentionConfig {
            max_bytes: ByteBudget::DiskPercent(50),
            ..Default::default()
        };
        let err = config.validate(None).unwrap_err();
        assert!(err.contains("embedded store only"), "{err}");
        config.validate(Some(dir.path())).unwrap();
    }
}
