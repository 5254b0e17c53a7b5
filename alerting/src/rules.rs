//! The rules file: which rules run and with what thresholds.
//!
//! TOML, one table per rule; every key has a default that matches the old system, so an empty
//! file (or no file) runs every rule with its defaults. Unknown keys are errors, and
//! [`RulesConfig::from_file`] validates the values and names the file, key and reason of the
//! first problem. `docs/alerting.md` documents every key; `config/alerting/rules.toml` is a
//! complete example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::alert::{rule, Severity};
use crate::engine::rules::WrittenRules;

pub use crate::engine::rules::dependency_drift::DriftRule;
pub use crate::engine::rules::error_rate::{ErrorRateRule, RateInput};
pub use crate::engine::rules::failed_call::FailedCallRule;
pub use crate::engine::rules::heartbeat::HeartbeatRule;
pub use crate::engine::rules::log_level::LogLevelRule;
pub use crate::engine::rules::slow_response::SlowResponseRule;
pub use crate::engine::rules::span_latency::{LatencyGrouping, LatencyOverride, SpanLatencyRule};
pub use crate::engine::rules::traffic_stopped::TrafficStoppedRule;
pub use crate::engine::rules::RulesConfig;

/// Settings shared by every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// An event alert (error log, failed call, ...) resolves after this many seconds without
    /// a repeat; repeats within it are folded into the firing alert. Default 300.
    pub cooldown_secs: u64,
    /// Most example trace ids kept per alert. Default 5.
    pub max_example_traces: usize,
    /// Most alerts firing at once; new ones beyond it are dropped and counted. Dependency
    /// drift and heartbeat alerts do not count: their rules bound them. Default 10000.
    pub max_active_alerts: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            cooldown_secs: 300,
            max_example_traces: 5,
            max_active_alerts: 10_000,
        }
    }
}

/// `[root_cause]`: grouping dependents' failures under the probable root cause (rule 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootCauseRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Firing alerts of these rules make their service "down or failing".
    /// Default `heartbeat_down`, `error_rate`.
    pub root_rules: Vec<String>,
    /// A service into which calls from at least this many distinct callers failed within
    /// `window_secs` is "failing" too. 0 turns this off, and also the `failing_dependent`
    /// cause (a failing caller whose failures are its calls into the service). Default 2.
    pub min_failing_callers: usize,
    /// How far back failed calls count, s; an incident resolves once its root is healthy
    /// and nothing was grouped into it for this long. Default 60.
    pub window_secs: u64,
    /// Severity of the incident. Default critical.
    pub severity: Severity,
    /// Most call edges remembered (observed dependencies, recent failures), and most
    /// services whose recent failures are tallied. Default 10000.
    pub max_edges: usize,
    /// Most client spans remembered to match a callee's server span to its caller.
    /// Default 65536.
    pub span_cache: usize,
}

impl Default for RootCauseRule {
    fn default() -> Self {
        RootCauseRule {
            enabled: true,
            root_rules: vec![rule::HEARTBEAT_DOWN.into(), rule::ERROR_RATE.into()],
            min_failing_callers: 2,
            window_secs: 60,
            severity: Severity::Critical,
            max_edges: 10_000,
            span_cache: 65_536,
        }
    }
}

/// A rules file could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for the rules (unknown key, wrong type).
    #[error("invalid rules file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error, naming the key and line.
        message: String,
    },
    /// A key has a value the engine cannot run with.
    #[error("invalid rules file {path}: key `{key}`: {reason}")]
    Invalid {
        /// The file (`<built-in>` for rules built in code).
        path: PathBuf,
        /// The key, dotted as in the file.
        key: String,
        /// Why.
        reason: String,
    },
}

/// How one section of the rules file is read and checked.
pub(crate) trait Section: Sized {
    /// The table as written; unset keys take their defaults.
    type Written: DeserializeOwned;

    /// The settings a written table makes, over the section's defaults `base`.
    fn over(written: Self::Written, base: &Self) -> Self;

    /// Checks the values, naming the key (`section.key`) and the reason of the first problem.
    fn validate(&self, section: &str) -> Result<(), Invalid>;
}

/// A key with a value the engine cannot run with.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// The key, dotted as in the file.
    pub(crate) key: String,
    /// Why.
    pub(crate) reason: String,
}

impl Invalid {
    /// `section.key` is invalid because `reason`.
    pub(crate) fn new(section: &str, key: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            key: format!("{section}.{key}"),
            reason: reason.into(),
        }
    }
}

/// The log levels a rule can name.
pub(crate) const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
/// The span kinds a rule can name.
pub(crate) const SPAN_KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
/// Most buckets in one sliding window.
pub(crate) const MAX_WINDOW_BUCKETS: u64 = 3600;

impl RulesConfig {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, RulesError> {
        // Start from the defaults, so `[warn_log]` absent keeps WARN; a present table
        // replaces the rule's settings (its own keys default as documented).
        let written: WrittenRules = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config = written.over_defaults();
        config.validate_at(path)?;
        Ok(config)
    }

    /// Reads and validates a rules file.
    pub fn from_file(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks every value, naming the key and the reason of the first problem.
    pub fn validate(&self) -> Result<(), RulesError> {
        self.validate_at(Path::new("<built-in>"))
    }

    fn validate_at(&self, path: &Path) -> Result<(), RulesError> {
        self.validate_all()
            .map_err(|Invalid { key, reason }| RulesError::Invalid {
                path: path.to_path_buf(),
                key,
                reason,
            })
    }

    fn validate_all(&self) -> Result<(), Invalid> {
        if self.defaults.max_active_alerts == 0 {
            return Err(Invalid::new(
                "defaults",
                "max_active_alerts",
                "must be at least 1",
            ));
        }
        self.validate_sections()?;
        let overlap: BTreeSet<String> = self
            .error_log
            .levels
            .iter()
            .map(|l| l.to_ascii_uppercase())
            .filter(|l| {
                self.warn_log
                    .levels
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(l))
            })
            .collect();
        if self.error_log.enabled && self.warn_log.enabled && !overlap.is_empty() {
            return Err(Invalid::new(
                "warn_log",
                "levels",
                format!(
                    "{} also in `error_log.levels`; a level belongs to one rule",
                    overlap.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let c = &self.root_cause;
        for name in &c.root_rules {
            if ![
                rule::HEARTBEAT_DOWN,
                rule::HEARTBEAT_DELAYED,
                rule::ERROR_RATE,
                rule::SPAN_LATENCY,
            ]
            .contains(&name.as_str())
            {
                return Err(Invalid::new(
                    "root_cause",
                    "root_rules",
                    format!(
                        "`{name}` cannot mark a service down or failing (expected heartbeat_down, heartbeat_delayed, error_rate or span_latency)"
                    ),
                ));
            }
        }
        if c.window_secs == 0 {
            return Err(Invalid::new(
                "root_cause",
                "window_secs",
                "must be at least 1",
            ));
        }
        if c.max_edges == 0 {
            return Err(Invalid::new(
                "root_cause",
                "max_edges",
                "must be at least 1",
            ));
        }
        if c.span_cache == 0 {
            return Err(Invalid::new(
                "root_cause",
                "span_cache",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The cooldown of an event rule, ns.
    pub fn cooldown_nanos(&self, rule_name: &str) -> u64 {
        let specific = match rule_name {
            rule::ERROR_LOG => self.error_log.cooldown_secs,
            rule::WARN_LOG => self.warn_log.cooldown_secs,
            rule::SLOW_RESPONSE => self.slow_response.cooldown_secs,
            rule::FAILED_CALL => self.failed_call.cooldown_secs,
            _ => None,
        };
        specific
            .unwrap_or(self.defaults.cooldown_secs)
            .saturating_mul(1_000_000_000)
    }
}

/// Checks a sliding window's `window_secs` and `bucket_secs` in `section`.
pub(crate) fn check_window(
    section: &str,
    window_secs: u64,
    bucket_secs: u64,
) -> Result<(), Invalid> {
    if bucket_secs == 0 {
        return Err(Invalid::new(section, "bucket_secs", "must be at least 1"));
    }
    if window_secs < bucket_secs {
        return Err(Invalid::new(
            section,
            "window_secs",
            format!("{window_secs} is shorter than bucket_secs ({bucket_secs})"),
        ));
    }
    if window_secs / bucket_secs > MAX_WINDOW_BUCKETS {
        return Err(Invalid::new(
            section,
            "bucket_secs",
            format!(
                "{window_secs} s / {bucket_secs} s is more than {MAX_WINDOW_BUCKETS} buckets per window"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RulesConfig, RulesError> {
        RulesConfig::from_toml(text, Path::new("rules.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults_of_the_old_system() {
        let rules = parse("").unwrap();
        assert_eq!(rules, RulesConfig::default());
        assert_eq!(rules.warn_log.levels, vec!["WARN"]);
        assert_eq!(rules.error_log.levels, vec!["ERROR", "FATAL"]);
        assert_eq!(rules.heartbeat.default_interval_ms, 10_000);
        assert_eq!(rules.span_latency.threshold_ms, 1000.0);
        assert_eq!(rules.error_rate.threshold_percent, 5.0);
        assert_eq!(rules.error_rate.window_secs, 60);
        rules.validate().unwrap();
    }

    #[test]
    fn a_table_changes_only_the_keys_it_names() {
        let rules =
            parse("[warn_log]\nseverity = \"info\"\n[heartbeat]\ndefault_interval_ms = 5000\n")
                .unwrap();
        assert_eq!(rules.warn_log.levels, vec!["WARN"]);
        assert_eq!(rules.warn_log.severity, Severity::Info);
        assert_eq!(rules.heartbeat.default_interval_ms, 5_000);
        assert_eq!(rules.heartbeat.down_after_intervals, 3.0);
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let err = parse("[heartbeat]\ndown_after = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules.toml") && err.contains("down_after"),
            "{err}"
        );
        let err = parse("[nope]\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key_and_reason() {
        for (text, key) in [
            (
                "[heartbeat]\ndelayed_after_intervals = 3\ndown_after_intervals = 2",
                "heartbeat.down_after_intervals",
            ),
            (
                "[span_latency]\npercentile = 100",
                "span_latency.percentile",
            ),
            (
                "[span_latency]\nspan_kinds = [\"serverr\"]",
                "span_latency.span_kinds",
            ),
            ("[error_rate]\nbucket_secs = 0", "error_rate.bucket_secs"),
            ("[error_log]\nlevels = [\"ERR\"]", "error_log.levels"),
            ("[warn_log]\nlevels = [\"ERROR\"]", "warn_log.levels"),
            (
                "[root_cause]\nroot_rules = [\"warn_log\"]",
                "root_cause.root_rules",
            ),
            (
                "[[span_latency.overrides]]\nservice = \"a\"\nthreshold_ms = -1",
                "span_latency.overrides[0].threshold_ms",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("rules.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn a_rule_can_be_turned_off() {
        let rules = parse(
            "[error_rate]\nenabled = false\ncount = []\n[warn_log]\nenabled = false\nlevels = []\n",
        )
        .unwrap();
        assert!(!rules.error_rate.enabled && !rules.warn_log.enabled);
    }

    #[test]
    fn overrides_match_service_then_operation() {
        let rules = parse(
            "[[span_latency.overrides]]\nservice = \"b\"\noperation = \"GET /slow\"\nthreshold_ms = 5000\n\
             [[span_latency.overrides]]\nservice = \"b\"\nthreshold_ms = 2000\n",
        )
        .unwrap();
        let l = &rules.span_latency;
        assert_eq!(l.threshold_for("b", Some("GET /slow")), 5000.0);
        assert_eq!(l.threshold_for("b", Some("GET /")), 2000.0);
        assert_eq!(l.threshold_for("b", None), 2000.0);
        assert_eq!(l.threshold_for("a", Some("GET /slow")), 1000.0);
    }

    #[test]
    fn the_example_rules_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/alerting/rules.toml");
        let rules = RulesConfig::from_file(&path).unwrap();
        // It lists every key at its default, so the documentation cannot drift from the code.
        assert_eq!(rules, RulesConfig::default());
    }
}
