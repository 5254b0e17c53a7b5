//! Where the store lives: the embedded directory, or an Elasticsearch cluster.

use std::path::PathBuf;

use dlog_core::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, TimeWindow};

/// Default directory of the embedded store.
pub const DEFAULT_DATA_DIR: &str = "dlog-data";
/// Default largest `_bulk` request body, bytes.
pub const DEFAULT_BULK_MAX_BYTES: usize = 5 * 1024 * 1024;
/// Default most documents per `_bulk` request.
pub const DEFAULT_BULK_MAX_DOCS: usize = 2000;
/// Default most attributes indexed per document (the mapping-explosion guard).
pub const DEFAULT_MAX_INDEXED_ATTRIBUTES: usize = 64;
/// Default of how far before the receive time a record's time may choose its daily index
/// or time partition: 7 days.
pub const DEFAULT_PARTITION_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Default of how far after the receive time a record's time may choose its daily index
/// or time partition: 1 hour.
pub const DEFAULT_PARTITION_MAX_AHEAD_SECS: u64 = 3600;
/// Default most distinct attribute keys and common values in the embedded store's dictionary
/// (service, operation, scope and level names are not counted: they have their own cap,
/// [`DEFAULT_MAX_NAMES`]). Past it,
/// attributes with new keys are still stored with their span or log, but not indexed for
/// search.
pub const DEFAULT_MAX_DICTIONARY_ENTRIES: usize = 100_000;
/// Default [`StoreConfig::max_resources`].
pub const DEFAULT_MAX_RESOURCES: usize = 100_000;
/// Default [`StoreConfig::max_names`].
pub const DEFAULT_MAX_NAMES: usize = 500_000;
/// Default Elasticsearch request timeout, ms.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Which store to open and how. With no `elasticsearch_url`, the embedded store in `data_dir`
/// is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Elasticsearch (or OpenSearch-API) base URL, `http://HOST:PORT` or `https://HOST:PORT`
    /// (TLS through rustls; the server's certificate must chain to the Mozilla root set or to
    /// `elasticsearch_ca`). Unset: the embedded store.
    pub elasticsearch_url: Option<String>,
    /// PEM file of CA certificates trusted for an `https://` `elasticsearch_url`, next to the
    /// Mozilla root set built in (webpki-roots). Default: none.
    pub elasticsearch_ca: Option<PathBuf>,
    /// PEM certificate chain (leaf first) presented to Elasticsearch over https (mTLS).
    /// Needs `elasticsearch_client_key`. Default: none.
    pub elasticsearch_client_cert: Option<PathBuf>,
    /// PEM private key of `elasticsearch_client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub elasticsearch_client_key: Option<PathBuf>,
    /// Directory of the embedded store (created if missing). Default `dlog-data`.
    pub data_dir: PathBuf,
    /// Prefix of every Elasticsearch index and template name, joined with `-`
    /// (`<prefix>-jaeger-span-2025-01-31`), as Jaeger's `es.index-prefix`. Default: none.
    pub index_prefix: String,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// Elasticsearch API key (the base64 `id:key` form), used instead of basic auth.
    pub api_key: Option<String>,
    /// Largest `_bulk` request body, bytes. Default 5 MiB.
    pub bulk_max_bytes: usize,
    /// Most documents per `_bulk` request. Default 2000.
    pub bulk_max_docs: usize,
    /// Most attributes indexed per span or log (the rest is kept but not searchable), the
    /// guard against mapping explosion. Default 64.
    pub max_indexed_attributes: usize,
    /// Timeout of one Elasticsearch request, ms. Default 30000.
    pub request_timeout_ms: u64,
    /// Install the index templates at start. Default true.
    pub install_templates: bool,
    /// Shards of new indices. Default 1.
    pub shards: u32,
    /// Replicas of new indices. Default 0 (single node; raise it for a cluster).
    pub replicas: u32,
    /// A record older than this, relative to when it is received, goes to the daily index
    /// (time partition) of the oldest allowed day instead of its own, s. Its document keeps
    /// its original time. Default 604800 (7 days).
    pub partition_max_age_secs: u64,
    /// A record newer than this, relative to when it is received, goes to the daily index
    /// (time partition) of the newest allowed day instead of its own, s. Its document keeps
    /// its original time. Default 3600 (1 hour).
    pub partition_max_ahead_secs: u64,
    /// Embedded store: most distinct attribute keys and common values in its dictionary,
    /// which codes them (and service, operation, scope and level names, which are not
    /// counted here but against `max_names`) as numbers and indexes attributes by them. It bounds what random keys from a hostile or broken sender cost in
    /// memory and disk: past it, attributes with new keys are stored with their span or log
    /// (shown on the trace) but not searchable, counted in `usage().unindexed_attributes`,
    /// and a warning is logged once. Default 100000.
    pub max_dictionary_entries: usize,
    /// Embedded store: most distinct resources (service instances, by all their resource
    /// attributes) in its resources table. It bounds what random resource attributes from a
    /// hostile or broken sender cost: past it, a record with a new resource is stored whole
    /// (its resource written out with it) but indexed under its service's name alone, so it
    /// is found by service and not by its other resource attributes; counted in
    /// `usage().unindexed_resources`, and a warning is logged once. Default 100000.
    pub max_resources: usize,
    /// Embedded store: most distinct service, operation (span), scope and level names in its
    /// dictionary, and most (service, operation, kind) entries in its operation list. It
    /// bounds what unbounded names cost in memory and disk for good (span names built from
    /// URLs, a service name with a random suffix; dropping old days does not shrink the
    /// dictionary): past it, a record with a new name is stored whole (its names written out
    /// with it) but indexed under the name `(names full)`, so it is not found by its own
    /// service or operation name; counted in `usage().unindexed_names`, and a warning is
    /// logged once. Default 500000.
    pub max_names: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            elasticsearch_url: None,
            elasticsearch_ca: None,
            elasticsearch_client_cert: None,
            elasticsearch_client_key: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            index_prefix: String::new(),
            username: None,
            password: None,
            api_key: None,
            bulk_max_bytes: DEFAULT_BULK_MAX_BYTES,
            bulk_max_docs: DEFAULT_BULK_MAX_DOCS,
            max_indexed_attributes: DEFAULT_MAX_INDEXED_ATTRIBUTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            install_templates: true,
            shards: 1,
            replicas: 0,
            partition_max_age_secs: DEFAULT_PARTITION_MAX_AGE_SECS,
            partition_max_ahead_secs: DEFAULT_PARTITION_MAX_AHEAD_SECS,
            max_dictionary_entries: DEFAULT_MAX_DICTIONARY_ENTRIES,
            max_resources: DEFAULT_MAX_RESOURCES,
            max_names: DEFAULT_MAX_NAMES,
        }
    }
}

impl StoreConfig {
    /// The embedded store in `dir`.
    pub fn embedded(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: dir.into(),
            ..Default::default()
        }
    }

    /// Elasticsearch at `url`.
    pub fn elasticsearch(url: impl Into<String>) -> Self {
        StoreConfig {
            elasticsearch_url: Some(url.into()),
            ..Default::default()
        }
    }

    /// Sets the index prefix.
    pub fn with_index_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.index_prefix = prefix.into();
        self
    }

    /// The window a record's time is clamped to when it chooses a time partition.
    pub fn partition_window(&self) -> TimeWindow {
        TimeWindow {
            max_age_nanos: self.partition_max_age_secs.saturating_mul(1_000_000_000),
            max_ahead_nanos: self.partition_max_ahead_secs.saturating_mul(1_000_000_000),
        }
    }

    /// Checks the settings, naming the key and the reason of the first problem.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad =
            |key: &str, reason: &str| Err(StoreError::Config(ConfigError::invalid(key, reason)));
        if let Some(url) = &self.elasticsearch_url {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                return bad(
                    "elasticsearch_url",
                    &format!("`{url}` is not an http:// or https:// URL"),
                );
            }
            if self.elasticsearch_client_cert.is_some() != self.elasticsearch_client_key.is_some() {
                return bad(
                    "elasticsearch_client_cert",
                    "elasticsearch_client_cert and elasticsearch_client_key must be set together",
                );
            }
            if !https {
                // A TLS setting with a plain URL would be silently unused: say so.
                for (key, set) in [
                    ("elasticsearch_ca", self.elasticsearch_ca.is_some()),
                    (
                        "elasticsearch_client_cert",
                        self.elasticsearch_client_cert.is_some(),
                    ),
                ] {
                    if set {
                        return bad(
                            key,
                            &format!("is set but elasticsearch_url `{url}` is not https://"),
                        );
                    }
                }
            }
        } else {
            // The embedded store: an Elasticsearch TLS setting would be silently unused.
            for (key, set) in [
                ("elasticsearch_ca", self.elasticsearch_ca.is_some()),
                (
                    "elasticsearch_client_cert",
                    self.elasticsearch_client_cert.is_some(),
                ),
                (
                    "elasticsearch_client_key",
                    self.elasticsearch_client_key.is_some(),
                ),
            ] {
                if set {
                    return bad(key, "is set but no elasticsearch_url is");
                }
            }
            if self.data_dir.as_os_str().is_empty() {
                return bad(
                    "data_dir",
                    "must not be empty when no elasticsearch_url is set",
                );
            }
        }
        if !self.index_prefix.is_empty()
            && !self
                .index_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return bad(
                "index_prefix",
                "may hold only lowercase letters, digits, `-` and `_` (Elasticsearch index names)",
            );
        }
        if self.password.is_some() != self.username.is_some() {
            return bad("username", "username and password must be set together");
        }
        if self.api_key.is_some() && self.username.is_some() {
            return bad(
                "api_key",
                "set either api_key or username/password, not both",
            );
        }
        if self.bulk_max_bytes < 1024 {
            return bad("bulk_max_bytes", "must be at least 1024");
        }
        if self.bulk_max_docs == 0 {
            return bad("bulk_max_docs", "must be at least 1");
        }
        if self.max_dictionary_entries == 0 {
            return bad("max_dictionary_entries", "must be at least 1");
        }
        if self.max_resources == 0 {
            return bad("max_resources", "must be at least 1");
        }
        if self.max_names == 0 {
            return bad("max_names", "must be at least 1");
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let err = StoreConfig::elasticsearch("localhost:9200")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`elasticsearch_url`"), "{err}");
        let err = StoreConfig::default()
            .with_index_prefix("Bad")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`index_prefix`"), "{err}");
        assert!(StoreConfig::default().validate().is_ok());
    }

    #[test]
    fn tls_settings_need_an_https_url_and_come_in_pairs() {
        let mut c = StoreConfig::elasticsearch("https://search.example:9200");
        c.elasticsearch_ca = Some("ca.pem".into());
        c.validate().unwrap();
        c.elasticsearch_client_cert = Some("client.pem".into());
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("`elasticsearch_client_cert`"),
            "{err}"
        );
        c.elasticsearch_client_key = Some("client.key".into());
        c.validate().unwrap();
        c.elasticsearch_url = Some("http://search.example:9200".into());
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("`elasticsearch_ca`"), "{err}");
        assert!(err.to_string().contains("not https://"), "{err}");
    }

    #[test]
    fn tls_settings_without_an_elasticsearch_url_are_refused() {
        for key in [
            "elasticsearch_ca",
            "elasticsearch_client_cert",
            "elasticsearch_client_key",
        ] {
            let mut c = StoreConfig::embedded("/var/lib/dlog/store");
            let file = Some(PathBuf::from("file.pem"));
            match key {
                "elasticsearch_ca" => c.elasticsearch_ca = file,
                "elasticsearch_client_cert" => c.elasticsearch_client_cert = file,
                _ => c.elasticsearch_client_key = file,
            }
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{err}");
            assert!(err.contains("no elasticsearch_url"), "{err}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let err = toml::from_str::<StoreConfig>("elasticsearch_urll = 'x'").unwrap_err();
        assert!(err.to_string().contains("elasticsearch_urll"), "{err}");
        let ok: StoreConfig = toml::from_str("data_dir = '/tmp/x'").unwrap();
        assert_eq!(ok.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(ok.bulk_max_docs, DEFAULT_BULK_MAX_DOCS);
    }
}
