//! The life of an alert: fire, fold repeats in, update, resolve, and the caps on how many
//! fire at once. Every rule goes through here; none builds or emits an [`Alert`] itself.
//!
//! - [`Alert::firing`] is the one constructor of a new alert;
//! - [`Context::hit`] is one occurrence of an event rule's condition: it fires the alert, or
//!   folds the occurrence into the firing one, and groups it under a root cause;
//! - [`Context::fire`] starts a condition (or incident) alert;
//! - [`Context::resolve`] ends one;
//! - the engine's tick calls [`Context::expire`] (cooldowns, recovered incidents) and
//!   [`Context::flush_updates`] (one `updated` event per changed alert).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::format::{fmt_secs, join};
use super::{Context, NANOS_PER_SEC};
use crate::alert::{alert_id, rule, Alert, AlertState, Severity, Transition, TransitionKind};

/// How an alert ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// Each record is an occurrence; resolves after the cooldown without one.
    Event,
    /// Holds while a condition does; resolved by the rule that raised it.
    Condition,
    /// Groups failures under a root cause; resolves once the root is healthy and quiet.
    Incident,
}

/// Which cap an alert counts toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// `defaults.max_active_alerts`.
    Shared,
    /// None: the rule bounds its alerts itself, so they neither crowd out nor are crowded
    /// out by the others: dependency drift (once per edge, at most `root_cause.max_edges`),
    /// and heartbeat silence (two per tracked instance, at most `heartbeat.max_instances`),
    /// so a flood of error alerts never hides that a service is down.
    Own,
}

impl Pool {
    /// The pool of a rule's alerts.
    pub(crate) fn of(rule_name: &str) -> Pool {
        match rule_name {
            rule::DEPENDENCY_DRIFT | rule::HEARTBEAT_DELAYED | rule::HEARTBEAT_DOWN => Pool::Own,
            _ => Pool::Shared,
        }
    }
}

/// An alert that is firing (possibly folded into an incident and not shown on its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Active {
    pub(crate) alert: Alert,
    pub(crate) kind: Kind,
    /// Engine time of the last occurrence, ns.
    pub(crate) last_hit: u64,
    /// Folded into an incident: never emitted on its own.
    pub(crate) suppressed: bool,
    /// Changed since the last emitted event.
    pub(crate) dirty: bool,
    /// The callee a failure was about (failed calls, error logs naming a dependency).
    pub(crate) target: Option<String>,
    /// Incidents: the services whose failures were grouped into it.
    pub(crate) dependents: BTreeSet<String>,
    /// Whether it makes its service down or failing for root cause (when its rule is one of
    /// `root_cause.root_rules`). False for an instance that is down while another instance
    /// of its service is live: a service is down only when none of its instances is.
    #[serde(default = "yes")]
    pub(crate) root_signal: bool,
}

fn yes() -> bool {
    true
}

impl Active {
    /// A new alert of `kind`, last hit at `now`.
    pub(crate) fn new(alert: Alert, kind: Kind, now: u64) -> Active {
        Active {
            alert,
            kind,
            last_hit: now,
            suppressed: false,
            dirty: false,
            target: None,
            dependents: BTreeSet::new(),
            root_signal: true,
        }
    }
}

/// Every firing alert, and what is derived from them.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Last revision handed out.
    pub(crate) seq: u64,
    /// Firing alerts by id.
    pub(crate) alerts: BTreeMap<String, Active>,
    /// Firing alerts in [`Pool::Own`], which do not count toward the shared cap.
    own_pool: usize,
    /// Firing alerts of `root_cause.root_rules` per service: alert id → rule.
    pub(crate) root_index: HashMap<String, BTreeMap<String, String>>,
}

impl Book {
    /// A book holding `alerts` (restored from a snapshot).
    pub(crate) fn new(seq: u64, alerts: BTreeMap<String, Active>, root_rules: &[String]) -> Book {
        let mut book = Book {
            seq,
            alerts,
            own_pool: 0,
            root_index: HashMap::new(),
        };
        book.own_pool = book
            .alerts
            .values()
            .filter(|a| Pool::of(&a.alert.rule) == Pool::Own)
            .count();
        let firing: Vec<(String, String, String)> = book
            .alerts
            .values()
            .filter(|a| a.root_signal)
            .map(|a| {
                (
                    a.alert.service.clone(),
                    a.alert.id.clone(),
                    a.alert.rule.clone(),
                )
            })
            .collect();
        for (service, id, rule_name) in firing {
            book.index_root(root_rules, &service, &id, &rule_name, true);
        }
        book
    }

    /// Firing alerts that count toward `defaults.max_active_alerts`.
    fn shared_pool(&self) -> usize {
        self.alerts.len().saturating_sub(self.own_pool)
    }

    fn index_root(
        &mut self,
        root_rules: &[String],
        service: &str,
        id: &str,
        rule_name: &str,
        add: bool,
    ) {
        if !root_rules.iter().any(|r| r == rule_name) {
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
}

/// Longest text field of an alert (summary, key, service, each label value, ...), bytes.
/// An ERROR log of 500 KB must not make a 1 MB alert event, which Kafka refuses for good.
pub const MAX_ALERT_TEXT_BYTES: usize = 4096;

/// Cuts `text` to at most [`MAX_ALERT_TEXT_BYTES`] (at a character boundary), saying how
/// much was cut.
fn bound_text(text: &mut String) {
    if text.len() <= MAX_ALERT_TEXT_BYTES {
        return;
    }
    let cut = text.len() - MAX_ALERT_TEXT_BYTES;
    let marker = format!("… [{cut} more bytes cut]");
    let mut end = MAX_ALERT_TEXT_BYTES.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&marker);
}

impl Alert {
    /// Caps every text field at [`MAX_ALERT_TEXT_BYTES`], so every output can take it.
    pub(crate) fn bound(&mut self) {
        bound_text(&mut self.key);
        bound_text(&mut self.service);
        bound_text(&mut self.summary);
        if let Some(instance) = &mut self.instance {
            bound_text(instance);
        }
        if let Some(root) = &mut self.root_cause {
            bound_text(root);
        }
        for trace in &mut self.example_trace_ids {
            bound_text(trace);
        }
        for value in self.labels.values_mut() {
            bound_text(value);
        }
    }

    /// A new firing alert of `rule_name` for `key`, first and last seen at `time`, seen
    /// once; the `with_*` methods set the rest.
    pub(crate) fn firing(
        rule_name: &str,
        key: String,
        severity: Severity,
        service: &str,
        summary: String,
        time: u64,
    ) -> Alert {
        Alert {
            id: alert_id(rule_name, &key),
            rule: rule_name.to_string(),
            key,
            severity,
            state: AlertState::Firing,
            service: service.to_string(),
            instance: None,
            summary,
            first_seen_unix_nano: time,
            last_seen_unix_nano: time,
            occurrences: 1,
            example_trace_ids: Vec::new(),
            root_cause: None,
            incident_id: None,
            labels: BTreeMap::new(),
            revision: 0,
        }
    }

    /// The service instance it is about.
    pub(crate) fn with_instance(mut self, instance: Option<&str>) -> Alert {
        self.instance = instance.map(str::to_string);
        self
    }

    /// Rule-specific details.
    pub(crate) fn with_labels(mut self, labels: BTreeMap<String, String>) -> Alert {
        self.labels = labels;
        self
    }

    /// Example traces.
    pub(crate) fn with_examples(mut self, examples: Vec<String>) -> Alert {
        self.example_trace_ids = examples;
        self
    }

    /// How many times the condition was seen.
    pub(crate) fn with_occurrences(mut self, occurrences: u64) -> Alert {
        self.occurrences = occurrences;
        self
    }
}

/// An occurrence of an event rule's condition.
pub(crate) struct Hit<'a> {
    pub(crate) rule: &'static str,
    pub(crate) key: String,
    pub(crate) service: &'a str,
    pub(crate) instance: Option<&'a str>,
    pub(crate) severity: Severity,
    pub(crate) summary: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) trace_id: Option<&'a str>,
    /// When it happened (the record's time), ns.
    pub(crate) time: u64,
    /// The callee it is about, for root-cause grouping.
    pub(crate) target: Option<&'a str>,
}

impl Context {
    /// Whether the alert `id` is firing.
    pub(crate) fn is_firing(&self, id: &str) -> bool {
        self.book.alerts.contains_key(id)
    }

    /// One occurrence of an event rule's condition: fire, or fold into the firing alert.
    pub(crate) fn hit(&mut self, hit: Hit<'_>) {
        let now = self.now;
        let id = alert_id(hit.rule, &hit.key);
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.book.alerts.get_mut(&id) {
            let a = &mut active.alert;
            a.occurrences += 1;
            a.first_seen_unix_nano = a.first_seen_unix_nano.min(hit.time);
            a.last_seen_unix_nano = a.last_seen_unix_nano.max(hit.time);
            a.summary = hit.summary;
            a.labels = hit.labels;
            if let Some(t) = hit.trace_id {
                add_example(&mut a.example_trace_ids, t, max_examples);
            }
            a.bound();
            active.last_hit = now;
            active.dirty = true;
            let incident = a.incident_id.clone();
            let root = a.root_cause.clone();
            // Still the same root while it is down or failing; otherwise look again.
            let current = match (incident, root) {
                (Some(_), Some(root)) => self.unhealthy(&root).map(|cause| (root, cause)),
                _ => None,
            };
            match current {
                Some((root, cause)) => {
                    self.group_into(&root, &cause, hit.service, 1, hit.trace_id, hit.time);
                }
                None => {
                    if let Some(target) = hit.target {
                        if let Some((root, cause)) = self.find_root(target) {
                            let incident = self.group_into(
                                &root,
                                &cause,
                                hit.service,
                                1,
                                hit.trace_id,
                                hit.time,
                            );
                            if let Some(active) = self.book.alerts.get_mut(&id) {
                                active.alert.incident_id = Some(incident);
                                active.alert.root_cause = Some(root);
                            }
                        }
                    }
                }
            }
            return;
        }
        let mut alert = Alert::firing(
            hit.rule,
            hit.key,
            hit.severity,
            hit.service,
            hit.summary,
            hit.time,
        )
        .with_instance(hit.instance)
        .with_labels(hit.labels)
        .with_examples(
            hit.trace_id
                .filter(|t| !t.is_empty())
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
        );
        if !self.has_room(&alert, Kind::Event) {
            self.stats.alerts_dropped += 1;
            return;
        }
        let mut suppressed = false;
        if let Some(target) = hit.target {
            if let Some((root, cause)) = self.find_root(target) {
                let incident =
                    self.group_into(&root, &cause, hit.service, 1, hit.trace_id, hit.time);
                alert.incident_id = Some(incident);
                alert.root_cause = Some(root);
                suppressed = true;
            }
        }
        let mut active = Active::new(alert, Kind::Event, now);
        active.suppressed = suppressed;
        active.target = hit.target.map(str::to_string);
        self.fire(active);
    }

    /// Whether a new alert fits under its cap. Incidents always do: they only group
    /// alerts that already fired.
    fn has_room(&self, alert: &Alert, kind: Kind) -> bool {
        kind == Kind::Incident
            || match Pool::of(&alert.rule) {
                Pool::Own => true,
                Pool::Shared => self.book.shared_pool() < self.rules.defaults.max_active_alerts,
            }
    }

    /// Starts firing `active` (emitting it unless it is folded into an incident). False when
    /// it was dropped because its cap is reached.
    pub(crate) fn fire(&mut self, mut active: Active) -> bool {
        if !self.has_room(&active.alert, active.kind) {
            self.stats.alerts_dropped += 1;
            return false;
        }
        active.alert.bound();
        if !active.suppressed {
            active.alert.revision = self.next_revision();
            self.out.push(Transition {
                kind: TransitionKind::Fired,
                alert: active.alert.clone(),
            });
        }
        let a = &active.alert;
        self.book.index_root(
            &self.rules.root_cause.root_rules,
            &a.service,
            &a.id,
            &a.rule,
            active.root_signal,
        );
        if Pool::of(&a.rule) == Pool::Own && !self.book.alerts.contains_key(&a.id) {
            self.book.own_pool += 1;
        }
        self.book.alerts.insert(a.id.clone(), active);
        true
    }

    /// Sets whether the firing alert `id` makes its service down or failing for root cause.
    pub(crate) fn set_root_signal(&mut self, id: &str, signal: bool) {
        let Some(active) = self.book.alerts.get_mut(id) else {
            return;
        };
        if active.root_signal == signal {
            return;
        }
        active.root_signal = signal;
        let (service, rule_name) = (active.alert.service.clone(), active.alert.rule.clone());
        self.book.index_root(
            &self.rules.root_cause.root_rules,
            &service,
            id,
            &rule_name,
            signal,
        );
    }

    /// Resolves a firing alert (emitting it unless it was folded into an incident), with a
    /// new summary and an extra label if given.
    pub(crate) fn resolve(
        &mut self,
        id: &str,
        summary: Option<String>,
        label: Option<(&str, &str)>,
    ) {
        self.resolve_with(id, summary, label.as_slice());
    }

    /// [`Context::resolve`] with any number of extra labels.
    pub(crate) fn resolve_with(
        &mut self,
        id: &str,
        summary: Option<String>,
        labels: &[(&str, &str)],
    ) {
        let Some(mut active) = self.book.alerts.remove(id) else {
            return;
        };
        if Pool::of(&active.alert.rule) == Pool::Own {
            self.book.own_pool = self.book.own_pool.saturating_sub(1);
        }
        self.book.index_root(
            &self.rules.root_cause.root_rules,
            &active.alert.service,
            id,
            &active.alert.rule,
            false,
        );
        if active.suppressed {
            return;
        }
        let a = &mut active.alert;
        a.state = AlertState::Resolved;
        if active.kind != Kind::Event {
            a.last_seen_unix_nano = a.last_seen_unix_nano.max(self.now);
        }
        if let Some(summary) = summary {
            a.summary = summary;
        }
        for (k, v) in labels {
            a.labels.insert(k.to_string(), v.to_string());
        }
        a.bound();
        a.revision = self.next_revision();
        self.out.push(Transition {
            kind: TransitionKind::Resolved,
            alert: active.alert,
        });
    }

    /// Emits a firing alert that was held back (suppressed) as fired after all.
    pub(crate) fn show(&mut self, id: &str) {
        let revision = self.next_revision();
        if let Some(active) = self.book.alerts.get_mut(id) {
            active.suppressed = false;
            active.dirty = false;
            active.alert.revision = revision;
            active.alert.bound();
            self.out.push(Transition {
                kind: TransitionKind::Fired,
                alert: active.alert.clone(),
            });
        }
    }

    pub(crate) fn next_revision(&mut self) -> u64 {
        self.book.seq += 1;
        self.book.seq
    }

    /// Resolves event alerts whose cooldown passed without a repeat, and incidents whose
    /// root is healthy again and that nothing was grouped into for a window; forgets
    /// failures older than the root-cause window. Like heartbeat silence, the quiet is
    /// measured from no earlier than the restore or the last input stall: repeats sent while
    /// the alerter was down or taking over are still in the backlog.
    pub(crate) fn expire(&mut self) {
        let now = self.now;
        let quiet_since = |last_hit: u64| last_hit.max(self.resumed_at);
        let window = self
            .rules
            .root_cause
            .window_secs
            .saturating_mul(NANOS_PER_SEC);
        let mut expired = Vec::new();
        for (id, active) in &self.book.alerts {
            match active.kind {
                Kind::Event => {
                    let cooldown = self.rules.cooldown_nanos(&active.alert.rule);
                    if now.saturating_sub(quiet_since(active.last_hit)) > cooldown {
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
                    if now.saturating_sub(quiet_since(active.last_hit)) > window
                        && self.unhealthy(root).is_none()
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
            self.resolve(&id, Some(summary), None);
        }
        self.graph.forget_before(now.saturating_sub(window), now);
    }

    /// One `updated` event per shown alert that changed since its last event.
    pub(crate) fn flush_updates(&mut self) {
        let mut updated = Vec::new();
        for active in self.book.alerts.values_mut() {
            if active.dirty {
                active.dirty = false;
                if !active.suppressed {
                    updated.push(active.alert.id.clone());
                }
            }
        }
        for id in updated {
            let revision = self.next_revision();
            if let Some(active) = self.book.alerts.get_mut(&id) {
                active.alert.revision = revision;
                active.alert.bound();
                self.out.push(Transition {
                    kind: TransitionKind::Updated,
                    alert: active.alert.clone(),
                });
            }
        }
    }
}

/// Adds a trace to an alert's examples, up to `max`, without repeats.
pub(crate) fn add_example(examples: &mut Vec<String>, trace_id: &str, max: usize) {
    if examples.len() < max && !trace_id.is_empty() && !examples.iter().any(|t| t == trace_id) {
        examples.push(trace_id.to_string());
    }
}
