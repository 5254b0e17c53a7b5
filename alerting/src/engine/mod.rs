//! The rule engine: records in, alert transitions out, all in memory.
//!
//! [`Engine::process`] evaluates one record against the record-driven rules (log levels,
//! slow responses, failed calls, drift) and feeds the windows and heartbeat trackers;
//! [`Engine::tick`] evaluates the time-driven rules (heartbeat silence, span-latency
//! percentile, error rate), groups failures under their probable root cause, resolves alerts
//! whose condition ended or whose cooldown passed, and reports updates. Time comes from the
//! injected [`Clock`]; nothing here sleeps, does I/O, or spawns.
//!
//! Its whole state is a serializable [`EngineSnapshot`], which the stage persists before it
//! acknowledges input, so a restart resumes every alert, window and tracker as it was.

mod cache;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use dlog_core::model::{Heartbeat, LogEntry, ServiceInfo, ServiceStatus, SpanKind, SpanRecord};
use dlog_core::names;
use serde::{Deserialize, Serialize};

use crate::alert::{alert_id, rule, Alert, AlertState, Severity, Transition, TransitionKind};
use crate::clock::Clock;
use crate::record::Record;
use crate::rules::{LatencyGrouping, RateInput, RulesConfig, RulesError};
use crate::window::{LatencyWindow, RateWindow};

use cache::FifoCache;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MS: u64 = 1_000_000;
/// Version of the snapshot format.
const SNAPSHOT_VERSION: u32 = 1;
/// Longest dependency chain followed when looking for a root cause.
const MAX_ROOT_DEPTH: usize = 16;
/// Most buckets of the per-service failure-mix windows.
const MIX_BUCKETS: u64 = 12;
/// Incident cause: calls into the service failed from `min_failing_callers` callers.
const CAUSE_FAILING_CALLERS: &str = "failing_callers";
/// Incident cause: a failing caller's failures are mostly its failed calls into the service.
const CAUSE_FAILING_DEPENDENT: &str = "failing_dependent";

/// Where a service's own failures in the root-cause window point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lean {
    /// It reported no failure of its own.
    Silent,
    /// At least half of its failure signals are failed calls into its dependencies.
    Down,
    /// Most of its failure signals are its own (failed requests it served).
    Own,
}

/// What a root-cause walk found below a service.
enum Walk {
    /// No down or failing service explains it.
    Nothing,
    /// The probable root cause and why it is down or failing.
    Root(String, String),
    /// Explanations lead back to the walk's path at index `.0`; `.1` are the down or failing
    /// services met on the loop so far.
    Cycle(usize, Vec<String>),
}

/// How an alert ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// Each record is an occurrence; resolves after the cooldown without one.
    Event,
    /// Holds while a condition does; resolved by the rule that raised it.
    Condition,
    /// Groups failures under a root cause; resolves once the root is healthy and quiet.
    Incident,
}

/// An alert that is firing (possibly folded into an incident and not shown on its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Active {
    alert: Alert,
    kind: Kind,
    /// Engine time of the last occurrence, ns.
    last_hit: u64,
    /// Folded into an incident: never emitted on its own.
    suppressed: bool,
    /// Changed since the last emitted event.
    dirty: bool,
    /// The callee a failure was about (failed calls, error logs naming a dependency).
    target: Option<String>,
    /// Incidents: the services whose failures were grouped into it.
    dependents: BTreeSet<String>,
}

/// A service instance tracked by its heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    service: String,
    instance_id: Option<String>,
    /// Engine time of the last heartbeat or registration, ns.
    last_seen: u64,
    interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LatencyEntry {
    window: LatencyWindow,
    /// Recent traces with a span over the threshold.
    examples: VecDeque<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RateEntry {
    window: RateWindow,
    /// Recent traces with a failure.
    examples: VecDeque<String>,
}

/// Everything the engine knows, in a form the stage persists between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    version: u32,
    /// Which rules the windows were built for; windows are dropped when the rules change.
    rules_fingerprint: String,
    /// Last revision handed out.
    seq: u64,
    alerts: BTreeMap<String, Active>,
    instances: BTreeMap<String, Instance>,
    latency: BTreeMap<String, BTreeMap<String, LatencyEntry>>,
    rates: BTreeMap<String, RateEntry>,
    /// Declared dependencies per service, as its resource last announced them.
    declared: BTreeMap<String, Vec<String>>,
    /// Observed call edges: caller → callees.
    observed: BTreeMap<String, BTreeSet<String>>,
    /// Failed calls into a service: callee → caller → engine time of the last failure.
    failures_into: BTreeMap<String, BTreeMap<String, u64>>,
    /// Drift already raised: caller → callees.
    drift_seen: BTreeMap<String, BTreeSet<String>>,
    /// Each service's own failure signals over `root_cause.window_secs`: `total` counts them
    /// all, `failed` those that were failed calls out of it (into a dependency). Says whether
    /// its failures point down (into its dependencies) or are its own.
    #[serde(default)]
    failure_mix: BTreeMap<String, RateWindow>,
}

impl EngineSnapshot {
    /// Number of alerts firing (folded ones included).
    pub fn firing(&self) -> usize {
        self.alerts.len()
    }
}

/// Counters of what the engine did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Spans evaluated.
    pub spans: u64,
    /// Log records evaluated.
    pub logs: u64,
    /// Heartbeats and registrations evaluated.
    pub heartbeats: u64,
    /// New alerts dropped because `defaults.max_active_alerts` were firing.
    pub alerts_dropped: u64,
    /// Windows, instances or edges not kept because their bound was reached.
    pub keys_dropped: u64,
    /// Heartbeats of untracked instances ignored as too old.
    pub stale_heartbeats: u64,
}

/// A client span waiting for its callee's server span.
#[derive(Debug, Clone)]
struct ClientSpan {
    service: String,
}

/// The rule engine. See the module docs.
pub struct Engine {
    rules: RulesConfig,
    clock: Arc<dyn Clock>,
    s: EngineSnapshot,
    /// Heartbeat silence is measured from no earlier than this (the restore time, or the end
    /// of the last input stall the stage reported through [`Engine::note_input_gap`]), so
    /// neither a restart nor a stalled input is mistaken for the services going silent.
    resumed_at: u64,
    /// Firing `dependency_drift` alerts: bounded by `root_cause.max_edges` on their own and
    /// not counted toward `defaults.max_active_alerts`.
    drift_active: usize,
    /// Entries in `drift_seen`.
    drift_count: usize,
    /// Firing alerts of `root_cause.root_rules` per service: alert id → rule.
    root_index: HashMap<String, BTreeMap<String, String>>,
    /// Client spans without `peer.service`, by span id, until their child shows the callee.
    clients: FifoCache<ClientSpan>,
    /// Server spans by parent span id (callee service), until their client span arrives.
    children: FifoCache<String>,
    latency_keys: usize,
    edge_count: usize,
    error_levels: Vec<String>,
    warn_levels: Vec<String>,
    /// Levels of records that are failures (the `error_log` levels, even when that rule is
    /// off), for the failure mix.
    failure_levels: Vec<String>,
    latency_kinds: Vec<SpanKind>,
    stats: EngineStats,
    out: Vec<Transition>,
}

impl Engine {
    /// An engine with no history.
    pub fn new(rules: RulesConfig, clock: Arc<dyn Clock>) -> Result<Engine, RulesError> {
        rules.validate()?;
        let fingerprint = fingerprint(&rules);
        let snapshot = EngineSnapshot {
            version: SNAPSHOT_VERSION,
            rules_fingerprint: fingerprint,
            ..Default::default()
        };
        Ok(Self::build(rules, clock, snapshot, 0))
    }

    /// An engine that resumes from a snapshot taken by [`Engine::snapshot`]. Alerts,
    /// trackers and revisions carry over; windows carry over only when the rules are the
    /// same as when the snapshot was taken.
    pub fn restore(
        rules: RulesConfig,
        clock: Arc<dyn Clock>,
        mut snapshot: EngineSnapshot,
    ) -> Result<Engine, RulesError> {
        rules.validate()?;
        let fingerprint = fingerprint(&rules);
        if snapshot.rules_fingerprint != fingerprint {
            snapshot.latency.clear();
            snapshot.rates.clear();
            snapshot.rules_fingerprint = fingerprint;
        }
        let shape = mix_window(&rules);
        snapshot.failure_mix.retain(|_, w| w.same_shape(&shape));
        snapshot.version = SNAPSHOT_VERSION;
        let resumed_at = clock.now_unix_nanos();
        Ok(Self::build(rules, clock, snapshot, resumed_at))
    }

    fn build(
        rules: RulesConfig,
        clock: Arc<dyn Clock>,
        s: EngineSnapshot,
        resumed_at: u64,
    ) -> Engine {
        let upper = |levels: &[String]| levels.iter().map(|l| l.to_ascii_uppercase()).collect();
        let latency_kinds = rules
            .span_latency
            .span_kinds
            .iter()
            .filter_map(|k| span_kind(k))
            .collect();
        let span_cache = rules.root_cause.span_cache;
        let mut engine = Engine {
            error_levels: if rules.error_log.enabled {
                upper(&rules.error_log.levels)
            } else {
                Vec::new()
            },
            warn_levels: if rules.warn_log.enabled {
                upper(&rules.warn_log.levels)
            } else {
                Vec::new()
            },
            failure_levels: upper(&rules.error_log.levels),
            latency_kinds,
            rules,
            clock,
            resumed_at,
            drift_active: 0,
            drift_count: 0,
            root_index: HashMap::new(),
            clients: FifoCache::new(span_cache),
            children: FifoCache::new(span_cache),
            latency_keys: 0,
            edge_count: 0,
            stats: EngineStats::default(),
            out: Vec::new(),
            s,
        };
        engine.latency_keys = engine.s.latency.values().map(BTreeMap::len).sum();
        engine.edge_count = engine.s.observed.values().map(BTreeSet::len).sum();
        engine.drift_count = engine.s.drift_seen.values().map(BTreeSet::len).sum();
        engine.drift_active = engine
            .s
            .alerts
            .values()
            .filter(|a| a.alert.rule == rule::DEPENDENCY_DRIFT)
            .count();
        let firing: Vec<(String, String, String)> = engine
            .s
            .alerts
            .values()
            .map(|a| {
                (
                    a.alert.service.clone(),
                    a.alert.id.clone(),
                    a.alert.rule.clone(),
                )
            })
            .collect();
        for (service, id, rule_name) in firing {
            engine.index_root(&service, &id, &rule_name, true);
        }
        engine
    }

    /// Tells the engine its input was stalled until `now` (paused for an output outage, a
    /// broker outage, a rebalance): heartbeats may sit unread in the backlog, so heartbeat
    /// silence is measured from no earlier than `now`. Instances already reported stay
    /// reported until a heartbeat arrives.
    pub fn note_input_gap(&mut self, now: u64) {
        self.resumed_at = self.resumed_at.max(now);
    }

    /// The rules this engine runs.
    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    /// A copy of the engine's state, to persist.
    pub fn snapshot(&self) -> EngineSnapshot {
        self.s.clone()
    }

    /// The state, to persist without copying.
    pub fn state(&self) -> &EngineSnapshot {
        &self.s
    }

    /// What the engine counted so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Firing alerts that are shown on their own (not folded into an incident), by id.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.s
            .alerts
            .values()
            .filter(|a| !a.suppressed)
            .map(|a| &a.alert)
    }

    /// Evaluates one record at the clock's current time.
    pub fn process(&mut self, record: &Record) -> Vec<Transition> {
        let now = self.clock.now_unix_nanos();
        self.process_at(record, now)
    }

    /// Evaluates one record at engine time `now`.
    pub fn process_at(&mut self, record: &Record, now: u64) -> Vec<Transition> {
        match record {
            Record::Span(span) => self.span(span, now),
            Record::Log(log) => self.log(log, now),
            Record::Heartbeat(hb) => self.heartbeat(hb, now),
        }
        std::mem::take(&mut self.out)
    }

    /// Evaluates the time-driven rules at `now` and reports what changed since the last call:
    /// heartbeat silence, latency percentiles and error rates, incident grouping, cooldowns,
    /// and updates of firing alerts.
    pub fn tick(&mut self, now: u64) -> Vec<Transition> {
        self.tick_heartbeats(now);
        self.tick_latency(now);
        self.tick_rates(now);
        self.tick_grouping(now);
        self.tick_expiry(now);
        self.flush_updates();
        std::mem::take(&mut self.out)
    }

    // ---------------------------------------------------------------- records

    fn span(&mut self, span: &SpanRecord, now: u64) {
        self.stats.spans += 1;
        self.declare(&span.service, now);
        let service = span.service.name.as_str();
        if self.rules.span_latency.enabled
            && (self.latency_kinds.is_empty() || self.latency_kinds.contains(&span.kind))
        {
            self.record_latency(span, now);
        }
        let served = matches!(span.kind, SpanKind::Server | SpanKind::Consumer)
            || span.parent_span_id.is_none();
        if served && self.counts(RateInput::ServerSpans) {
            self.record_rate(service, now, span.is_error(), &span.trace_id);
        }
        if span.is_error() {
            // A failed call out of the service points down; a failed request it served is
            // its own failure.
            let outbound = span.kind == SpanKind::Client;
            if outbound || served {
                self.note_mix(service, outbound, now);
            }
        }
        if span.kind == SpanKind::Client {
            if self.counts(RateInput::ClientSpans) {
                self.record_rate(service, now, span.is_error(), &span.trace_id);
            }
            let span_id = parse_id(&span.span_id);
            let target: Option<String> = match span.peer_service() {
                Some(peer) if !peer.is_empty() => Some(peer.to_string()),
                _ => span_id.and_then(|id| self.children.remove(id)),
            };
            match &target {
                Some(t) => self.observe_edge(service, t, now),
                None => {
                    if let Some(id) = span_id {
                        self.clients.insert(
                            id,
                            ClientSpan {
                                service: service.to_string(),
                            },
                        );
                    }
                }
            }
            if span.is_error()
                && self.rules.failed_call.enabled
                && self.rules.failed_call.client_spans
            {
                let target = target
                    .or_else(|| {
                        span.attributes
                            .get("server.address")
                            .and_then(|v| v.as_str())
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "unknown".to_string());
                let error = if !span.status_message.is_empty() {
                    span.status_message.clone()
                } else if let Some(t) = span.attributes.get("error.type").and_then(|v| v.as_str()) {
                    t.to_string()
                } else {
                    "error status".to_string()
                };
                let time = nonzero(span.end_unix_nano, now);
                self.failed_call(service, &target, &error, Some(&span.trace_id), time, now);
            }
        } else if let Some(parent) = span.parent_span_id.as_deref().and_then(parse_id) {
            if matches!(span.kind, SpanKind::Server | SpanKind::Consumer) {
                match self.clients.remove(parent) {
                    Some(client) => {
                        if client.service != service {
                            self.observe_edge(&client.service, service, now);
                        }
                    }
                    None => self.children.insert(parent, service.to_string()),
                }
            }
        }
    }

    fn log(&mut self, log: &LogEntry, now: u64) {
        self.stats.logs += 1;
        self.declare(&log.service, now);
        let service = log.service.name.as_str();
        let time = nonzero(log.time_unix_nano, now);
        if log.is_service_call() {
            let source = log.attr_str(names::CALL_SOURCE).unwrap_or(service);
            let Some(target) = log.attr_str(names::CALL_TARGET).filter(|t| !t.is_empty()) else {
                return;
            };
            let success = log.attr_bool(names::CALL_SUCCESS).unwrap_or_else(|| {
                log.attr_str(names::CALL_STATUS)
                    .map_or(!matches!(log.level.as_str(), "ERROR" | "FATAL"), |s| {
                        !s.eq_ignore_ascii_case("FAILURE")
                    })
            });
            self.observe_edge(source, target, now);
            if self.counts(RateInput::ServiceCalls) {
                self.record_rate(source, now, !success, log.trace_id.as_deref().unwrap_or(""));
            }
            if !success {
                self.note_mix(source, true, now);
            }
            if !success && self.rules.failed_call.enabled {
                let error = log
                    .attr_str(names::ERROR_MESSAGE)
                    .map(str::to_string)
                    .unwrap_or_else(|| log.body.clone());
                self.failed_call(source, target, &error, log.trace_id.as_deref(), time, now);
            }
            return;
        }
        // An error record naming the dependency it failed on is a failure that points down.
        // One without says nothing about where the failure lies; the service's spans do.
        if self.failure_levels.contains(&log.level)
            && log
                .attr_str(names::DEPENDENT_SERVICE)
                .is_some_and(|d| !d.is_empty() && d != service)
        {
            self.note_mix(service, true, now);
        }
        if self.rules.slow_response.enabled {
            if let (Some(rt), Some(limit)) = (
                log.attr_f64(names::RESPONSE_TIME_MS),
                log.attr_f64(names::THRESHOLD_LIMIT_MS),
            ) {
                if rt > limit {
                    let mut labels = BTreeMap::new();
                    labels.insert("response_time_ms".into(), fmt_num(rt));
                    labels.insert("threshold_limit_ms".into(), fmt_num(limit));
                    labels.insert("message".into(), log.body.clone());
                    self.hit_event(
                        Hit {
                            rule: rule::SLOW_RESPONSE,
                            key: service.to_string(),
                            service,
                            instance: log.service.instance_id.as_deref(),
                            severity: self.rules.slow_response.severity,
                            summary: format!(
                                "{service} responded in {} ms, over its {} ms limit: {}",
                                fmt_num(rt),
                                fmt_num(limit),
                                log.body
                            ),
                            labels,
                            trace_id: log.trace_id.as_deref(),
                            time,
                            target: None,
                        },
                        now,
                    );
                    return;
                }
            }
        }
        let level = log.level.as_str();
        let (rule_name, severity) = if self.error_levels.iter().any(|l| l == level) {
            (rule::ERROR_LOG, self.rules.error_log.severity)
        } else if self.warn_levels.iter().any(|l| l == level) {
            (rule::WARN_LOG, self.rules.warn_log.severity)
        } else {
            return;
        };
        let code = log.attr_str(names::ERROR_CODE).filter(|c| !c.is_empty());
        let message = log.attr_str(names::ERROR_MESSAGE).filter(|m| !m.is_empty());
        let dependent = log
            .attr_str(names::DEPENDENT_SERVICE)
            .filter(|d| !d.is_empty() && *d != service);
        let key = match code {
            Some(code) => format!("{service}|{code}"),
            None => format!(
                "{service}|{}",
                fingerprint_text(message.unwrap_or(&log.body))
            ),
        };
        let mut labels = BTreeMap::new();
        labels.insert("level".into(), level.to_string());
        labels.insert("message".into(), log.body.clone());
        if let Some(code) = code {
            labels.insert("error_code".into(), code.to_string());
        }
        if let Some(m) = message {
            labels.insert("error_message".into(), m.to_string());
        }
        if let Some(d) = dependent {
            labels.insert("dependent_service".into(), d.to_string());
        }
        let summary = match (code, message) {
            (Some(c), Some(m)) => format!("{service} {level} {c}: {m}"),
            (Some(c), None) => format!("{service} {level} {c}: {}", log.body),
            (None, Some(m)) => format!("{service} {level}: {m}"),
            (None, None) => format!("{service} {level}: {}", log.body),
        };
        if let Some(d) = dependent {
            self.note_failure(service, d, now);
        }
        self.hit_event(
            Hit {
                rule: rule_name,
                key,
                service,
                instance: log.service.instance_id.as_deref(),
                severity,
                summary,
                labels,
                trace_id: log.trace_id.as_deref(),
                time,
                target: dependent,
            },
            now,
        );
    }

    fn heartbeat(&mut self, hb: &Heartbeat, now: u64) {
        self.stats.heartbeats += 1;
        self.declare(&hb.service, now);
        if !self.rules.heartbeat.enabled {
            return;
        }
        let key = hb.service.instance_key();
        let name = describe_instance(&hb.service.name, hb.service.instance_id.as_deref());
        if hb.status == ServiceStatus::Down {
            if self.s.instances.remove(key).is_some() {
                for rule_name in [rule::HEARTBEAT_DOWN, rule::HEARTBEAT_DELAYED] {
                    let id = alert_id(rule_name, key);
                    self.resolve(
                        &id,
                        now,
                        Some(format!("{name} shut down cleanly")),
                        Some(("reason", "shutdown")),
                    );
                }
            }
            return;
        }
        let interval_ms = hb
            .interval_ms
            .filter(|i| *i > 0)
            .unwrap_or(self.rules.heartbeat.default_interval_ms);
        match self.s.instances.get_mut(key) {
            Some(instance) => {
                // The true silence, for people; escalation measures from the restore time.
                let silent = now.saturating_sub(instance.last_seen);
                instance.last_seen = instance.last_seen.max(now);
                instance.interval_ms = interval_ms;
                for rule_name in [rule::HEARTBEAT_DOWN, rule::HEARTBEAT_DELAYED] {
                    let id = alert_id(rule_name, key);
                    if self.s.alerts.contains_key(&id) {
                        let summary = format!(
                            "{name} is back: heartbeat after {} of silence",
                            fmt_secs(silent)
                        );
                        self.resolve(&id, now, Some(summary), None);
                    }
                }
            }
            None => {
                let stale = self.rules.heartbeat.stale_after_secs;
                if stale > 0
                    && hb.time_unix_nano != 0
                    && now.saturating_sub(hb.time_unix_nano) > stale.saturating_mul(NANOS_PER_SEC)
                {
                    self.stats.stale_heartbeats += 1;
                    return;
                }
                if self.s.instances.len() >= self.rules.heartbeat.max_instances {
                    self.stats.keys_dropped += 1;
                    return;
                }
                self.s.instances.insert(
                    key.to_string(),
                    Instance {
                        service: hb.service.name.clone(),
                        instance_id: hb.service.instance_id.clone(),
                        last_seen: now,
                        interval_ms,
                    },
                );
            }
        }
    }

    fn counts(&self, input: RateInput) -> bool {
        self.rules.error_rate.enabled && self.rules.error_rate.count.contains(&input)
    }

    fn record_latency(&mut self, span: &SpanRecord, now: u64) {
        let service = span.service.name.as_str();
        let op = match self.rules.span_latency.group_by {
            LatencyGrouping::Service => "",
            LatencyGrouping::Operation => span.name.as_str(),
        };
        let duration = span.duration_nanos();
        let max_examples = self.rules.defaults.max_example_traces;
        let entry = match self
            .s
            .latency
            .get_mut(service)
            .and_then(|ops| ops.get_mut(op))
        {
            Some(entry) => entry,
            None => {
                let l = &self.rules.span_latency;
                if self.latency_keys >= l.max_keys {
                    self.stats.keys_dropped += 1;
                    return;
                }
                let threshold = l.threshold_for(service, (!op.is_empty()).then_some(op));
                let entry = LatencyEntry {
                    window: LatencyWindow::new(
                        (l.window_secs / l.bucket_secs) as usize,
                        l.bucket_secs * NANOS_PER_SEC,
                        (threshold * NANOS_PER_MS as f64) as u64,
                    ),
                    examples: VecDeque::new(),
                };
                self.latency_keys += 1;
                self.s
                    .latency
                    .entry(service.to_string())
                    .or_default()
                    .entry(op.to_string())
                    .or_insert(entry)
            }
        };
        entry.window.record(now, duration);
        if duration > entry.window.threshold_nanos() {
            push_example(&mut entry.examples, &span.trace_id, max_examples);
        }
    }

    fn record_rate(&mut self, service: &str, now: u64, failed: bool, trace_id: &str) {
        let max_examples = self.rules.defaults.max_example_traces;
        let entry = match self.s.rates.get_mut(service) {
            Some(entry) => entry,
            None => {
                let r = &self.rules.error_rate;
                if self.s.rates.len() >= r.max_services {
                    self.stats.keys_dropped += 1;
                    return;
                }
                self.s
                    .rates
                    .entry(service.to_string())
                    .or_insert(RateEntry {
                        window: RateWindow::new(
                            (r.window_secs / r.bucket_secs) as usize,
                            r.bucket_secs * NANOS_PER_SEC,
                        ),
                        examples: VecDeque::new(),
                    })
            }
        };
        entry.window.record(now, failed);
        if failed && !trace_id.is_empty() {
            push_example(&mut entry.examples, trace_id, max_examples);
        }
    }

    /// Remembers the dependencies a service declares, and resolves drift alerts for edges it
    /// now declares.
    fn declare(&mut self, service: &ServiceInfo, now: u64) {
        if service.dependencies.is_empty() {
            return;
        }
        if self
            .s
            .declared
            .get(&service.name)
            .is_some_and(|d| *d == service.dependencies)
        {
            return;
        }
        // Bounded like the observed edges: a flood of services (or of declared dependencies)
        // must not grow the state without limit.
        let others: usize = self
            .s
            .declared
            .iter()
            .filter(|(name, _)| **name != service.name)
            .map(|(_, deps)| deps.len())
            .sum();
        if others + service.dependencies.len() > self.rules.root_cause.max_edges {
            self.stats.keys_dropped += 1;
            return;
        }
        self.s
            .declared
            .insert(service.name.clone(), service.dependencies.clone());
        for dep in &service.dependencies {
            let id = alert_id(rule::DEPENDENCY_DRIFT, &edge_key(&service.name, dep));
            if self.s.alerts.contains_key(&id) {
                let summary = format!("{} now declares its dependency on {dep}", service.name);
                self.resolve(&id, now, Some(summary), Some(("reason", "declared")));
            }
        }
    }

    /// A call edge caller → callee was seen: remember it, and raise drift once per edge.
    fn observe_edge(&mut self, caller: &str, callee: &str, now: u64) {
        if caller == callee || callee.is_empty() {
            return;
        }
        if !self
            .s
            .observed
            .get(caller)
            .is_some_and(|s| s.contains(callee))
        {
            if self.edge_count >= self.rules.root_cause.max_edges {
                self.stats.keys_dropped += 1;
            } else {
                self.edge_count += 1;
                self.s
                    .observed
                    .entry(caller.to_string())
                    .or_default()
                    .insert(callee.to_string());
            }
        }
        let drift = &self.rules.dependency_drift;
        if !drift.enabled
            || self
                .s
                .drift_seen
                .get(caller)
                .is_some_and(|s| s.contains(callee))
            || drift.ignore_targets.iter().any(|t| t == callee)
        {
            return;
        }
        let declared = self
            .s
            .declared
            .get(caller)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if (declared.is_empty() && !drift.check_undeclared_services)
            || declared.iter().any(|d| d == callee)
        {
            return;
        }
        if self.drift_count >= self.rules.root_cause.max_edges {
            self.stats.keys_dropped += 1;
            return;
        }
        let declared_list = if declared.is_empty() {
            "none".to_string()
        } else {
            declared.join(", ")
        };
        self.drift_count += 1;
        self.s
            .drift_seen
            .entry(caller.to_string())
            .or_default()
            .insert(callee.to_string());
        let key = edge_key(caller, callee);
        let mut labels = BTreeMap::new();
        labels.insert("caller".into(), caller.to_string());
        labels.insert("callee".into(), callee.to_string());
        labels.insert("declared".into(), declared_list.clone());
        let severity = drift.severity;
        self.new_alert(
            Active {
                alert: Alert {
                    id: alert_id(rule::DEPENDENCY_DRIFT, &key),
                    rule: rule::DEPENDENCY_DRIFT.into(),
                    key,
                    severity,
                    state: AlertState::Firing,
                    service: caller.to_string(),
                    instance: None,
                    summary: format!(
                        "{caller} calls {callee}, which is not among its declared dependencies ({declared_list})"
                    ),
                    first_seen_unix_nano: now,
                    last_seen_unix_nano: now,
                    occurrences: 1,
                    example_trace_ids: Vec::new(),
                    root_cause: None,
                    incident_id: None,
                    labels,
                    revision: 0,
                },
                kind: Kind::Condition,
                last_hit: now,
                suppressed: false,
                dirty: false,
                target: None,
                dependents: BTreeSet::new(),
            },
        );
    }

    fn note_failure(&mut self, caller: &str, callee: &str, now: u64) {
        if !self.rules.root_cause.enabled || caller == callee {
            return;
        }
        let known = self
            .s
            .failures_into
            .get(callee)
            .is_some_and(|m| m.contains_key(caller));
        if !known
            && self
                .s
                .failures_into
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
                >= self.rules.root_cause.max_edges
        {
            self.stats.keys_dropped += 1;
            return;
        }
        self.s
            .failures_into
            .entry(callee.to_string())
            .or_default()
            .insert(caller.to_string(), now);
    }

    /// Counts one failure signal of `service` in its failure mix: `outbound` when it was a
    /// failed call into a dependency.
    fn note_mix(&mut self, service: &str, outbound: bool, now: u64) {
        if !self.rules.root_cause.enabled {
            return;
        }
        if let Some(window) = self.s.failure_mix.get_mut(service) {
            window.record(now, outbound);
            return;
        }
        if self.s.failure_mix.len() >= self.rules.root_cause.max_edges {
            self.stats.keys_dropped += 1;
            return;
        }
        let mut window = mix_window(&self.rules);
        window.record(now, outbound);
        self.s.failure_mix.insert(service.to_string(), window);
    }

    fn failed_call(
        &mut self,
        source: &str,
        target: &str,
        error: &str,
        trace_id: Option<&str>,
        time: u64,
        now: u64,
    ) {
        self.note_failure(source, target, now);
        let mut labels = BTreeMap::new();
        labels.insert("source".into(), source.to_string());
        labels.insert("target".into(), target.to_string());
        labels.insert("error".into(), error.to_string());
        self.hit_event(
            Hit {
                rule: rule::FAILED_CALL,
                key: edge_key(source, target),
                service: source,
                instance: None,
                severity: self.rules.failed_call.severity,
                summary: format!("{source} → {target} failed: {error}"),
                labels,
                trace_id,
                time,
                target: Some(target),
            },
            now,
        );
    }

    // ---------------------------------------------------------------- alert lifecycle

    /// One occurrence of an event rule's condition: fire, or fold into the firing alert.
    fn hit_event(&mut self, hit: Hit<'_>, now: u64) {
        let id = alert_id(hit.rule, &hit.key);
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.s.alerts.get_mut(&id) {
            let a = &mut active.alert;
            a.occurrences += 1;
            a.first_seen_unix_nano = a.first_seen_unix_nano.min(hit.time);
            a.last_seen_unix_nano = a.last_seen_unix_nano.max(hit.time);
            a.summary = hit.summary;
            a.labels = hit.labels;
            if let Some(t) = hit.trace_id {
                add_example(&mut a.example_trace_ids, t, max_examples);
            }
            active.last_hit = now;
            active.dirty = true;
            let incident = a.incident_id.clone();
            let root = a.root_cause.clone();
            // Still the same root while it is down or failing; otherwise look again.
            let current = match (incident, root) {
                (Some(_), Some(root)) => self.unhealthy(&root, now).map(|cause| (root, cause)),
                _ => None,
            };
            match current {
                Some((root, cause)) => {
                    self.group_into(&root, &cause, hit.service, 1, hit.trace_id, hit.time, now);
                }
                None => {
                    if let Some(target) = hit.target {
                        if let Some((root, cause)) = self.find_root(target, now) {
                            let incident = self.group_into(
                                &root,
                                &cause,
                                hit.service,
                                1,
                                hit.trace_id,
                                hit.time,
                                now,
                            );
                            if let Some(active) = self.s.alerts.get_mut(&id) {
                                active.alert.incident_id = Some(incident);
                                active.alert.root_cause = Some(root);
                            }
                        }
                    }
                }
            }
            return;
        }
        let mut alert = Alert {
            id,
            rule: hit.rule.to_string(),
            key: hit.key,
            severity: hit.severity,
            state: AlertState::Firing,
            service: hit.service.to_string(),
            instance: hit.instance.map(str::to_string),
            summary: hit.summary,
            first_seen_unix_nano: hit.time,
            last_seen_unix_nano: hit.time,
            occurrences: 1,
            example_trace_ids: hit
                .trace_id
                .filter(|t| !t.is_empty())
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
            root_cause: None,
            incident_id: None,
            labels: hit.labels,
            revision: 0,
        };
        if self.counted_alerts() >= self.rules.defaults.max_active_alerts {
            self.stats.alerts_dropped += 1;
            return;
        }
        let mut suppressed = false;
        if let Some(target) = hit.target {
            if let Some((root, cause)) = self.find_root(target, now) {
                let incident =
                    self.group_into(&root, &cause, hit.service, 1, hit.trace_id, hit.time, now);
                alert.incident_id = Some(incident);
                alert.root_cause = Some(root);
                suppressed = true;
            }
        }
        self.new_alert(Active {
            alert,
            kind: Kind::Event,
            last_hit: now,
            suppressed,
            dirty: false,
            target: hit.target.map(str::to_string),
            dependents: BTreeSet::new(),
        });
    }

    /// Starts firing `active` (emitting it unless it is folded into an incident). False when
    /// it was dropped because `defaults.max_active_alerts` are firing.
    fn new_alert(&mut self, mut active: Active) -> bool {
        let drift = active.alert.rule == rule::DEPENDENCY_DRIFT;
        // Drift is bounded by `root_cause.max_edges` (once per edge) and neither counts toward
        // nor is dropped by the cap, so it can never crowd out an error alert.
        if self.counted_alerts() >= self.rules.defaults.max_active_alerts
            && active.kind != Kind::Incident
            && !drift
        {
            self.stats.alerts_dropped += 1;
            return false;
        }
        if !active.suppressed {
            active.alert.revision = self.next_revision();
            self.out.push(Transition {
                kind: TransitionKind::Fired,
                alert: active.alert.clone(),
            });
        }
        self.index_root(
            &active.alert.service,
            &active.alert.id,
            &active.alert.rule,
            true,
        );
        if drift && !self.s.alerts.contains_key(&active.alert.id) {
            self.drift_active += 1;
        }
        self.s.alerts.insert(active.alert.id.clone(), active);
        true
    }

    /// Firing alerts that count toward `defaults.max_active_alerts`.
    fn counted_alerts(&self) -> usize {
        self.s.alerts.len().saturating_sub(self.drift_active)
    }

    /// Resolves a firing alert (emitting it unless it was folded into an incident).
    fn resolve(
        &mut self,
        id: &str,
        now: u64,
        summary: Option<String>,
        label: Option<(&str, &str)>,
    ) {
        let Some(mut active) = self.s.alerts.remove(id) else {
            return;
        };
        if active.alert.rule == rule::DEPENDENCY_DRIFT {
            self.drift_active = self.drift_active.saturating_sub(1);
        }
        self.index_root(&active.alert.service, id, &active.alert.rule, false);
        if active.suppressed {
            return;
        }
        let a = &mut active.alert;
        a.state = AlertState::Resolved;
        if active.kind != Kind::Event {
            a.last_seen_unix_nano = a.last_seen_unix_nano.max(now);
        }
        if let Some(summary) = summary {
            a.summary = summary;
        }
        if let Some((k, v)) = label {
            a.labels.insert(k.to_string(), v.to_string());
        }
        a.revision = self.next_revision();
        self.out.push(Transition {
            kind: TransitionKind::Resolved,
            alert: active.alert,
        });
    }

    fn next_revision(&mut self) -> u64 {
        self.s.seq += 1;
        self.s.seq
    }

    fn index_root(&mut self, service: &str, id: &str, rule_name: &str, add: bool) {
        if !self
            .rules
            .root_cause
            .root_rules
            .iter()
            .any(|r| r == rule_name)
        {
            return;
        }
        if add {
            self.root_index
                .entry(service.to_string())
                .or_default()
                .insert(id.to_string(), rule_name.to_string());
        } else if let Some(ids) = self.root_index.get_mut(service) {
            ids.remove(id);
            if ids.is_empty() {
                self.root_index.remove(service);
            }
        }
    }

    /// Why `service` counts as down or failing now, if it does: the first of
    /// `root_cause.root_rules` firing for it; failed calls into it from enough callers; or a
    /// failing caller whose failures point down and that failed into it (see
    /// [`Engine::cause_of`]).
    fn unhealthy(&self, service: &str, now: u64) -> Option<String> {
        if !self.rules.root_cause.enabled {
            return None;
        }
        self.cause_of(service, now, &mut BTreeMap::new())
    }

    /// [`Engine::unhealthy`], remembering in `seen` which services were judged during this
    /// question (`None`: being judged), so a loop of callers ends and each is judged once.
    fn cause_of(
        &self,
        service: &str,
        now: u64,
        seen: &mut BTreeMap<String, Option<bool>>,
    ) -> Option<String> {
        let rc = &self.rules.root_cause;
        if let Some(ids) = self.root_index.get(service) {
            for wanted in &rc.root_rules {
                if ids.values().any(|r| r == wanted) {
                    return Some(wanted.clone());
                }
            }
        }
        if rc.min_failing_callers == 0 {
            return None;
        }
        let since = self.window_start(now);
        let callers = self.s.failures_into.get(service)?;
        let recent = || callers.iter().filter(|(_, t)| **t >= since).map(|(c, _)| c);
        if recent().count() >= rc.min_failing_callers {
            return Some(CAUSE_FAILING_CALLERS.to_string());
        }
        // A caller that is down or failing, whose failures are mostly failed calls into its
        // dependencies, and that failed into this service, is failing because of it, unless
        // this service's own error rate shows it healthy.
        if seen.len() >= MAX_ROOT_DEPTH * 4 || self.shows_healthy(service, now) {
            return None;
        }
        seen.insert(service.to_string(), None);
        let mut found = false;
        for caller in recent() {
            if !self.passes_on(caller, now) {
                continue;
            }
            let failing = match seen.get(caller.as_str()) {
                Some(known) => known.unwrap_or(false),
                None => self.cause_of(caller, now, seen).is_some(),
            };
            if failing {
                found = true;
                break;
            }
        }
        seen.insert(service.to_string(), Some(found));
        found.then(|| CAUSE_FAILING_DEPENDENT.to_string())
    }

    /// Start of the root-cause window ending at `now`.
    fn window_start(&self, now: u64) -> u64 {
        now.saturating_sub(
            self.rules
                .root_cause
                .window_secs
                .saturating_mul(NANOS_PER_SEC),
        )
    }

    /// Where `service`'s own failures in the window point.
    fn lean(&self, service: &str, now: u64) -> Lean {
        let Some(window) = self.s.failure_mix.get(service) else {
            return Lean::Silent;
        };
        let sums = window.sums(now);
        if sums.total == 0 {
            Lean::Silent
        } else if sums.failed * 2 >= sums.total {
            Lean::Down
        } else {
            Lean::Own
        }
    }

    /// Share of `service`'s failure signals in the window that were failed calls out of it.
    fn outbound_share(&self, service: &str, now: u64) -> f64 {
        self.s
            .failure_mix
            .get(service)
            .map_or(0.0, |w| w.sums(now).ratio())
    }

    /// Whether `caller` failed calling `callee` (a failed call, or an error record naming it)
    /// within the window.
    fn failed_into(&self, caller: &str, callee: &str, now: u64) -> bool {
        let since = self.window_start(now);
        self.s
            .failures_into
            .get(callee)
            .and_then(|callers| callers.get(caller))
            .is_some_and(|t| *t >= since)
    }

    /// Whether a heartbeat rule makes `service` down or failing: a service that is not
    /// running is its own root cause, whatever its dependencies do.
    fn down_by_heartbeat(&self, service: &str) -> bool {
        self.root_index.get(service).is_some_and(|ids| {
            ids.values()
                .any(|r| r == rule::HEARTBEAT_DOWN || r == rule::HEARTBEAT_DELAYED)
        })
    }

    /// Whether `service`'s failures are explained by its dependencies rather than its own:
    /// they point down, and it is not down by heartbeat.
    fn passes_on(&self, service: &str, now: u64) -> bool {
        self.lean(service, now) == Lean::Down && !self.down_by_heartbeat(service)
    }

    /// Whether `service`'s own error-rate window shows it healthy: enough outcomes, at most
    /// the threshold failing.
    fn shows_healthy(&self, service: &str, now: u64) -> bool {
        let r = &self.rules.error_rate;
        r.enabled
            && self.s.rates.get(service).is_some_and(|e| {
                let sums = e.window.sums(now);
                sums.total >= r.min_samples && sums.ratio() * 100.0 <= r.threshold_percent
            })
    }

    /// The probable root cause behind a failure into (or of) `start`: the deepest down or
    /// failing service reached by following, from `start`, the dependencies that explain
    /// each service's failures. See [`Engine::walk`].
    fn find_root(&self, start: &str, now: u64) -> Option<(String, String)> {
        if !self.rules.root_cause.enabled {
            return None;
        }
        let cause = self.unhealthy(start, now);
        let mut path = Vec::new();
        let mut visited = BTreeSet::new();
        match self.walk(start, cause, now, &mut path, &mut visited) {
            Walk::Root(root, cause) => Some((root, cause)),
            Walk::Nothing | Walk::Cycle(..) => None,
        }
    }

    /// One step of [`Engine::find_root`] at `service` (down or failing for `cause`, or the
    /// healthy start of the walk). `path` holds the services above it.
    ///
    /// A service down by heartbeat, or whose failures are mostly its own, is the root. One
    /// whose failures point down passes on to the down or failing dependencies it failed
    /// into; one that reported no failure of its own (and a healthy start) to any down or
    /// failing dependency. The first dependency that leads to a root wins. Explanations that
    /// loop back (A's failures are its calls into B, B's its calls into A) settle on one
    /// service of the loop, the same from wherever the loop is entered.
    fn walk(
        &self,
        service: &str,
        cause: Option<String>,
        now: u64,
        path: &mut Vec<String>,
        visited: &mut BTreeSet<String>,
    ) -> Walk {
        visited.insert(service.to_string());
        let depth = path.len();
        let lean = self.lean(service, now);
        let follow = depth < MAX_ROOT_DEPTH
            && lean != Lean::Own
            && match &cause {
                Some(_) => !self.down_by_heartbeat(service),
                None => depth == 0,
            };
        if follow {
            let mut cycle: Option<(usize, Vec<String>)> = None;
            path.push(service.to_string());
            for dep in self.dependencies(service) {
                if dep == service || (lean == Lean::Down && !self.failed_into(service, &dep, now)) {
                    continue;
                }
                let found = if let Some(head) = path.iter().position(|p| *p == dep) {
                    Walk::Cycle(head, Vec::new())
                } else if visited.contains(&dep) {
                    Walk::Nothing
                } else {
                    match self.unhealthy(&dep, now) {
                        Some(dep_cause) => self.walk(&dep, Some(dep_cause), now, path, visited),
                        None => Walk::Nothing,
                    }
                };
                match found {
                    Walk::Root(root, why) => {
                        path.pop();
                        return Walk::Root(root, why);
                    }
                    Walk::Cycle(head, members) => {
                        let (h, m) = cycle.get_or_insert_with(|| (head, Vec::new()));
                        *h = (*h).min(head);
                        m.extend(members);
                    }
                    Walk::Nothing => {}
                }
            }
            path.pop();
            if let Some((head, mut members)) = cycle {
                if cause.is_some() {
                    members.push(service.to_string());
                }
                if head < depth {
                    return Walk::Cycle(head, members);
                }
                if let Some((root, why)) = self.cycle_root(&members, now) {
                    return Walk::Root(root, why);
                }
            }
        }
        match cause {
            Some(why) => Walk::Root(service.to_string(), why),
            None => Walk::Nothing,
        }
    }

    /// The root of a loop of services whose failures explain each other: the one that
    /// already has an incident, otherwise the one whose failures point down the least
    /// (ties: name order), so every service of the loop agrees.
    fn cycle_root(&self, members: &[String], now: u64) -> Option<(String, String)> {
        let with_incident = members
            .iter()
            .filter(|m| self.s.alerts.contains_key(&alert_id(rule::INCIDENT, m)))
            .min();
        let root = with_incident.or_else(|| {
            members.iter().min_by(|a, b| {
                self.outbound_share(a, now)
                    .total_cmp(&self.outbound_share(b, now))
                    .then_with(|| a.cmp(b))
            })
        })?;
        let cause = self.unhealthy(root, now)?;
        Some((root.clone(), cause))
    }

    /// Declared and observed dependencies of a service, declared first, without repeats.
    fn dependencies(&self, service: &str) -> Vec<String> {
        let mut deps: Vec<String> = self.s.declared.get(service).cloned().unwrap_or_default();
        if let Some(observed) = self.s.observed.get(service) {
            for d in observed {
                if !deps.contains(d) {
                    deps.push(d.clone());
                }
            }
        }
        deps
    }

    /// Counts `occurrences` failures of `dependent` into the incident of `root`, opening the
    /// incident if there is none. Returns the incident id.
    #[allow(clippy::too_many_arguments)]
    fn group_into(
        &mut self,
        root: &str,
        cause: &str,
        dependent: &str,
        occurrences: u64,
        trace_id: Option<&str>,
        time: u64,
        now: u64,
    ) -> String {
        let id = alert_id(rule::INCIDENT, root);
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.s.alerts.get_mut(&id) {
            active.dependents.insert(dependent.to_string());
            let a = &mut active.alert;
            a.occurrences += occurrences;
            a.first_seen_unix_nano = a.first_seen_unix_nano.min(time);
            a.last_seen_unix_nano = a.last_seen_unix_nano.max(time);
            if let Some(t) = trace_id {
                add_example(&mut a.example_trace_ids, t, max_examples);
            }
            a.labels.insert("cause".into(), cause.to_string());
            a.labels
                .insert("dependents".into(), join(&active.dependents));
            a.summary = incident_summary(root, cause, &active.dependents, a.occurrences);
            active.last_hit = now;
            active.dirty = true;
            return id;
        }
        let dependents = BTreeSet::from([dependent.to_string()]);
        let mut labels = BTreeMap::new();
        labels.insert("cause".into(), cause.to_string());
        labels.insert("dependents".into(), join(&dependents));
        let alert = Alert {
            id: id.clone(),
            rule: rule::INCIDENT.into(),
            key: root.to_string(),
            severity: self.rules.root_cause.severity,
            state: AlertState::Firing,
            service: root.to_string(),
            instance: None,
            summary: incident_summary(root, cause, &dependents, occurrences),
            first_seen_unix_nano: time,
            last_seen_unix_nano: time,
            occurrences,
            example_trace_ids: trace_id
                .filter(|t| !t.is_empty())
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
            root_cause: Some(root.to_string()),
            incident_id: Some(id.clone()),
            labels,
            revision: 0,
        };
        self.new_alert(Active {
            alert,
            kind: Kind::Incident,
            last_hit: now,
            suppressed: false,
            dirty: false,
            target: None,
            dependents,
        });
        // The root's own alerts (it is down, its error rate is high) belong to the incident.
        self.attach_own(root, &id);
        id
    }

    // ---------------------------------------------------------------- time-driven rules

    fn tick_heartbeats(&mut self, now: u64) {
        if !self.rules.heartbeat.enabled {
            return;
        }
        let h = self.rules.heartbeat.clone();
        let forget_nanos = h.forget_after_secs.saturating_mul(NANOS_PER_SEC);
        let mut forget = Vec::new();
        let mut fire = Vec::new();
        for (key, inst) in &self.s.instances {
            let silent = now.saturating_sub(inst.last_seen.max(self.resumed_at));
            if forget_nanos > 0 && silent > forget_nanos {
                forget.push(key.clone());
                continue;
            }
            let interval = inst.interval_ms.saturating_mul(NANOS_PER_MS) as f64;
            if silent as f64 > h.delayed_after_intervals * interval
                && !self
                    .s
                    .alerts
                    .contains_key(&alert_id(rule::HEARTBEAT_DELAYED, key))
            {
                fire.push((
                    key.clone(),
                    rule::HEARTBEAT_DELAYED,
                    h.delayed_severity,
                    silent,
                ));
            }
            if silent as f64 > h.down_after_intervals * interval
                && !self
                    .s
                    .alerts
                    .contains_key(&alert_id(rule::HEARTBEAT_DOWN, key))
            {
                fire.push((key.clone(), rule::HEARTBEAT_DOWN, h.down_severity, silent));
            }
        }
        for key in forget {
            if let Some(inst) = self.s.instances.remove(&key) {
                let name = describe_instance(&inst.service, inst.instance_id.as_deref());
                for rule_name in [rule::HEARTBEAT_DOWN, rule::HEARTBEAT_DELAYED] {
                    let summary = format!(
                        "{name} is no longer tracked after {} of silence",
                        fmt_secs(forget_nanos)
                    );
                    self.resolve(
                        &alert_id(rule_name, &key),
                        now,
                        Some(summary),
                        Some(("reason", "forgotten")),
                    );
                }
            }
        }
        for (key, rule_name, severity, silent) in fire {
            let Some(inst) = self.s.instances.get(&key) else {
                continue;
            };
            let name = describe_instance(&inst.service, inst.instance_id.as_deref());
            let what = if rule_name == rule::HEARTBEAT_DOWN {
                "is down"
            } else {
                "heartbeat delayed"
            };
            let mut labels = BTreeMap::new();
            labels.insert("interval_ms".into(), inst.interval_ms.to_string());
            labels.insert("silent_ms".into(), (silent / NANOS_PER_MS).to_string());
            let alert = Alert {
                id: alert_id(rule_name, &key),
                rule: rule_name.to_string(),
                key: key.clone(),
                severity,
                state: AlertState::Firing,
                service: inst.service.clone(),
                instance: inst.instance_id.clone(),
                summary: format!(
                    "{name} {what}: no heartbeat for {} (interval {})",
                    fmt_secs(silent),
                    fmt_secs(inst.interval_ms * NANOS_PER_MS)
                ),
                first_seen_unix_nano: now,
                last_seen_unix_nano: now,
                occurrences: 1,
                example_trace_ids: Vec::new(),
                root_cause: None,
                incident_id: None,
                labels,
                revision: 0,
            };
            self.new_alert(Active {
                alert,
                kind: Kind::Condition,
                last_hit: now,
                suppressed: false,
                dirty: false,
                target: None,
                dependents: BTreeSet::new(),
            });
        }
    }

    fn tick_latency(&mut self, now: u64) {
        let l = self.rules.span_latency.clone();
        if !l.enabled {
            return;
        }
        let mut fire = Vec::new();
        let mut resolve = Vec::new();
        let mut idle = Vec::new();
        for (service, ops) in &self.s.latency {
            for (op, entry) in ops {
                let key = if op.is_empty() {
                    service.clone()
                } else {
                    format!("{service}|{op}")
                };
                let id = alert_id(rule::SPAN_LATENCY, &key);
                let firing = self.s.alerts.contains_key(&id);
                let sums = entry.window.sums(now);
                let exceeds = sums.total >= l.min_samples && sums.percentile_exceeds(l.percentile);
                if sums.total == 0 && !firing {
                    idle.push((service.clone(), op.clone()));
                } else if exceeds && !firing {
                    let p = entry.window.percentile_ms(now, l.percentile).unwrap_or(0.0);
                    let threshold_ms = entry.window.threshold_nanos() as f64 / NANOS_PER_MS as f64;
                    // The bucketed estimate can land a hair under a threshold the exact count
                    // says is exceeded; never show a percentile below the threshold it broke.
                    let p = p.max(threshold_ms);
                    fire.push((
                        service.clone(),
                        op.clone(),
                        key,
                        id,
                        p,
                        threshold_ms,
                        sums.total,
                        entry.examples.iter().cloned().collect::<Vec<_>>(),
                    ));
                } else if firing
                    && (sums.total == 0
                        || (sums.total >= l.min_samples && !sums.percentile_exceeds(l.percentile)))
                {
                    let p = entry.window.percentile_ms(now, l.percentile);
                    resolve.push((id, service.clone(), op.clone(), p));
                }
            }
        }
        for (service, op) in idle {
            if let Some(ops) = self.s.latency.get_mut(&service) {
                if ops.remove(&op).is_some() {
                    self.latency_keys -= 1;
                }
                if ops.is_empty() {
                    self.s.latency.remove(&service);
                }
            }
        }
        let pct = fmt_num(l.percentile);
        for (service, op, key, id, p, threshold_ms, total, examples) in fire {
            let what = if op.is_empty() {
                service.clone()
            } else {
                format!("{service} {op}")
            };
            let mut labels = BTreeMap::new();
            if !op.is_empty() {
                labels.insert("operation".into(), op.clone());
            }
            labels.insert(format!("p{pct}_ms"), fmt_num(p.round()));
            labels.insert("threshold_ms".into(), fmt_num(threshold_ms));
            labels.insert("samples".into(), total.to_string());
            labels.insert("window_secs".into(), l.window_secs.to_string());
            let alert = Alert {
                id,
                rule: rule::SPAN_LATENCY.into(),
                key,
                severity: l.severity,
                state: AlertState::Firing,
                service: service.clone(),
                instance: None,
                summary: format!(
                    "{what}: p{pct} {} ms over the last {} s exceeds {} ms ({total} spans)",
                    fmt_num(p.round()),
                    l.window_secs,
                    fmt_num(threshold_ms)
                ),
                first_seen_unix_nano: now,
                last_seen_unix_nano: now,
                occurrences: 1,
                example_trace_ids: examples,
                root_cause: None,
                incident_id: None,
                labels,
                revision: 0,
            };
            self.new_alert(Active {
                alert,
                kind: Kind::Condition,
                last_hit: now,
                suppressed: false,
                dirty: false,
                target: None,
                dependents: BTreeSet::new(),
            });
        }
        for (id, service, op, p) in resolve {
            let what = if op.is_empty() {
                service
            } else {
                format!("{service} {op}")
            };
            let summary = match p {
                Some(p) => format!("{what}: p{pct} back to {} ms", fmt_num(p.round())),
                None => format!("{what}: no spans in the last {} s", l.window_secs),
            };
            self.resolve(&id, now, Some(summary), None);
        }
    }

    fn tick_rates(&mut self, now: u64) {
        let r = self.rules.error_rate.clone();
        if !r.enabled {
            return;
        }
        let mut fire = Vec::new();
        let mut resolve = Vec::new();
        let mut idle = Vec::new();
        for (service, entry) in &self.s.rates {
            let id = alert_id(rule::ERROR_RATE, service);
            let firing = self.s.alerts.contains_key(&id);
            let sums = entry.window.sums(now);
            let percent = sums.ratio() * 100.0;
            if sums.total == 0 && !firing {
                idle.push(service.clone());
            } else if !firing && sums.total >= r.min_samples && percent > r.threshold_percent {
                fire.push((
                    service.clone(),
                    id,
                    sums,
                    entry.examples.iter().cloned().collect::<Vec<_>>(),
                ));
            } else if firing && (sums.total == 0 || percent <= r.threshold_percent) {
                resolve.push((id, service.clone(), sums));
            }
        }
        for service in idle {
            self.s.rates.remove(&service);
        }
        // All of this tick's error-rate alerts count as "failing" before any is attributed,
        // so a service failing because of a dependency that crossed its threshold in the
        // same tick is grouped under it.
        let mut fired = Vec::new();
        for (service, id, sums, examples) in fire {
            let percent = sums.ratio() * 100.0;
            let mut labels = BTreeMap::new();
            labels.insert("failed".into(), sums.failed.to_string());
            labels.insert("total".into(), sums.total.to_string());
            labels.insert("rate_percent".into(), format!("{percent:.1}"));
            labels.insert("threshold_percent".into(), fmt_num(r.threshold_percent));
            labels.insert("window_secs".into(), r.window_secs.to_string());
            let alert = Alert {
                id: id.clone(),
                rule: rule::ERROR_RATE.into(),
                key: service.clone(),
                severity: r.severity,
                state: AlertState::Firing,
                service: service.clone(),
                instance: None,
                summary: format!(
                    "{service}: {percent:.1}% of {} calls and requests failed over the last {} s (threshold {}%)",
                    sums.total,
                    r.window_secs,
                    fmt_num(r.threshold_percent)
                ),
                first_seen_unix_nano: now,
                last_seen_unix_nano: now,
                occurrences: sums.failed,
                example_trace_ids: examples,
                root_cause: None,
                incident_id: None,
                labels,
                revision: 0,
            };
            let inserted = self.new_alert(Active {
                alert,
                kind: Kind::Condition,
                last_hit: now,
                suppressed: true,
                dirty: false,
                target: None,
                dependents: BTreeSet::new(),
            });
            if inserted {
                fired.push((id, service, sums.failed));
            }
        }
        for (id, service, failed) in fired {
            // A service failing because of a deeper one is part of that one's incident.
            if let Some((root, cause)) = self.explained_root(&service, now) {
                let first = self
                    .s
                    .alerts
                    .get(&id)
                    .and_then(|a| a.alert.example_trace_ids.first().cloned());
                let incident = self.group_into(
                    &root,
                    &cause,
                    &service,
                    failed.max(1),
                    first.as_deref(),
                    now,
                    now,
                );
                if let Some(active) = self.s.alerts.get_mut(&id) {
                    active.alert.incident_id = Some(incident);
                    active.alert.root_cause = Some(root);
                    active.dirty = false;
                }
                continue;
            }
            // It fails on its own: shown, and part of its own incident if it has one.
            let own_incident = alert_id(rule::INCIDENT, &service);
            let has_incident = self.s.alerts.contains_key(&own_incident);
            let revision = self.next_revision();
            if let Some(active) = self.s.alerts.get_mut(&id) {
                if has_incident {
                    active.alert.incident_id = Some(own_incident);
                    active.alert.root_cause = Some(service.clone());
                }
                active.suppressed = false;
                active.dirty = false;
                active.alert.revision = revision;
                self.out.push(Transition {
                    kind: TransitionKind::Fired,
                    alert: active.alert.clone(),
                });
            }
        }
        for (id, service, sums) in resolve {
            let summary = format!(
                "{service}: failure rate back to {:.1}% of {} over the last {} s",
                sums.ratio() * 100.0,
                sums.total,
                r.window_secs
            );
            self.resolve(&id, now, Some(summary), None);
        }
    }

    /// Re-attributes incidents whose root turned out to fail because of a deeper service,
    /// attaches a root's own alerts to its incident, and attaches alerts that fired on their
    /// own to an incident whose root became known since.
    fn tick_grouping(&mut self, now: u64) {
        if !self.rules.root_cause.enabled {
            return;
        }
        let incidents: Vec<(String, String)> = self
            .s
            .alerts
            .values()
            .filter(|a| a.kind == Kind::Incident)
            .map(|a| (a.alert.id.clone(), a.alert.service.clone()))
            .collect();
        for (id, root) in incidents {
            if !self.s.alerts.contains_key(&id) {
                continue;
            }
            match self.find_root(&root, now) {
                Some((deeper, cause)) if deeper != root => {
                    self.merge_incident(&id, &root, &deeper, &cause, now);
                }
                _ => self.attach_own(&root, &id),
            }
        }
        let candidates: Vec<(String, String, Option<String>, String)> = self
            .s
            .alerts
            .values()
            .filter(|a| a.alert.incident_id.is_none() && !a.suppressed)
            .filter(|a| a.target.is_some() || a.alert.rule == rule::ERROR_RATE)
            .map(|a| {
                (
                    a.alert.id.clone(),
                    a.alert.service.clone(),
                    a.target.clone(),
                    a.alert.rule.clone(),
                )
            })
            .collect();
        for (id, service, target, rule_name) in candidates {
            let root = match &target {
                Some(t) => self.find_root(t, now),
                None => self.explained_root(&service, now),
            };
            let Some((root, cause)) = root else { continue };
            if root == service && rule_name == rule::ERROR_RATE {
                continue;
            }
            let Some(active) = self.s.alerts.get(&id) else {
                continue;
            };
            let (occurrences, first_trace, time) = (
                active.alert.occurrences.max(1),
                active.alert.example_trace_ids.first().cloned(),
                active.alert.last_seen_unix_nano,
            );
            let incident = self.group_into(
                &root,
                &cause,
                &service,
                occurrences,
                first_trace.as_deref(),
                time,
                now,
            );
            if let Some(active) = self.s.alerts.get_mut(&id) {
                active.alert.incident_id = Some(incident);
                active.alert.root_cause = Some(root);
                active.dirty = true;
            }
        }
    }

    /// The deeper service whose failure explains `service`'s own, if there is one.
    fn explained_root(&self, service: &str, now: u64) -> Option<(String, String)> {
        self.find_root(service, now)
            .filter(|(root, _)| root != service)
    }

    /// Attaches the root's own firing alerts (it is down, its error rate is high) that are
    /// not in an incident yet to its incident `incident`.
    fn attach_own(&mut self, root: &str, incident: &str) {
        let own: Vec<String> = self
            .root_index
            .get(root)
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default();
        for alert_id in own {
            if let Some(active) = self.s.alerts.get_mut(&alert_id) {
                if active.alert.incident_id.is_none() {
                    active.alert.incident_id = Some(incident.to_string());
                    active.alert.root_cause = Some(root.to_string());
                    active.dirty = true;
                }
            }
        }
    }

    /// Folds the incident `id` of `root` into the incident of `deeper`, which explains
    /// `root`'s failures: everything grouped under it moves there, `root` becomes one of its
    /// dependents, and the old incident resolves with `reason=merged`.
    fn merge_incident(&mut self, id: &str, root: &str, deeper: &str, cause: &str, now: u64) {
        let Some(old) = self.s.alerts.get(id) else {
            return;
        };
        let occurrences = old.alert.occurrences.max(1);
        let examples = old.alert.example_trace_ids.clone();
        let (first_seen, last_seen) = (
            old.alert.first_seen_unix_nano,
            old.alert.last_seen_unix_nano,
        );
        let dependents = old.dependents.clone();
        let target = self.group_into(
            deeper,
            cause,
            root,
            occurrences,
            examples.first().map(String::as_str),
            last_seen,
            now,
        );
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.s.alerts.get_mut(&target) {
            active
                .dependents
                .extend(dependents.into_iter().filter(|d| d != deeper));
            let a = &mut active.alert;
            a.first_seen_unix_nano = a.first_seen_unix_nano.min(first_seen);
            for t in &examples {
                add_example(&mut a.example_trace_ids, t, max_examples);
            }
            a.labels
                .insert("dependents".into(), join(&active.dependents));
            a.summary = incident_summary(deeper, cause, &active.dependents, a.occurrences);
        }
        for active in self.s.alerts.values_mut() {
            if active.alert.id != id && active.alert.incident_id.as_deref() == Some(id) {
                active.alert.incident_id = Some(target.clone());
                active.alert.root_cause = Some(deeper.to_string());
                active.dirty = true;
            }
        }
        if let Some(active) = self.s.alerts.get_mut(id) {
            active
                .alert
                .labels
                .insert("merged_into".into(), target.clone());
        }
        let summary =
            format!("{root} fails because its calls into {deeper} fail: merged into the incident of {deeper}");
        self.resolve(id, now, Some(summary), Some(("reason", "merged")));
    }

    fn tick_expiry(&mut self, now: u64) {
        let window = self
            .rules
            .root_cause
            .window_secs
            .saturating_mul(NANOS_PER_SEC);
        let mut expired = Vec::new();
        for (id, active) in &self.s.alerts {
            match active.kind {
                Kind::Event => {
                    let cooldown = self.rules.cooldown_nanos(&active.alert.rule);
                    if now.saturating_sub(active.last_hit) > cooldown {
                        let summary = format!(
                            "{} (no repeat for {}, {} occurrences)",
                            active.alert.summary,
                            fmt_secs(cooldown),
                            active.alert.occurrences
                        );
                        expired.push((id.clone(), summary));
                    }
                }
                Kind::Incident => {
                    let root = active.alert.service.as_str();
                    if now.saturating_sub(active.last_hit) > window
                        && self.unhealthy(root, now).is_none()
                    {
                        let summary = format!(
                            "{root} recovered; {} failures of {} had been grouped under it",
                            active.alert.occurrences,
                            join(&active.dependents)
                        );
                        expired.push((id.clone(), summary));
                    }
                }
                Kind::Condition => {}
            }
        }
        for (id, summary) in expired {
            self.resolve(&id, now, Some(summary), None);
        }
        // Failures older than the window no longer make their callee "failing".
        let since = now.saturating_sub(window);
        self.s.failures_into.retain(|_, callers| {
            callers.retain(|_, t| *t >= since);
            !callers.is_empty()
        });
        self.s.failure_mix.retain(|_, w| w.sums(now).total > 0);
    }

    fn flush_updates(&mut self) {
        let mut updated = Vec::new();
        for active in self.s.alerts.values_mut() {
            if active.dirty {
                active.dirty = false;
                if !active.suppressed {
                    updated.push(active.alert.id.clone());
                }
            }
        }
        for id in updated {
            let revision = self.next_revision();
            if let Some(active) = self.s.alerts.get_mut(&id) {
                active.alert.revision = revision;
                self.out.push(Transition {
                    kind: TransitionKind::Updated,
                    alert: active.alert.clone(),
                });
            }
        }
    }
}

/// An occurrence of an event rule's condition.
struct Hit<'a> {
    rule: &'static str,
    key: String,
    service: &'a str,
    instance: Option<&'a str>,
    severity: Severity,
    summary: String,
    labels: BTreeMap<String, String>,
    trace_id: Option<&'a str>,
    /// When it happened (the record's time), ns.
    time: u64,
    /// The callee it is about, for root-cause grouping.
    target: Option<&'a str>,
}

fn fingerprint(rules: &RulesConfig) -> String {
    let text = serde_json::to_string(&(&rules.span_latency, &rules.error_rate)).unwrap_or_default();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// An empty failure-mix window: `root_cause.window_secs` in at most [`MIX_BUCKETS`] buckets.
fn mix_window(rules: &RulesConfig) -> RateWindow {
    let secs = rules.root_cause.window_secs.max(1);
    let buckets = secs.min(MIX_BUCKETS);
    RateWindow::new(buckets as usize, secs.div_ceil(buckets) * NANOS_PER_SEC)
}

fn span_kind(name: &str) -> Option<SpanKind> {
    Some(match name {
        "unspecified" => SpanKind::Unspecified,
        "internal" => SpanKind::Internal,
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => return None,
    })
}

fn parse_id(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

fn nonzero(time: u64, now: u64) -> u64 {
    if time == 0 {
        now
    } else {
        time
    }
}

fn edge_key(caller: &str, callee: &str) -> String {
    format!("{caller}->{callee}")
}

fn describe_instance(service: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) if i != service => format!("{service} ({i})"),
        _ => service.to_string(),
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

fn incident_summary(
    root: &str,
    cause: &str,
    dependents: &BTreeSet<String>,
    occurrences: u64,
) -> String {
    let why = match cause {
        c if c == rule::HEARTBEAT_DOWN => "is down".to_string(),
        c if c == rule::HEARTBEAT_DELAYED => "has stopped sending heartbeats".to_string(),
        c if c == rule::ERROR_RATE => "is failing (error rate)".to_string(),
        c if c == rule::SPAN_LATENCY => "is slow (latency)".to_string(),
        CAUSE_FAILING_DEPENDENT => "is failing (a failing caller's calls into it fail)".to_string(),
        _ => "is failing (calls from several services fail)".to_string(),
    };
    let deps = dependents.iter().cloned().collect::<Vec<_>>().join(", ");
    let plural = if occurrences == 1 { "" } else { "s" };
    format!("{root} {why}: probable root cause of {occurrences} failure{plural} in {deps}")
}

/// A message with its digit runs collapsed, so "timeout after 31 ms" and "timeout after
/// 42 ms" are one alert; at most 120 characters.
fn fingerprint_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(120));
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
        if out.len() >= 120 {
            break;
        }
    }
    out
}

fn push_example(examples: &mut VecDeque<String>, trace_id: &str, max: usize) {
    if max == 0 || trace_id.is_empty() || examples.iter().any(|t| t == trace_id) {
        return;
    }
    if examples.len() >= max {
        examples.pop_front();
    }
    examples.push_back(trace_id.to_string());
}

fn add_example(examples: &mut Vec<String>, trace_id: &str, max: usize) {
    if examples.len() < max && !trace_id.is_empty() && !examples.iter().any(|t| t == trace_id) {
        examples.push(trace_id.to_string());
    }
}

/// A number without a trailing `.0`.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// Nanoseconds as whole seconds, `31 s`.
fn fmt_secs(nanos: u64) -> String {
    let secs = nanos as f64 / NANOS_PER_SEC as f64;
    if secs >= 10.0 || secs.fract() < 0.05 {
        format!("{} s", secs.round() as u64)
    } else {
        format!("{secs:.1} s")
    }
}
