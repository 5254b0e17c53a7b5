//! `[outputs.webhook]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dlog_core::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::config::Filter;

/// Default `timeout_ms`: one request.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default `backoff_initial_ms`.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 200;
/// Default `backoff_max_ms`.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 5_000;
/// Default `queue` (best effort only).
pub const DEFAULT_QUEUE: usize = 1_000;

/// `[outputs.webhook]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// POST alerts to `url`. Default false.
    pub enabled: bool,
    /// The endpoint, `http://HOST:PORT/PATH` or `https://HOST:PORT/PATH` (TLS through rustls;
    /// the endpoint's certificate must chain to the Mozilla root set or to `ca_file`).
    pub url: String,
    /// PEM file of CA certificates trusted for an `https://` endpoint, next to the Mozilla
    /// root set built in (webpki-roots). Default: none.
    pub ca_file: Option<PathBuf>,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// Timeout of one request, ms. Default 5000.
    pub timeout_ms: u64,
    /// Attempts per alert (connection errors, 408, 429 and 5xx are retried). Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry, ms; doubles per attempt (a `Retry-After` header wins).
    /// Default 200.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts, ms. Default 5000.
    pub backoff_max_ms: u64,
    /// When true, offsets wait until the webhook accepted the alert (and the stage retries
    /// without end); when false, an alert the webhook still refuses after `max_attempts` is
    /// dropped for it and counted, and the other outputs never wait for it. Default false.
    pub required: bool,
    /// Alerts queued for the webhook while it is slow (best effort only); beyond it they are
    /// dropped and counted. Default 1000.
    pub queue: usize,
    /// Alerts below this severity are not sent here. Default info.
    pub min_severity: Severity,
    /// Also send updates of firing alerts (more occurrences, grouped into an incident), not
    /// only when they fire and resolve. Default false.
    pub updates: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            enabled: false,
            url: String::new(),
            ca_file: None,
            headers: BTreeMap::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            required: false,
            queue: DEFAULT_QUEUE,
            min_severity: Severity::Info,
            updates: false,
        }
    }
}

impl WebhookConfig {
    /// Which alerts this output gets.
    pub fn filter(&self) -> Filter {
        Filter {
            min_severity: self.min_severity,
            updates: self.updates,
        }
    }

    /// Checks the settings; `key` is the section's dotted name.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |k: &str, reason: String| ConfigError::invalid(format!("{key}.{k}"), reason);
        match reqwest::Url::parse(&self.url) {
            Ok(url) if url.scheme() == "https" => {}
            Ok(url) if url.scheme() == "http" => {
                if self.ca_file.is_some() {
                    return Err(bad("ca_file", "is set but the url is not https://".into()));
                }
            }
            Ok(url) => {
                return Err(bad(
                    "url",
                    format!("scheme `{}` is not supported (http or https)", url.scheme()),
                ))
            }
            // The URL may hold a token: say why, not what.
            Err(e) => return Err(bad("url", format!("is not a valid URL: {e}"))),
        }
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(bad("timeout_ms", "must be at least 1".into()));
        }
        if self.queue == 0 {
            return Err(bad("queue", "must be at least 1".into()));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad(
                    &format!("headers.{name}"),
                    "is not a valid header name".into(),
                ));
            }
        }
        Ok(())
    }
}
