//! The rule engine: records in, alert transitions out, all in memory.
//!
//! The engine reads each record once (what call it describes, which call edge it shows),
//! feeds root cause, and hands it to every registered [`rules::Rule`] in order;
//! [`Engine::tick`] runs the rules' time-driven part, then regroups incidents, resolves
//! alerts whose cooldown passed, and reports updates. Time comes from the injected
//! [`Clock`]; nothing here sleeps, does I/O, or spawns.
//!
//! The pieces:
//! - [`rules`]: one file per rule, and the list that registers them;
//! - [`lifecycle`]: fire, fold, resolve, caps, and the one constructor of an alert;
//! - [`root_cause`]: the call graph and incidents.
//!
//! Its whole state is a serializable [`EngineSnapshot`], which the stage persists before it
//! acknowledges input, so a restart resumes every alert, window and tracker as it was.

mod cache;
pub(crate) mod format;
pub(crate) mod lifecycle;
pub(crate) mod root_cause;
pub(crate) mod rules;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use dlog_core::model::{Heartbeat, LogEntry, SpanKind, SpanRecord};
use dlog_core::names;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Transition};
use crate::clock::Clock;
use crate::record::Record;
use crate::rules::{RulesConfig, RulesError};

use format::{nonzero, parse_id};
use lifecycle::{Active, Book};
use root_cause::{Graph, GraphState};
use rules::error_rate::{Outcomes, RateEntry};
use rules::{Call, LogView, Rule, RuleStates, SpanView};

pub(crate) const NANOS_PER_SEC: u64 = 1_000_000_000;
pub(crate) const NANOS_PER_MS: u64 = 1_000_000;
/// Version of the snapshot format.
const SNAPSHOT_VERSION: u32 = 1;

/// Everything the engine knows, in a form the stage persists between runs.
///
/// Root cause and the alerts have fields of their own; each rule saves its state under keys
/// of its own at the top level (`instances`, `latency`, `drift_seen`, ...), so snapshots of
/// earlier versions, written before the rules had files of their own, read the same.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    version: u32,
    /// Which rules the windows were built for; windows are dropped when the rules change.
    rules_fingerprint: String,
    /// Last revision handed out.
    seq: u64,
    alerts: BTreeMap<String, Active>,
    /// The error-rate windows, which root cause reads too.
    #[serde(default)]
    rates: BTreeMap<String, RateEntry>,
    #[serde(flatten)]
    graph: GraphState,
    /// Each rule's state, by the keys it saves under.
    #[serde(flatten)]
    rule_states: RuleStates,
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

/// What every rule shares: the settings, the clock reading, the firing alerts, root cause,
/// the error-rate windows and the counters. Rules change alerts only through it.
pub(crate) struct Context {
    pub(crate) rules: RulesConfig,
    /// Engine time of the record or tick being evaluated, ns.
    pub(crate) now: u64,
    /// Silence is measured from no earlier than this (the restore time, or the end of the
    /// last input stall the stage reported through [`Engine::note_input_gap`]), so neither
    /// a restart nor a stalled input is mistaken for the services going silent.
    pub(crate) resumed_at: u64,
    pub(crate) book: Book,
    pub(crate) graph: Graph,
    pub(crate) outcomes: Outcomes,
    pub(crate) stats: EngineStats,
    /// Transitions since the last call returned them.
    pub(crate) out: Vec<Transition>,
    /// Levels of records that are failures (the `error_log` levels, even when that rule is
    /// off), upper-case, for the failure mix.
    failure_levels: Vec<String>,
    /// The record's service changed its declared dependencies.
    declared: bool,
    /// An event rule turned the record into its alert; the ones after it leave it.
    claimed: bool,
}

impl Context {
    /// Whether the record being evaluated changed its service's declared dependencies.
    pub(crate) fn declared_now(&self) -> bool {
        self.declared
    }

    /// Marks the record as turned into an alert: event rules after this one skip it.
    pub(crate) fn claim(&mut self) {
        self.claimed = true;
    }

    /// Whether an earlier event rule turned the record into its alert.
    pub(crate) fn claimed(&self) -> bool {
        self.claimed
    }
}

/// The rule engine. See the module docs.
pub struct Engine {
    clock: Arc<dyn Clock>,
    rules_fingerprint: String,
    cx: Context,
    registry: Vec<Box<dyn Rule>>,
}

impl Engine {
    /// An engine with no history.
    pub fn new(rules: RulesConfig, clock: Arc<dyn Clock>) -> Result<Engine, RulesError> {
        rules.validate()?;
        Ok(Self::build(rules, clock, EngineSnapshot::default(), 0))
    }

    /// An engine that resumes from a snapshot taken by [`Engine::snapshot`]. Alerts,
    /// trackers and revisions carry over; windows carry over only when the rules are the
    /// same as when the snapshot was taken.
    pub fn restore(
        rules: RulesConfig,
        clock: Arc<dyn Clock>,
        snapshot: EngineSnapshot,
    ) -> Result<Engine, RulesError> {
        rules.validate()?;
        let resumed_at = clock.now_unix_nanos();
        Ok(Self::build(rules, clock, snapshot, resumed_at))
    }

    fn build(
        rules: RulesConfig,
        clock: Arc<dyn Clock>,
        mut s: EngineSnapshot,
        resumed_at: u64,
    ) -> Engine {
        let rules_fingerprint = fingerprint(&rules);
        let windows_kept = s.rules_fingerprint == rules_fingerprint;
        if !windows_kept {
            s.rates.clear();
        }
        let mut registry = rules::registry(&rules);
        for rule in &mut registry {
            rule.restore(&s.rule_states, windows_kept);
        }
        let cx = Context {
            book: Book::new(s.seq, s.alerts, &rules.root_cause.root_rules),
            graph: Graph::new(s.graph, &rules),
            outcomes: Outcomes::new(&rules, s.rates),
            failure_levels: rules
                .error_log
                .levels
                .iter()
                .map(|l| l.to_ascii_uppercase())
                .collect(),
            rules,
            now: resumed_at,
            resumed_at,
            stats: EngineStats::default(),
            out: Vec::new(),
            declared: false,
            claimed: false,
        };
        Engine {
            clock,
            rules_fingerprint,
            cx,
            registry,
        }
    }

    /// Tells the engine its input was stalled until `now` (paused for an output outage, a
    /// broker outage, a rebalance): heartbeats may sit unread in the backlog, so heartbeat
    /// silence is measured from no earlier than `now`. Instances already reported stay
    /// reported until a heartbeat arrives.
    pub fn note_input_gap(&mut self, now: u64) {
        self.cx.resumed_at = self.cx.resumed_at.max(now);
    }

    /// The rules this engine runs.
    pub fn rules(&self) -> &RulesConfig {
        &self.cx.rules
    }

    /// A copy of the engine's state, to persist.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut rule_states = RuleStates::new();
        for rule in &self.registry {
            rule.save(&mut rule_states);
        }
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            rules_fingerprint: self.rules_fingerprint.clone(),
            seq: self.cx.book.seq,
            alerts: self.cx.book.alerts.clone(),
            rates: self.cx.outcomes.entries.clone(),
            graph: self.cx.graph.s.clone(),
            rule_states,
        }
    }

    /// What the engine counted so far.
    pub fn stats(&self) -> EngineStats {
        self.cx.stats
    }

    /// Number of alerts firing (folded ones included).
    pub fn firing_count(&self) -> usize {
        self.cx.book.alerts.len()
    }

    /// Firing alerts that are shown on their own (not folded into an incident), by id.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.cx
            .book
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
        self.cx.now = now;
        self.cx.claimed = false;
        match record {
            Record::Span(span) => self.span(span),
            Record::Log(log) => self.log(log),
            Record::Heartbeat(hb) => self.heartbeat(hb),
        }
        std::mem::take(&mut self.cx.out)
    }

    /// Evaluates the time-driven rules at `now` and reports what changed since the last call:
    /// heartbeat silence, latency percentiles and error rates, incident grouping, cooldowns,
    /// and updates of firing alerts.
    pub fn tick(&mut self, now: u64) -> Vec<Transition> {
        self.cx.now = now;
        for rule in &mut self.registry {
            rule.on_tick(&mut self.cx);
        }
        self.cx.regroup();
        self.cx.expire();
        self.cx.flush_updates();
        std::mem::take(&mut self.cx.out)
    }

    fn span(&mut self, span: &SpanRecord) {
        let cx = &mut self.cx;
        cx.stats.spans += 1;
        cx.declared = cx.declare(&span.service);
        let service = span.service.name.as_str();
        let served = matches!(span.kind, SpanKind::Server | SpanKind::Consumer)
            || span.parent_span_id.is_none();
        if span.is_error() {
            // A failed call out of the service points down; a failed request it served is
            // its own failure.
            let outbound = span.kind == SpanKind::Client;
            if outbound || served {
                cx.note_mix(service, outbound);
            }
        }
        let mut callee = None;
        let mut edge = None;
        if span.kind == SpanKind::Client {
            callee = match span.peer_service() {
                Some(peer) if !peer.is_empty() => Some(peer.to_string()),
                _ => parse_id(&span.span_id).and_then(|id| cx.client_span(service, id)),
            };
            if let Some(t) = &callee {
                edge = cx.observe_edge(Cow::Borrowed(service), Cow::Owned(t.clone()));
            }
        } else if let Some(parent) = span.parent_span_id.as_deref().and_then(parse_id) {
            if matches!(span.kind, SpanKind::Server | SpanKind::Consumer) {
                if let Some(caller) = cx.server_span(service, parent) {
                    edge = cx.observe_edge(Cow::Owned(caller), Cow::Borrowed(service));
                }
            }
        }
        let view = SpanView { span, callee, edge };
        for rule in &mut self.registry {
            rule.on_span(&view, &mut self.cx);
        }
    }

    fn log(&mut self, log: &LogEntry) {
        let cx = &mut self.cx;
        cx.stats.logs += 1;
        cx.declared = cx.declare(&log.service);
        let service = log.service.name.as_str();
        let service_call = log.is_service_call();
        let call = if service_call { Call::of(log) } else { None };
        let mut edge = None;
        if let Some(call) = call {
            edge = cx.observe_edge(Cow::Borrowed(call.source), Cow::Borrowed(call.target));
            if !call.success {
                cx.note_mix(call.source, true);
            }
        } else if !service_call
            && cx.failure_levels.contains(&log.level)
            && log
                .attr_str(names::DEPENDENT_SERVICE)
                .is_some_and(|d| !d.is_empty() && d != service)
        {
            // An error record naming the dependency it failed on is a failure that points
            // down. One without says nothing about where the failure lies; the service's
            // spans do.
            cx.note_mix(service, true);
        }
        let view = LogView {
            log,
            time: nonzero(log.time_unix_nano, cx.now),
            service_call,
            call,
            edge,
        };
        for rule in &mut self.registry {
            rule.on_log(&view, &mut self.cx);
        }
    }

    fn heartbeat(&mut self, hb: &Heartbeat) {
        let cx = &mut self.cx;
        cx.stats.heartbeats += 1;
        cx.declared = cx.declare(&hb.service);
        for rule in &mut self.registry {
            rule.on_heartbeat(hb, &mut self.cx);
        }
    }
}

#[cfg(test)]
impl Engine {
    /// [`Context::find_root`] at engine time `now`.
    fn find_root_at(&mut self, start: &str, now: u64) -> Option<(String, String)> {
        self.cx.now = now;
        self.cx.find_root(start)
    }
}

fn fingerprint(rules: &RulesConfig) -> String {
    let text = serde_json::to_string(&(&rules.span_latency, &rules.error_rate)).unwrap_or_default();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}
