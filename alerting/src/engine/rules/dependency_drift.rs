//! Rule 7, `dependency_drift`: one informational alert per call edge to a service the
//! caller did not declare as a dependency. It resolves when the caller declares it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use dlog_core::model::{Heartbeat, ServiceInfo};
use serde::{Deserialize, Serialize};

use super::{load_state, save_state, LogView, Rule, RuleStates, SpanView};
use crate::alert::{alert_id, rule, Alert, Severity};
use crate::engine::format::edge_key;
use crate::engine::lifecycle::{Active, Kind};
use crate::engine::Context;
use crate::rules::{Invalid, RulesConfig, Section};

/// Key of the rule's state in the snapshot.
const STATE_KEY: &str = "drift_seen";

/// `[dependency_drift]`: calls to services the caller did not declare.
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

impl Section for DriftRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, _section: &str) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The rule. Raises drift once per edge, ever (bounded by `root_cause.max_edges`): the
/// edges it raised are kept across restarts, so a restart does not raise them again.
pub(crate) struct Drift {
    config: DriftRule,
    /// Most edges remembered.
    max_edges: usize,
    /// Drift already raised: caller → callees.
    seen: BTreeMap<String, BTreeSet<String>>,
    /// Entries in `seen`.
    count: usize,
}

impl Drift {
    pub(crate) fn new(config: &DriftRule, rules: &RulesConfig) -> Drift {
        Drift {
            config: config.clone(),
            max_edges: rules.root_cause.max_edges,
            seen: BTreeMap::new(),
            count: 0,
        }
    }

    /// The service's declarations changed: drift alerts for edges it now declares resolve.
    fn declared(&mut self, service: &ServiceInfo, cx: &mut Context) {
        if !cx.declared_now() {
            return;
        }
        for dep in &service.dependencies {
            let id = alert_id(rule::DEPENDENCY_DRIFT, &edge_key(&service.name, dep));
            if cx.is_firing(&id) {
                let summary = format!("{} now declares its dependency on {dep}", service.name);
                cx.resolve(&id, Some(summary), Some(("reason", "declared")));
            }
        }
    }

    /// A call edge caller → callee was seen: raise drift once per edge.
    fn edge(&mut self, edge: &Option<(Cow<'_, str>, Cow<'_, str>)>, cx: &mut Context) {
        let Some((caller, callee)) = edge else {
            return;
        };
        let (caller, callee) = (caller.as_ref(), callee.as_ref());
        if !self.config.enabled
            || self.seen.get(caller).is_some_and(|s| s.contains(callee))
            || self.config.ignore_targets.iter().any(|t| t == callee)
        {
            return;
        }
        let declared = cx.graph.declared(caller);
        if (declared.is_empty() && !self.config.check_undeclared_services)
            || declared.iter().any(|d| d == callee)
        {
            return;
        }
        if self.count >= self.max_edges {
            cx.stats.keys_dropped += 1;
            return;
        }
        let declared_list = if declared.is_empty() {
            "none".to_string()
        } else {
            declared.join(", ")
        };
        self.count += 1;
        self.seen
            .entry(caller.to_string())
            .or_default()
            .insert(callee.to_string());
        let mut labels = BTreeMap::new();
        labels.insert("caller".into(), caller.to_string());
        labels.insert("callee".into(), callee.to_string());
        labels.insert("declared".into(), declared_list.clone());
        let alert = Alert::firing(
            rule::DEPENDENCY_DRIFT,
            edge_key(caller, callee),
            self.config.severity,
            caller,
            format!(
                "{caller} calls {callee}, which is not among its declared dependencies ({declared_list})"
            ),
            cx.now,
        )
        .with_labels(labels);
        let now = cx.now;
        cx.fire(Active::new(alert, Kind::Condition, now));
    }
}

impl Rule for Drift {
    fn on_span(&mut self, span: &SpanView<'_>, cx: &mut Context) {
        self.declared(&span.span.service, cx);
        self.edge(&span.edge, cx);
    }

    fn on_log(&mut self, log: &LogView<'_>, cx: &mut Context) {
        self.declared(&log.log.service, cx);
        self.edge(&log.edge, cx);
    }

    fn on_heartbeat(&mut self, heartbeat: &Heartbeat, cx: &mut Context) {
        self.declared(&heartbeat.service, cx);
    }

    fn save(&self, into: &mut RuleStates) {
        save_state(into, STATE_KEY, &self.seen);
    }

    fn restore(&mut self, from: &RuleStates, _windows_kept: bool) {
        if let Some(seen) = load_state(from, STATE_KEY) {
            self.seen = seen;
        }
        self.count = self.seen.values().map(BTreeSet::len).sum();
    }
}
