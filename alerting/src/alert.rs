//! Alerts and their state changes.
//!
//! An alert is identified by its rule and a rule-specific key (`svc-a|E500`, an instance id,
//! a caller → callee edge). Its id is a stable hash of both, so the same ongoing condition
//! always carries the same id, in every output and across restarts.

use std::collections::BTreeMap;
use std::fmt;

use dlog_proto::alert::v1 as proto;
use serde::{Deserialize, Serialize};

/// The rule names, as they appear in alerts and in the rules file.
pub mod rule {
    /// An ERROR (or FATAL) log record.
    pub const ERROR_LOG: &str = "error_log";
    /// A WARN log record.
    pub const WARN_LOG: &str = "warn_log";
    /// A record whose `response_time_ms` exceeds its `threshold_limit_ms`.
    pub const SLOW_RESPONSE: &str = "slow_response";
    /// A span-duration percentile above its threshold over a sliding window.
    pub const SPAN_LATENCY: &str = "span_latency";
    /// A failed `log_service_call` or a client span with error status.
    pub const FAILED_CALL: &str = "failed_call";
    /// An instance silent for more than `delayed_after_intervals` heartbeat intervals.
    pub const HEARTBEAT_DELAYED: &str = "heartbeat_delayed";
    /// An instance silent for more than `down_after_intervals` heartbeat intervals.
    pub const HEARTBEAT_DOWN: &str = "heartbeat_down";
    /// A service's failure ratio above its threshold over a sliding window.
    pub const ERROR_RATE: &str = "error_rate";
    /// Dependents' failures grouped under the service that is the probable root cause.
    pub const INCIDENT: &str = "incident";
    /// A call edge to a service the caller did not declare as a dependency.
    pub const DEPENDENCY_DRIFT: &str = "dependency_drift";
    /// A service that still heartbeats but stopped sending spans and logs.
    pub const TRAFFIC_STOPPED: &str = "traffic_stopped";

    /// Every rule name.
    pub const ALL: [&str; 11] = [
        ERROR_LOG,
        WARN_LOG,
        SLOW_RESPONSE,
        SPAN_LATENCY,
        FAILED_CALL,
        HEARTBEAT_DELAYED,
        HEARTBEAT_DOWN,
        ERROR_RATE,
        INCIDENT,
        DEPENDENCY_DRIFT,
        TRAFFIC_STOPPED,
    ];
}

/// How urgent an alert is. Ordered: `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record (dependency drift).
    Info,
    /// Look at it soon.
    Warning,
    /// Page someone.
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The protobuf enum.
    pub fn to_proto(self) -> proto::Severity {
        match self {
            Severity::Info => proto::Severity::Info,
            Severity::Warning => proto::Severity::Warning,
            Severity::Critical => proto::Severity::Critical,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Firing, then resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds.
    Firing,
    /// The condition ended.
    Resolved,
}

impl AlertState {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    /// The protobuf enum.
    pub fn to_proto(self) -> proto::AlertState {
        match self {
            AlertState::Firing => proto::AlertState::Firing,
            AlertState::Resolved => proto::AlertState::Resolved,
        }
    }
}

/// One alert, as every output sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id: a hash of `rule` and `key`.
    pub id: String,
    /// The rule that raised it (see [`rule`]).
    pub rule: String,
    /// What the rule keys the condition by, e.g. `svc-a|E500` or `svc-a->svc-b`.
    pub key: String,
    /// How urgent.
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// The service the alert is about.
    pub service: String,
    /// The service instance, for per-instance rules (heartbeats).
    pub instance: Option<String>,
    /// One line a person can act on.
    pub summary: String,
    /// First occurrence, ns since the Unix epoch.
    pub first_seen_unix_nano: u64,
    /// Last occurrence, ns since the Unix epoch.
    pub last_seen_unix_nano: u64,
    /// How many times the condition was seen.
    pub occurrences: u64,
    /// A few trace ids (lowercase hex) of requests that showed the condition.
    pub example_trace_ids: Vec<String>,
    /// The service named as the probable root cause, when grouped into an incident.
    pub root_cause: Option<String>,
    /// The incident this alert belongs to, when grouped.
    pub incident_id: Option<String>,
    /// Rule-specific details (error code, target service, p95, threshold, ...).
    pub labels: BTreeMap<String, String>,
    /// Number of events emitted for this id so far, this one included.
    pub revision: u64,
}

impl Alert {
    /// The protobuf event written to the `alerts` topic.
    pub fn to_event(&self) -> proto::AlertEvent {
        proto::AlertEvent {
            id: self.id.clone(),
            rule: self.rule.clone(),
            severity: self.severity.to_proto() as i32,
            state: self.state.to_proto() as i32,
            service: self.service.clone(),
            instance: self.instance.clone().unwrap_or_default(),
            summary: self.summary.clone(),
            first_seen_unix_nano: self.first_seen_unix_nano,
            last_seen_unix_nano: self.last_seen_unix_nano,
            occurrences: self.occurrences,
            example_trace_ids: self.example_trace_ids.clone(),
            root_cause: self.root_cause.clone().unwrap_or_default(),
            incident_id: self.incident_id.clone().unwrap_or_default(),
            labels: self.labels.clone().into_iter().collect(),
            revision: self.revision,
        }
    }
}

/// The stable id of the alert `rule` raises for `key`: 32 hex digits.
pub fn alert_id(rule: &str, key: &str) -> String {
    let mut bytes = Vec::with_capacity(rule.len() + key.len() + 1);
    bytes.extend_from_slice(rule.as_bytes());
    bytes.push(0x1f);
    bytes.extend_from_slice(key.as_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    /// It started firing.
    Fired,
    /// It is still firing, with more occurrences or a new incident / root cause.
    Updated,
    /// It resolved.
    Resolved,
}

impl TransitionKind {
    /// `fired`, `updated` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Fired => "fired",
            TransitionKind::Updated => "updated",
            TransitionKind::Resolved => "resolved",
        }
    }
}

/// A state change of one alert, with the alert as it is after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// What happened.
    pub kind: TransitionKind,
    /// The alert after the change.
    pub alert: Alert,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinguish_rule_and_key() {
        let a = alert_id(rule::ERROR_LOG, "svc|E1");
        assert_eq!(a, alert_id(rule::ERROR_LOG, "svc|E1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id(rule::WARN_LOG, "svc|E1"));
        assert_ne!(a, alert_id(rule::ERROR_LOG, "svc|E2"));
        // The separator keeps `ab` + `c` apart from `a` + `bc`.
        assert_ne!(alert_id("ab", "c"), alert_id("a", "bc"));
    }

    #[test]
    fn severities_are_ordered() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
    }
}
