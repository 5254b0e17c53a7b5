//! The rules file: which rules run and with what thresholds.
//!
//! TOML, one table per rule; every key has a default that matches the old system, so an empty
//! file (or no file) runs every rule with its defaults. Unknown keys are errors, and
//! [`RulesConfig::from_file`] validates the values and names the file, key and reason of the
//! first problem. `docs/alerting.md` documents every key; `config/alerting/rules.toml` is a
//! complete example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alert::{rule, Severity};

/// Every rule's settings. Read it with [`RulesConfig::from_file`] or
/// [`RulesConfig::from_toml`], which start from [`RulesConfig::default`] (every rule on, the
/// old system's thresholds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesConfig {
    /// Settings every rule shares: cooldown, example traces, bounds.
    pub defaults: Defaults,
    /// Rule 1: ERROR (and FATAL) log records.
    pub error_log: LogLevelRule,
    /// Rule 1: WARN log records.
    pub warn_log: LogLevelRule,
    /// Rule 2: records whose `response_time_ms` exceeds their `threshold_limit_ms`.
    pub slow_response: SlowResponseRule,
    /// Rule 2: span-duration percentile over a sliding window.
    pub span_latency: SpanLatencyRule,
    /// Rule 3: failed calls (`log_service_call` failures, client spans with error status).
    pub failed_call: FailedCallRule,
    /// Rule 4: heartbeat silence.
    pub heartbeat: HeartbeatRule,
    /// Rule 5: failure ratio over a sliding window.
    pub error_rate: ErrorRateRule,
    /// Rule 6: grouping dependents' failures under the probable root cause.
    pub root_cause: RootCauseRule,
    /// Rule 7: calls to services the caller did not declare.
    pub dependency_drift: DriftRule,
}

/// Settings shared by every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// An event alert (error log, failed call, ...) resolves after this many seconds without
    /// a repeat; repeats within it are folded into the firing alert. Default 300.
    pub cooldown_secs: u64,
    /// Most example trace ids kept per alert. Default 5.
    pub max_example_traces: usize,
    /// Most alerts firing at once; new ones beyond it are dropped and counted. Default 10000.
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

/// Rule 1: log records at some levels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLevelRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Levels (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) that raise this alert.
    pub levels: Vec<String>,
    /// Severity of the alert.
    pub severity: Severity,
    /// Overrides `defaults.cooldown_secs` for this rule.
    pub cooldown_secs: Option<u64>,
}

impl LogLevelRule {
    fn error_default() -> Self {
        LogLevelRule {
            enabled: true,
            levels: vec!["ERROR".into(), "FATAL".into()],
            severity: Severity::Critical,
            cooldown_secs: None,
        }
    }

    fn warn_default() -> Self {
        LogLevelRule {
            enabled: true,
            levels: vec!["WARN".into()],
            severity: Severity::Warning,
            cooldown_secs: None,
        }
    }
}

/// Rule 2: `response_time_ms` above `threshold_limit_ms` on a log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowResponseRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Severity of the alert. Default warning.
    pub severity: Severity,
    /// Overrides `defaults.cooldown_secs` for this rule.
    pub cooldown_secs: Option<u64>,
}

impl Default for SlowResponseRule {
    fn default() -> Self {
        SlowResponseRule {
            enabled: true,
            severity: Severity::Warning,
            cooldown_secs: None,
        }
    }
}

/// What a latency window is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyGrouping {
    /// One window per service.
    Service,
    /// One window per service and operation (span name).
    Operation,
}

/// Rule 2: span-duration percentile over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanLatencyRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// The duration the percentile must not exceed, ms. Default 1000.
    pub threshold_ms: f64,
    /// Which percentile, (0, 100). Default 95.
    pub percentile: f64,
    /// Length of the sliding window, s. Default 60.
    pub window_secs: u64,
    /// Bucket length of the window, s (its time resolution). Default 5.
    pub bucket_secs: u64,
    /// Fewest spans in the window before the rule judges it. Default 10.
    pub min_samples: u64,
    /// `service` or `operation`. Default `operation`.
    pub group_by: LatencyGrouping,
    /// Span kinds counted (`server`, `client`, `internal`, `producer`, `consumer`,
    /// `unspecified`). Empty: all. Default empty.
    pub span_kinds: Vec<String>,
    /// Severity of the alert. Default warning.
    pub severity: Severity,
    /// Most windows kept (services or operations); spans of further keys are not judged,
    /// and counted. Default 10000.
    pub max_keys: usize,
    /// Per-service or per-operation thresholds, first match wins.
    pub overrides: Vec<LatencyOverride>,
}

impl Default for SpanLatencyRule {
    fn default() -> Self {
        SpanLatencyRule {
            enabled: true,
            threshold_ms: 1000.0,
            percentile: 95.0,
            window_secs: 60,
            bucket_secs: 5,
            min_samples: 10,
            group_by: LatencyGrouping::Operation,
            span_kinds: Vec::new(),
            severity: Severity::Warning,
            max_keys: 10_000,
            overrides: Vec::new(),
        }
    }
}

/// A threshold for one service, or one operation of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyOverride {
    /// The service.
    pub service: String,
    /// The operation (span name); unset: every operation of the service.
    #[serde(default)]
    pub operation: Option<String>,
    /// Threshold for it, ms.
    pub threshold_ms: f64,
}

impl SpanLatencyRule {
    /// The threshold for a service and operation, ms.
    pub fn threshold_for(&self, service: &str, operation: Option<&str>) -> f64 {
        self.overrides
            .iter()
            .find(|o| {
                o.service == service
                    && match (&o.operation, operation) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want == got,
                        (Some(_), None) => false,
                    }
            })
            .map_or(self.threshold_ms, |o| o.threshold_ms)
    }
}

/// Rule 3: failed calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedCallRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Severity of the alert. Default warning.
    pub severity: Severity,
    /// Count client spans with error status (besides `service.call` records). Default true.
    pub client_spans: bool,
    /// Overrides `defaults.cooldown_secs` for this rule.
    pub cooldown_secs: Option<u64>,
}

impl Default for FailedCallRule {
    fn default() -> Self {
        FailedCallRule {
            enabled: true,
            severity: Severity::Warning,
            client_spans: true,
            cooldown_secs: None,
        }
    }
}

/// Rule 4: heartbeat silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Interval assumed for instances that do not announce `heartbeat.interval_ms`, ms.
    /// Default 10000.
    pub default_interval_ms: u64,
    /// "Delayed" after more than this many intervals of silence. Default 2 (20 s).
    pub delayed_after_intervals: f64,
    /// "Down" after more than this many intervals of silence. Default 3 (30 s).
    pub down_after_intervals: f64,
    /// Severity of "delayed". Default warning.
    pub delayed_severity: Severity,
    /// Severity of "down". Default critical.
    pub down_severity: Severity,
    /// An instance silent this long is no longer tracked (its alerts resolve, labelled
    /// `reason=forgotten`), s. 0: never. Default 86400.
    pub forget_after_secs: u64,
    /// Most instances tracked; heartbeats of further instances are counted and ignored.
    /// Default 10000.
    pub max_instances: usize,
    /// A heartbeat older than this (by its own timestamp) does not start tracking an instance
    /// not tracked yet, so that reading a topic's history on first start does not raise
    /// "down" for instances that went away long ago, s. 0: no limit. Default 300.
    pub stale_after_secs: u64,
}

impl Default for HeartbeatRule {
    fn default() -> Self {
        HeartbeatRule {
            enabled: true,
            default_interval_ms: 10_000,
            delayed_after_intervals: 2.0,
            down_after_intervals: 3.0,
            delayed_severity: Severity::Warning,
            down_severity: Severity::Critical,
            forget_after_secs: 86_400,
            max_instances: 10_000,
            stale_after_secs: 300,
        }
    }
}

/// What the error-rate rule counts for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateInput {
    /// Requests it served: its server and consumer spans, and its root spans.
    ServerSpans,
    /// Calls it made, traced: its client spans.
    ClientSpans,
    /// Calls it made, logged: `service.call` records with it as `call.source`.
    ServiceCalls,
}

/// Rule 5: failure ratio over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Fires when more than this percent failed. Default 5.
    pub threshold_percent: f64,
    /// Length of the sliding window, s. Default 60.
    pub window_secs: u64,
    /// Bucket length of the window, s. Default 5.
    pub bucket_secs: u64,
    /// Fewest outcomes in the window before the rule judges it. Default 20.
    pub min_samples: u64,
    /// What counts as the service's calls and requests. Default all three.
    pub count: Vec<RateInput>,
    /// Severity of the alert. Default critical.
    pub severity: Severity,
    /// Most services tracked. Default 10000.
    pub max_services: usize,
}

impl Default for ErrorRateRule {
    fn default() -> Self {
        ErrorRateRule {
            enabled: true,
            threshold_percent: 5.0,
            window_secs: 60,
            bucket_secs: 5,
            min_samples: 20,
            count: vec![
                RateInput::ServerSpans,
                RateInput::ClientSpans,
                RateInput::ServiceCalls,
            ],
            severity: Severity::Critical,
            max_services: 10_000,
        }
    }
}

/// Rule 6: root cause grouping.
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

/// Rule 7: dependency drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Severity of the alert. Default info.
    pub severity: Severity,
    /// Also judge services that declared no dependencies at all (every call they make is
    /// drift). Off by default, because a service without the attribute cannot be told apart
    /// from one that declares none.
    pub check_undeclared_services: bool,
    /// Services whose calls are never drift (e.g. shared infrastructure).
    pub ignore_targets: Vec<String>,
}

impl Default for DriftRule {
    fn default() -> Self {
        DriftRule {
            enabled: true,
            severity: Severity::Info,
            check_undeclared_services: false,
            ignore_targets: Vec::new(),
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

const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
const SPAN_KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            defaults: Defaults::default(),
            error_log: LogLevelRule::error_default(),
            warn_log: LogLevelRule::warn_default(),
            slow_response: SlowResponseRule::default(),
            span_latency: SpanLatencyRule::default(),
            failed_call: FailedCallRule::default(),
            heartbeat: HeartbeatRule::default(),
            error_rate: ErrorRateRule::default(),
            root_cause: RootCauseRule::default(),
            dependency_drift: DriftRule::default(),
        }
    }
}

impl RulesConfig {
    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, RulesError> {
        // Start from the defaults, so `[warn_log]` absent keeps WARN; a present table
        // replaces the rule's settings (its own keys default as documented).
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            defaults: Option<Defaults>,
            #[serde(default)]
            error_log: Option<PartialLogRule>,
            #[serde(default)]
            warn_log: Option<PartialLogRule>,
            #[serde(default)]
            slow_response: Option<SlowResponseRule>,
            #[serde(default)]
            span_latency: Option<SpanLatencyRule>,
            #[serde(default)]
            failed_call: Option<FailedCallRule>,
            #[serde(default)]
            heartbeat: Option<HeartbeatRule>,
            #[serde(default)]
            error_rate: Option<ErrorRateRule>,
            #[serde(default)]
            root_cause: Option<RootCauseRule>,
            #[serde(default)]
            dependency_drift: Option<DriftRule>,
        }
        let raw: Raw = toml::from_str(text).map_err(|e| RulesError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = RulesConfig::default();
        let config = RulesConfig {
            defaults: raw.defaults.unwrap_or(base.defaults),
            error_log: raw
                .error_log
                .map_or(base.error_log.clone(), |p| p.over(&base.error_log)),
            warn_log: raw
                .warn_log
                .map_or(base.warn_log.clone(), |p| p.over(&base.warn_log)),
            slow_response: raw.slow_response.unwrap_or(base.slow_response),
            span_latency: raw.span_latency.unwrap_or(base.span_latency),
            failed_call: raw.failed_call.unwrap_or(base.failed_call),
            heartbeat: raw.heartbeat.unwrap_or(base.heartbeat),
            error_rate: raw.error_rate.unwrap_or(base.error_rate),
            root_cause: raw.root_cause.unwrap_or(base.root_cause),
            dependency_drift: raw.dependency_drift.unwrap_or(base.dependency_drift),
        };
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
        let bad = |key: &str, reason: String| RulesError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        if self.defaults.max_active_alerts == 0 {
            return Err(bad(
                "defaults.max_active_alerts",
                "must be at least 1".into(),
            ));
        }
        for (name, r) in [("error_log", &self.error_log), ("warn_log", &self.warn_log)] {
            for level in &r.levels {
                if !LEVELS.contains(&level.to_ascii_uppercase().as_str()) {
                    return Err(bad(
                        &format!("{name}.levels"),
                        format!(
                            "unknown level `{level}` (expected one of {})",
                            LEVELS.join(", ")
                        ),
                    ));
                }
            }
            if r.enabled && r.levels.is_empty() {
                return Err(bad(
                    &format!("{name}.levels"),
                    "is empty; set `enabled = false` to turn the rule off".into(),
                ));
            }
        }
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
            return Err(bad(
                "warn_log.levels",
                format!(
                    "{} also in `error_log.levels`; a level belongs to one rule",
                    overlap.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let l = &self.span_latency;
        if !(l.threshold_ms.is_finite() && l.threshold_ms > 0.0) {
            return Err(bad(
                "span_latency.threshold_ms",
                format!("{} is not a positive number", l.threshold_ms),
            ));
        }
        if !(l.percentile > 0.0 && l.percentile < 100.0) {
            return Err(bad(
                "span_latency.percentile",
                format!("{} is not in (0, 100)", l.percentile),
            ));
        }
        window(path, "span_latency", l.window_secs, l.bucket_secs)?;
        for kind in &l.span_kinds {
            if !SPAN_KINDS.contains(&kind.as_str()) {
                return Err(bad(
                    "span_latency.span_kinds",
                    format!(
                        "unknown span kind `{kind}` (expected one of {})",
                        SPAN_KINDS.join(", ")
                    ),
                ));
            }
        }
        if l.max_keys == 0 {
            return Err(bad("span_latency.max_keys", "must be at least 1".into()));
        }
        for (i, o) in l.overrides.iter().enumerate() {
            if !(o.threshold_ms.is_finite() && o.threshold_ms > 0.0) {
                return Err(bad(
                    &format!("span_latency.overrides[{i}].threshold_ms"),
                    format!("{} is not a positive number", o.threshold_ms),
                ));
            }
            if o.service.is_empty() {
                return Err(bad(
                    &format!("span_latency.overrides[{i}].service"),
                    "is empty".into(),
                ));
            }
        }
        let h = &self.heartbeat;
        if h.default_interval_ms == 0 {
            return Err(bad(
                "heartbeat.default_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if !(h.delayed_after_intervals.is_finite() && h.delayed_after_intervals > 0.0) {
            return Err(bad(
                "heartbeat.delayed_after_intervals",
                "must be a positive number".into(),
            ));
        }
        if !(h.down_after_intervals.is_finite()
            && h.down_after_intervals > h.delayed_after_intervals)
        {
            return Err(bad(
                "heartbeat.down_after_intervals",
                format!(
                    "{} must be greater than delayed_after_intervals ({})",
                    h.down_after_intervals, h.delayed_after_intervals
                ),
            ));
        }
        if h.max_instances == 0 {
            return Err(bad("heartbeat.max_instances", "must be at least 1".into()));
        }
        let r = &self.error_rate;
        if !(r.threshold_percent.is_finite()
            && r.threshold_percent >= 0.0
            && r.threshold_percent < 100.0)
        {
            return Err(bad(
                "error_rate.threshold_percent",
                format!("{} is not in [0, 100)", r.threshold_percent),
            ));
        }
        window(path, "error_rate", r.window_secs, r.bucket_secs)?;
        if r.enabled && r.count.is_empty() {
            return Err(bad(
                "error_rate.count",
                "is empty; set `enabled = false` to turn the rule off".into(),
            ));
        }
        if r.min_samples == 0 {
            return Err(bad("error_rate.min_samples", "must be at least 1".into()));
        }
        if r.max_services == 0 {
            return Err(bad("error_rate.max_services", "must be at least 1".into()));
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
                return Err(bad(
                    "root_cause.root_rules",
                    format!(
                        "`{name}` cannot mark a service down or failing (expected heartbeat_down, heartbeat_delayed, error_rate or span_latency)"
                    ),
                ));
            }
        }
        if c.window_secs == 0 {
            return Err(bad("root_cause.window_secs", "must be at least 1".into()));
        }
        if c.max_edges == 0 || c.span_cache == 0 {
            return Err(bad(
                if c.max_edges == 0 {
                    "root_cause.max_edges"
                } else {
                    "root_cause.span_cache"
                },
                "must be at least 1".into(),
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

fn window(
    path: &Path,
    rule_name: &str,
    window_secs: u64,
    bucket_secs: u64,
) -> Result<(), RulesError> {
    let bad = |key: &str, reason: String| RulesError::Invalid {
        path: path.to_path_buf(),
        key: format!("{rule_name}.{key}"),
        reason,
    };
    if bucket_secs == 0 {
        return Err(bad("bucket_secs", "must be at least 1".into()));
    }
    if window_secs < bucket_secs {
        return Err(bad(
            "window_secs",
            format!("{window_secs} is shorter than bucket_secs ({bucket_secs})"),
        ));
    }
    if window_secs / bucket_secs > 3600 {
        return Err(bad(
            "bucket_secs",
            format!("{window_secs} s / {bucket_secs} s is more than 3600 buckets per window"),
        ));
    }
    Ok(())
}

/// `[error_log]` / `[warn_log]` as written: unset keys keep the rule's default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLogRule {
    enabled: Option<bool>,
    levels: Option<Vec<String>>,
    severity: Option<Severity>,
    cooldown_secs: Option<u64>,
}

impl PartialLogRule {
    fn over(self, base: &LogLevelRule) -> LogLevelRule {
        LogLevelRule {
            enabled: self.enabled.unwrap_or(base.enabled),
            levels: self.levels.unwrap_or_else(|| base.levels.clone()),
            severity: self.severity.unwrap_or(base.severity),
            cooldown_secs: self.cooldown_secs.or(base.cooldown_secs),
        }
    }
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
