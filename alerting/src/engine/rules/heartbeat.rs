//! Rule 4, `heartbeat_delayed` / `heartbeat_down`: an instance silent for more than
//! `delayed_after_intervals` / `down_after_intervals` heartbeat intervals.
//!
//! An instance is, in the words every part of dlog uses (label `status`):
//! - **UP**: heartbeating;
//! - **DELAYED**: more than `delayed_after_intervals` intervals silent;
//! - **DOWN**: more than `down_after_intervals` intervals silent;
//! - **STOPPED**: it announced a clean shutdown (`service.status=DOWN`);
//! - **REPLACED**: silent, and a newer instance of the same service registered since its
//!   last heartbeat (a crashed instance never says DOWN; its successor says it is gone).
//!
//! The alerts resolve when the instance heartbeats again (UP), stops (STOPPED), is replaced
//! (REPLACED) or is forgotten. A service is down only when none of its instances is live:
//! the alerts of a silent instance whose service still has a live one do not make the
//! service down for root cause.

use std::collections::{BTreeMap, HashMap, HashSet};

use dlog_core::model::{Heartbeat, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::{load_state, save_state, Rule, RuleStates};
use crate::alert::{alert_id, rule, Alert, Severity};
use crate::engine::format::{describe_instance, fmt_secs};
use crate::engine::lifecycle::{Active, Kind};
use crate::engine::{Context, NANOS_PER_MS, NANOS_PER_SEC};
use crate::rules::{Invalid, RulesConfig, Section};

/// Key of the rule's state in the snapshot.
const STATE_KEY: &str = "instances";

/// `[heartbeat]`: heartbeat silence.
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

impl Section for HeartbeatRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, section: &str) -> Result<(), Invalid> {
        if self.default_interval_ms == 0 {
            return Err(Invalid::new(
                section,
                "default_interval_ms",
                "must be at least 1",
            ));
        }
        if !(self.delayed_after_intervals.is_finite() && self.delayed_after_intervals > 0.0) {
            return Err(Invalid::new(
                section,
                "delayed_after_intervals",
                "must be a positive number",
            ));
        }
        if !(self.down_after_intervals.is_finite()
            && self.down_after_intervals > self.delayed_after_intervals)
        {
            return Err(Invalid::new(
                section,
                "down_after_intervals",
                format!(
                    "{} must be greater than delayed_after_intervals ({})",
                    self.down_after_intervals, self.delayed_after_intervals
                ),
            ));
        }
        if self.max_instances == 0 {
            return Err(Invalid::new(section, "max_instances", "must be at least 1"));
        }
        Ok(())
    }
}

/// A service instance tracked by its heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    service: String,
    instance_id: Option<String>,
    /// Engine time of the last heartbeat or registration, ns.
    last_seen: u64,
    interval_ms: u64,
    /// Engine time tracking began (its first heartbeat or registration), ns; 0: unknown
    /// (tracked by an earlier version).
    #[serde(default)]
    first_seen: u64,
}

/// Label saying what the instance is.
const STATUS: &str = "status";

/// The rule: one tracker per instance.
pub(crate) struct Silence {
    config: HeartbeatRule,
    instances: BTreeMap<String, Instance>,
}

impl Silence {
    pub(crate) fn new(config: &HeartbeatRule, _rules: &RulesConfig) -> Silence {
        Silence {
            config: config.clone(),
            instances: BTreeMap::new(),
        }
    }
}

/// The two alerts of an instance, most severe first.
const RULES: [&str; 2] = [rule::HEARTBEAT_DOWN, rule::HEARTBEAT_DELAYED];

impl Rule for Silence {
    fn on_heartbeat(&mut self, hb: &Heartbeat, cx: &mut Context) {
        if !self.config.enabled {
            return;
        }
        let now = cx.now;
        let key = hb.service.instance_key();
        let name = describe_instance(&hb.service.name, hb.service.instance_id.as_deref());
        if hb.status == ServiceStatus::Down {
            if self.instances.remove(key).is_some() {
                for rule_name in RULES {
                    cx.resolve_with(
                        &alert_id(rule_name, key),
                        Some(format!("{name} shut down cleanly")),
                        &[("reason", "shutdown"), (STATUS, "STOPPED")],
                    );
                }
            }
            return;
        }
        let interval_ms = hb
            .interval_ms
            .filter(|i| *i > 0)
            .unwrap_or(self.config.default_interval_ms);
        match self.instances.get_mut(key) {
            Some(instance) => {
                // The true silence, for people; escalation measures from the restore time.
                let silent = now.saturating_sub(instance.last_seen);
                instance.last_seen = instance.last_seen.max(now);
                instance.interval_ms = interval_ms;
                for rule_name in RULES {
                    let id = alert_id(rule_name, key);
                    if cx.is_firing(&id) {
                        let summary = format!(
                            "{name} is back: heartbeat after {} of silence",
                            fmt_secs(silent)
                        );
                        cx.resolve_with(&id, Some(summary), &[(STATUS, "UP")]);
                    }
                }
            }
            None => {
                let stale = self.config.stale_after_secs;
                if stale > 0
                    && hb.time_unix_nano != 0
                    && now.saturating_sub(hb.time_unix_nano) > stale.saturating_mul(NANOS_PER_SEC)
                {
                    cx.stats.stale_heartbeats += 1;
                    return;
                }
                if self.instances.len() >= self.config.max_instances {
                    cx.stats.keys_dropped += 1;
                    return;
                }
                self.instances.insert(
                    key.to_string(),
                    Instance {
                        service: hb.service.name.clone(),
                        instance_id: hb.service.instance_id.clone(),
                        last_seen: now,
                        interval_ms,
                        first_seen: now,
                    },
                );
            }
        }
    }

    fn on_tick(&mut self, cx: &mut Context) {
        if !self.config.enabled {
            return;
        }
        let h = &self.config;
        let now = cx.now;
        let forget_nanos = h.forget_after_secs.saturating_mul(NANOS_PER_SEC);
        let mut forget = Vec::new();
        let mut fire = Vec::new();
        let mut replaced = Vec::new();
        // Per service: the newest instance's start, and whether any instance is live.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        let mut live: HashSet<&str> = HashSet::new();
        let silence = |inst: &Instance| now.saturating_sub(inst.last_seen.max(cx.resumed_at));
        let interval = |inst: &Instance| inst.interval_ms.saturating_mul(NANOS_PER_MS) as f64;
        for inst in self.instances.values() {
            let first = newest.entry(inst.service.as_str()).or_insert(0);
            *first = (*first).max(inst.first_seen);
        }
        for (key, inst) in &self.instances {
            // Reported silent stays so until a heartbeat arrives, even when the silence is
            // measured from a restart or the end of an input stall.
            let reported = RULES
                .iter()
                .any(|rule_name| cx.is_firing(&alert_id(rule_name, key)));
            if !reported && silence(inst) as f64 <= h.delayed_after_intervals * interval(inst) {
                live.insert(inst.service.as_str());
            }
        }
        for (key, inst) in &self.instances {
            let silent = silence(inst);
            if forget_nanos > 0 && silent > forget_nanos {
                forget.push(key.clone());
                continue;
            }
            let interval = interval(inst);
            let delayed = silent as f64 > h.delayed_after_intervals * interval;
            if delayed && newest.get(inst.service.as_str()).copied().unwrap_or(0) > inst.last_seen {
                replaced.push(key.clone());
                continue;
            }
            if delayed && !cx.is_firing(&alert_id(rule::HEARTBEAT_DELAYED, key)) {
                fire.push((
                    key.clone(),
                    rule::HEARTBEAT_DELAYED,
                    h.delayed_severity,
                    silent,
                ));
            }
            if silent as f64 > h.down_after_intervals * interval
                && !cx.is_firing(&alert_id(rule::HEARTBEAT_DOWN, key))
            {
                fire.push((key.clone(), rule::HEARTBEAT_DOWN, h.down_severity, silent));
            }
        }
        let live: HashSet<String> = live.into_iter().map(str::to_string).collect();
        for key in replaced {
            if let Some(inst) = self.instances.remove(&key) {
                let name = describe_instance(&inst.service, inst.instance_id.as_deref());
                for rule_name in RULES {
                    let summary = format!(
                        "{name} was replaced: a newer instance of {} registered since its last heartbeat",
                        inst.service
                    );
                    cx.resolve_with(
                        &alert_id(rule_name, &key),
                        Some(summary),
                        &[("reason", "replaced"), (STATUS, "REPLACED")],
                    );
                }
            }
        }
        for key in forget {
            if let Some(inst) = self.instances.remove(&key) {
                let name = describe_instance(&inst.service, inst.instance_id.as_deref());
                for rule_name in RULES {
                    let summary = format!(
                        "{name} is no longer tracked after {} of silence",
                        fmt_secs(forget_nanos)
                    );
                    cx.resolve(
                        &alert_id(rule_name, &key),
                        Some(summary),
                        Some(("reason", "forgotten")),
                    );
                }
            }
        }
        for (key, rule_name, severity, silent) in fire {
            let Some(inst) = self.instances.get(&key) else {
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
            let status = if rule_name == rule::HEARTBEAT_DOWN {
                "DOWN"
            } else {
                "DELAYED"
            };
            labels.insert(STATUS.into(), status.into());
            let alert = Alert::firing(
                rule_name,
                key.clone(),
                severity,
                &inst.service,
                format!(
                    "{name} {what}: no heartbeat for {} (interval {})",
                    fmt_secs(silent),
                    fmt_secs(inst.interval_ms * NANOS_PER_MS)
                ),
                now,
            )
            .with_instance(inst.instance_id.as_deref())
            .with_labels(labels);
            let mut active = Active::new(alert, Kind::Condition, now);
            active.root_signal = !live.contains(&inst.service);
            cx.fire(active);
        }
        // A service is down only when none of its instances is live.
        for (key, inst) in &self.instances {
            for rule_name in RULES {
                cx.set_root_signal(&alert_id(rule_name, key), !live.contains(&inst.service));
            }
        }
    }

    fn save(&self, into: &mut RuleStates) {
        save_state(into, STATE_KEY, &self.instances);
    }

    fn restore(&mut self, from: &RuleStates, _windows_kept: bool) {
        if let Some(instances) = load_state(from, STATE_KEY) {
            self.instances = instances;
        }
    }
}
