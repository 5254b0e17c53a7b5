//! Root cause: which service the failures of its dependents come from.
//!
//! The engine keeps a picture of the call graph ([`Graph`]): dependencies each service
//! declares, call edges it was seen making, recent failed calls into each service, and
//! whether a service's own failures point down (into its dependencies) or are its own.
//! Rules feed it (through [`Context`]); the questions are asked here:
//!
//! - [`Context::unhealthy`]: is a service down or failing, and why;
//! - [`Context::find_root`]: the deepest down or failing service that explains a failure;
//! - [`Context::group_into`]: count a dependent's failures into the incident of a root;
//! - [`Context::regroup`], at each tick: merge incidents whose root turned out to fail
//!   because of a deeper service, and group alerts whose root became known since.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use dlog_core::model::ServiceInfo;
use serde::{Deserialize, Serialize};

use super::cache::FifoCache;
use super::format::join;
use super::lifecycle::{add_example, Active, Kind};
use super::{Context, NANOS_PER_SEC};
use crate::alert::{alert_id, rule, Alert};
use crate::rules::RulesConfig;
use crate::window::RateWindow;

/// Longest dependency chain followed when looking for a root cause.
const MAX_ROOT_DEPTH: usize = 16;
/// Most buckets of the per-service failure-mix windows.
const MIX_BUCKETS: u64 = 12;
/// Incident cause: calls into the service failed from `min_failing_callers` callers.
pub(crate) const CAUSE_FAILING_CALLERS: &str = "failing_callers";
/// Incident cause: a failing caller's failures are mostly its failed calls into the service.
pub(crate) const CAUSE_FAILING_DEPENDENT: &str = "failing_dependent";

/// The call graph as root cause sees it. The persisted part is [`GraphState`].
pub(crate) struct Graph {
    pub(crate) s: GraphState,
    /// Client spans without `peer.service`, by span id, until their child shows the callee:
    /// the caller's service.
    clients: FifoCache<String>,
    /// Server spans by parent span id (callee service), until their client span arrives.
    children: FifoCache<String>,
    /// Entries in `observed`.
    edge_count: usize,
}

/// The persisted part of the [`Graph`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GraphState {
    /// Declared dependencies per service, as its resource last announced them.
    pub(crate) declared: BTreeMap<String, Vec<String>>,
    /// Observed call edges: caller → callees.
    pub(crate) observed: BTreeMap<String, BTreeSet<String>>,
    /// Failed calls into a service: callee → caller → engine time of the last failure.
    pub(crate) failures_into: BTreeMap<String, BTreeMap<String, u64>>,
    /// Each service's own failure signals over `root_cause.window_secs`: `total` counts them
    /// all, `failed` those that were failed calls out of it (into a dependency). Says whether
    /// its failures point down (into its dependencies) or are its own.
    #[serde(default)]
    pub(crate) failure_mix: BTreeMap<String, RateWindow>,
}

impl Graph {
    /// A graph resuming from `s`, for `rules`.
    pub(crate) fn new(mut s: GraphState, rules: &RulesConfig) -> Graph {
        let shape = mix_window(rules);
        s.failure_mix.retain(|_, w| w.same_shape(&shape));
        let edge_count = s.observed.values().map(BTreeSet::len).sum();
        let span_cache = rules.root_cause.span_cache;
        Graph {
            s,
            clients: FifoCache::new(span_cache),
            children: FifoCache::new(span_cache),
            edge_count,
        }
    }

    /// Failures before `since` no longer make their callee "failing"; empty mixes go.
    pub(crate) fn forget_before(&mut self, since: u64, now: u64) {
        self.s.failures_into.retain(|_, callers| {
            callers.retain(|_, t| *t >= since);
            !callers.is_empty()
        });
        self.s.failure_mix.retain(|_, w| w.sums(now).total > 0);
    }

    /// The dependencies `service` declares.
    pub(crate) fn declared(&self, service: &str) -> &[String] {
        self.s
            .declared
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

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

/// An empty failure-mix window: `root_cause.window_secs` in at most [`MIX_BUCKETS`] buckets.
fn mix_window(rules: &RulesConfig) -> RateWindow {
    let secs = rules.root_cause.window_secs.max(1);
    let buckets = secs.min(MIX_BUCKETS);
    RateWindow::new(buckets as usize, secs.div_ceil(buckets) * NANOS_PER_SEC)
}

// ---------------------------------------------------------------- what rules report

impl Context {
    /// Remembers the dependencies a service declares. True when they changed (so drift
    /// alerts for edges it now declares can resolve).
    pub(crate) fn declare(&mut self, service: &ServiceInfo) -> bool {
        if service.dependencies.is_empty() {
            return false;
        }
        let s = &mut self.graph.s;
        if s.declared
            .get(&service.name)
            .is_some_and(|d| *d == service.dependencies)
        {
            return false;
        }
        // Bounded like the observed edges: a flood of services (or of declared dependencies)
        // must not grow the state without limit.
        let others: usize = s
            .declared
            .iter()
            .filter(|(name, _)| **name != service.name)
            .map(|(_, deps)| deps.len())
            .sum();
        if others + service.dependencies.len() > self.rules.root_cause.max_edges {
            self.stats.keys_dropped += 1;
            return false;
        }
        s.declared
            .insert(service.name.clone(), service.dependencies.clone());
        true
    }

    /// A client span of `service` whose callee is not named: remembered until the callee's
    /// server span shows it. Returns the callee when that span already arrived.
    pub(crate) fn client_span(&mut self, service: &str, span_id: u64) -> Option<String> {
        match self.graph.children.remove(span_id) {
            Some(callee) => Some(callee),
            None => {
                self.graph.clients.insert(span_id, service.to_string());
                None
            }
        }
    }

    /// A server span of `service` whose parent is `parent`: returns the caller when its
    /// client span already arrived, else remembers the callee for it.
    pub(crate) fn server_span(&mut self, service: &str, parent: u64) -> Option<String> {
        match self.graph.clients.remove(parent) {
            Some(caller) => Some(caller),
            None => {
                self.graph.children.insert(parent, service.to_string());
                None
            }
        }
    }

    /// A call edge caller → callee was seen. Returns it when it is an edge at all (not a
    /// call into itself or into nothing), so the drift rule can judge it.
    pub(crate) fn observe_edge<'e>(
        &mut self,
        caller: Cow<'e, str>,
        callee: Cow<'e, str>,
    ) -> Option<(Cow<'e, str>, Cow<'e, str>)> {
        if caller == callee || callee.is_empty() {
            return None;
        }
        let g = &mut self.graph;
        if !g
            .s
            .observed
            .get(caller.as_ref())
            .is_some_and(|s| s.contains(callee.as_ref()))
        {
            if g.edge_count >= self.rules.root_cause.max_edges {
                self.stats.keys_dropped += 1;
            } else {
                g.edge_count += 1;
                g.s.observed
                    .entry(caller.to_string())
                    .or_default()
                    .insert(callee.to_string());
            }
        }
        Some((caller, callee))
    }

    /// `caller` failed calling `callee` (a failed call, or an error record naming it).
    pub(crate) fn note_failure(&mut self, caller: &str, callee: &str) {
        if !self.rules.root_cause.enabled || caller == callee {
            return;
        }
        let s = &mut self.graph.s;
        let known = s
            .failures_into
            .get(callee)
            .is_some_and(|m| m.contains_key(caller));
        if !known
            && s.failures_into.values().map(BTreeMap::len).sum::<usize>()
                >= self.rules.root_cause.max_edges
        {
            self.stats.keys_dropped += 1;
            return;
        }
        s.failures_into
            .entry(callee.to_string())
            .or_default()
            .insert(caller.to_string(), self.now);
    }

    /// Counts one failure signal of `service` in its failure mix: `outbound` when it was a
    /// failed call into a dependency.
    pub(crate) fn note_mix(&mut self, service: &str, outbound: bool) {
        if !self.rules.root_cause.enabled {
            return;
        }
        let now = self.now;
        let mix = &mut self.graph.s.failure_mix;
        if let Some(window) = mix.get_mut(service) {
            window.record(now, outbound);
            return;
        }
        if mix.len() >= self.rules.root_cause.max_edges {
            self.stats.keys_dropped += 1;
            return;
        }
        let mut window = mix_window(&self.rules);
        window.record(now, outbound);
        mix.insert(service.to_string(), window);
    }
}

// ---------------------------------------------------------------- questions

impl Context {
    /// Why `service` counts as down or failing now, if it does: the first of
    /// `root_cause.root_rules` firing for it; failed calls into it from enough callers; or a
    /// failing caller whose failures point down and that failed into it.
    pub(crate) fn unhealthy(&self, service: &str) -> Option<String> {
        if !self.rules.root_cause.enabled {
            return None;
        }
        self.cause_of(service, &mut BTreeMap::new())
    }

    /// [`Context::unhealthy`], remembering in `seen` which services were judged during this
    /// question (`None`: being judged), so a loop of callers ends and each is judged once.
    fn cause_of(&self, service: &str, seen: &mut BTreeMap<String, Option<bool>>) -> Option<String> {
        let rc = &self.rules.root_cause;
        if let Some(ids) = self.book.root_index.get(service) {
            for wanted in &rc.root_rules {
                if ids.values().any(|r| r == wanted) {
                    return Some(wanted.clone());
                }
            }
        }
        if rc.min_failing_callers == 0 {
            return None;
        }
        let since = self.window_start();
        let callers = self.graph.s.failures_into.get(service)?;
        let recent = || callers.iter().filter(|(_, t)| **t >= since).map(|(c, _)| c);
        if recent().count() >= rc.min_failing_callers {
            return Some(CAUSE_FAILING_CALLERS.to_string());
        }
        // A caller that is down or failing, whose failures are mostly failed calls into its
        // dependencies, and that failed into this service, is failing because of it, unless
        // this service's own error rate shows it healthy.
        if seen.len() >= MAX_ROOT_DEPTH * 4 || self.outcomes.shows_healthy(service, self.now) {
            return None;
        }
        seen.insert(service.to_string(), None);
        let mut found = false;
        for caller in recent() {
            if !self.passes_on(caller) {
                continue;
            }
            let failing = match seen.get(caller.as_str()) {
                Some(known) => known.unwrap_or(false),
                None => self.cause_of(caller, seen).is_some(),
            };
            if failing {
                found = true;
                break;
            }
        }
        seen.insert(service.to_string(), Some(found));
        found.then(|| CAUSE_FAILING_DEPENDENT.to_string())
    }

    /// Start of the root-cause window ending now.
    fn window_start(&self) -> u64 {
        self.now.saturating_sub(
            self.rules
                .root_cause
                .window_secs
                .saturating_mul(NANOS_PER_SEC),
        )
    }

    /// Where `service`'s own failures in the window point.
    fn lean(&self, service: &str) -> Lean {
        let Some(window) = self.graph.s.failure_mix.get(service) else {
            return Lean::Silent;
        };
        let sums = window.sums(self.now);
        if sums.total == 0 {
            Lean::Silent
        } else if sums.failed * 2 >= sums.total {
            Lean::Down
        } else {
            Lean::Own
        }
    }

    /// Share of `service`'s failure signals in the window that were failed calls out of it.
    fn outbound_share(&self, service: &str) -> f64 {
        self.graph
            .s
            .failure_mix
            .get(service)
            .map_or(0.0, |w| w.sums(self.now).ratio())
    }

    /// Whether `caller` failed calling `callee` within the window.
    fn failed_into(&self, caller: &str, callee: &str) -> bool {
        let since = self.window_start();
        self.graph
            .s
            .failures_into
            .get(callee)
            .and_then(|callers| callers.get(caller))
            .is_some_and(|t| *t >= since)
    }

    /// Whether a heartbeat rule makes `service` down or failing: a service that is not
    /// running is its own root cause, whatever its dependencies do.
    fn down_by_heartbeat(&self, service: &str) -> bool {
        self.book.root_index.get(service).is_some_and(|ids| {
            ids.values()
                .any(|r| r == rule::HEARTBEAT_DOWN || r == rule::HEARTBEAT_DELAYED)
        })
    }

    /// Whether `service`'s failures are explained by its dependencies rather than its own:
    /// they point down, and it is not down by heartbeat.
    fn passes_on(&self, service: &str) -> bool {
        self.lean(service) == Lean::Down && !self.down_by_heartbeat(service)
    }

    /// The probable root cause behind a failure into (or of) `start`: the deepest down or
    /// failing service reached by following, from `start`, the dependencies that explain
    /// each service's failures. See [`Context::walk`].
    pub(crate) fn find_root(&self, start: &str) -> Option<(String, String)> {
        if !self.rules.root_cause.enabled {
            return None;
        }
        let cause = self.unhealthy(start);
        let mut path = Vec::new();
        let mut visited = BTreeSet::new();
        match self.walk(start, cause, &mut path, &mut visited) {
            Walk::Root(root, cause) => Some((root, cause)),
            Walk::Nothing | Walk::Cycle(..) => None,
        }
    }

    /// The deeper service whose failure explains `service`'s own, if there is one.
    pub(crate) fn explained_root(&self, service: &str) -> Option<(String, String)> {
        self.find_root(service).filter(|(root, _)| root != service)
    }

    /// One step of [`Context::find_root`] at `service` (down or failing for `cause`, or the
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
        path: &mut Vec<String>,
        visited: &mut BTreeSet<String>,
    ) -> Walk {
        visited.insert(service.to_string());
        let depth = path.len();
        let lean = self.lean(service);
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
                if dep == service || (lean == Lean::Down && !self.failed_into(service, &dep)) {
                    continue;
                }
                let found = if let Some(head) = path.iter().position(|p| *p == dep) {
                    Walk::Cycle(head, Vec::new())
                } else if visited.contains(&dep) {
                    Walk::Nothing
                } else {
                    match self.unhealthy(&dep) {
                        Some(dep_cause) => self.walk(&dep, Some(dep_cause), path, visited),
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
                if let Some((root, why)) = self.cycle_root(&members) {
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
    fn cycle_root(&self, members: &[String]) -> Option<(String, String)> {
        let with_incident = members
            .iter()
            .filter(|m| self.is_firing(&alert_id(rule::INCIDENT, m)))
            .min();
        let root = with_incident.or_else(|| {
            members.iter().min_by(|a, b| {
                self.outbound_share(a)
                    .total_cmp(&self.outbound_share(b))
                    .then_with(|| a.cmp(b))
            })
        })?;
        let cause = self.unhealthy(root)?;
        Some((root.clone(), cause))
    }

    /// Declared and observed dependencies of a service, declared first, without repeats.
    fn dependencies(&self, service: &str) -> Vec<String> {
        let mut deps: Vec<String> = self.graph.declared(service).to_vec();
        if let Some(observed) = self.graph.s.observed.get(service) {
            for d in observed {
                if !deps.contains(d) {
                    deps.push(d.clone());
                }
            }
        }
        deps
    }
}

// ---------------------------------------------------------------- incidents

impl Context {
    /// Counts `occurrences` failures of `dependent` into the incident of `root`, opening the
    /// incident if there is none. Returns the incident id.
    pub(crate) fn group_into(
        &mut self,
        root: &str,
        cause: &str,
        dependent: &str,
        occurrences: u64,
        trace_id: Option<&str>,
        time: u64,
    ) -> String {
        let now = self.now;
        let id = alert_id(rule::INCIDENT, root);
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.book.alerts.get_mut(&id) {
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
        let mut alert = Alert::firing(
            rule::INCIDENT,
            root.to_string(),
            self.rules.root_cause.severity,
            root,
            incident_summary(root, cause, &dependents, occurrences),
            time,
        )
        .with_occurrences(occurrences)
        .with_examples(
            trace_id
                .filter(|t| !t.is_empty())
                .map(|t| vec![t.to_string()])
                .unwrap_or_default(),
        )
        .with_labels(labels);
        alert.root_cause = Some(root.to_string());
        alert.incident_id = Some(id.clone());
        let mut active = Active::new(alert, Kind::Incident, now);
        active.dependents = dependents;
        self.fire(active);
        // The root's own alerts (it is down, its error rate is high) belong to the incident.
        self.attach_own(root, &id);
        id
    }

    /// Re-attributes incidents whose root turned out to fail because of a deeper service,
    /// attaches a root's own alerts to its incident, and attaches alerts that fired on their
    /// own to an incident whose root became known since.
    pub(crate) fn regroup(&mut self) {
        if !self.rules.root_cause.enabled {
            return;
        }
        let incidents: Vec<(String, String)> = self
            .book
            .alerts
            .values()
            .filter(|a| a.kind == Kind::Incident)
            .map(|a| (a.alert.id.clone(), a.alert.service.clone()))
            .collect();
        for (id, root) in incidents {
            if !self.is_firing(&id) {
                continue;
            }
            match self.find_root(&root) {
                Some((deeper, cause)) if deeper != root => {
                    self.merge_incident(&id, &root, &deeper, &cause);
                }
                _ => self.attach_own(&root, &id),
            }
        }
        let candidates: Vec<(String, String, Option<String>, String)> = self
            .book
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
                Some(t) => self.find_root(t),
                None => self.explained_root(&service),
            };
            let Some((root, cause)) = root else { continue };
            if root == service && rule_name == rule::ERROR_RATE {
                continue;
            }
            let Some(active) = self.book.alerts.get(&id) else {
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
            );
            self.join_incident(&id, incident, root, true);
        }
    }

    /// Marks the alert `id` part of `incident`, whose root is `root`.
    pub(crate) fn join_incident(&mut self, id: &str, incident: String, root: String, dirty: bool) {
        if let Some(active) = self.book.alerts.get_mut(id) {
            active.alert.incident_id = Some(incident);
            active.alert.root_cause = Some(root);
            active.dirty = dirty;
        }
    }

    /// Attaches the root's own firing alerts (it is down, its error rate is high) that are
    /// not in an incident yet to its incident `incident`.
    fn attach_own(&mut self, root: &str, incident: &str) {
        let own: Vec<String> = self
            .book
            .root_index
            .get(root)
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default();
        for alert_id in own {
            if let Some(active) = self.book.alerts.get_mut(&alert_id) {
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
    fn merge_incident(&mut self, id: &str, root: &str, deeper: &str, cause: &str) {
        let Some(old) = self.book.alerts.get(id) else {
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
        );
        let max_examples = self.rules.defaults.max_example_traces;
        if let Some(active) = self.book.alerts.get_mut(&target) {
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
        for active in self.book.alerts.values_mut() {
            if active.alert.id != id && active.alert.incident_id.as_deref() == Some(id) {
                active.alert.incident_id = Some(target.clone());
                active.alert.root_cause = Some(deeper.to_string());
                active.dirty = true;
            }
        }
        if let Some(active) = self.book.alerts.get_mut(id) {
            active
                .alert
                .labels
                .insert("merged_into".into(), target.clone());
        }
        let summary =
            format!("{root} fails because its calls into {deeper} fail: merged into the incident of {deeper}");
        self.resolve(id, Some(summary), Some(("reason", "merged")));
    }
}

/// The one-line summary of an incident.
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
