//! Rule 8, `traffic_stopped`: a service that keeps heartbeating but has sent no span and no
//! log record for `after_secs`, while it did before. It is alive, but stuck (a wedged
//! worker pool, a deadlock) or cut off from its callers; the heartbeat rules cannot see it.
//!
//! The alert resolves when the service sends a span or log again, when it announces a clean
//! shutdown, or when its heartbeats stop too (then `heartbeat_down` says what matters).

use std::collections::BTreeMap;

use dlog_core::model::{Heartbeat, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::{load_state, save_state, LogView, Rule, RuleStates, SpanView};
use crate::alert::{alert_id, rule, Alert, Severity};
use crate::engine::format::fmt_secs;
use crate::engine::lifecycle::{Active, Kind};
use crate::engine::{Context, NANOS_PER_MS, NANOS_PER_SEC};
use crate::rules::{Invalid, RulesConfig, Section};

/// Key of the rule's state in the snapshot.
const STATE_KEY: &str = "traffic";
/// Default `after_secs`: five minutes, well past any heartbeat interval and quiet spell of
/// a service that serves traffic at all.
pub const DEFAULT_AFTER_SECS: u64 = 300;
/// Default `max_services`.
pub const DEFAULT_MAX_SERVICES: usize = 10_000;
/// Default `forget_after_secs`: a day, like the heartbeat rule's.
pub const DEFAULT_FORGET_AFTER_SECS: u64 = 86_400;

/// `[traffic_stopped]`: services that heartbeat but stopped sending spans and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficStoppedRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Fires once a service that sent spans or logs before has sent none for this long
    /// while still heartbeating (a heartbeat within the same span of time), s. Default 300.
    pub after_secs: u64,
    /// Severity of the alert. Default warning.
    pub severity: Severity,
    /// Most services tracked; further services are counted and not judged. Default 10000.
    pub max_services: usize,
    /// A service that sent nothing at all (no record, no heartbeat) this long is no longer
    /// tracked, s. 0: never. Default 86400.
    pub forget_after_secs: u64,
}

impl Default for TrafficStoppedRule {
    fn default() -> Self {
        TrafficStoppedRule {
            enabled: true,
            after_secs: DEFAULT_AFTER_SECS,
            severity: Severity::Warning,
            max_services: DEFAULT_MAX_SERVICES,
            forget_after_secs: DEFAULT_FORGET_AFTER_SECS,
        }
    }
}

impl Section for TrafficStoppedRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, section: &str) -> Result<(), Invalid> {
        if self.after_secs == 0 {
            return Err(Invalid::new(section, "after_secs", "must be at least 1"));
        }
        if self.max_services == 0 {
            return Err(Invalid::new(section, "max_services", "must be at least 1"));
        }
        Ok(())
    }
}

/// What the rule knows of one service, in engine time (ns).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seen {
    /// Last span or log record; 0: none yet.
    traffic: u64,
    /// Last heartbeat or registration (UP); 0: none yet.
    heartbeat: u64,
    /// This rule's alert is firing for the service.
    #[serde(default)]
    firing: bool,
}

/// The rule: per service, when it last sent traffic and when it last heartbeated.
pub(crate) struct TrafficStopped {
    config: TrafficStoppedRule,
    services: BTreeMap<String, Seen>,
}

impl TrafficStopped {
    pub(crate) fn new(config: &TrafficStoppedRule, _rules: &RulesConfig) -> TrafficStopped {
        TrafficStopped {
            config: config.clone(),
            services: BTreeMap::new(),
        }
    }

    /// The entry of `service`, unless the bound is reached.
    fn entry(&mut self, service: &str, cx: &mut Context) -> Option<&mut Seen> {
        if !self.services.contains_key(service) {
            if self.services.len() >= self.config.max_services {
                cx.stats.keys_dropped += 1;
                return None;
            }
            self.services.insert(service.to_string(), Seen::default());
        }
        self.services.get_mut(service)
    }

    /// A span or log of `service`: on the hot path, so one map lookup, and the alert id only
    /// when the alert is firing.
    fn traffic(&mut self, service: &str, cx: &mut Context) {
        if !self.config.enabled {
            return;
        }
        let now = cx.now;
        let seen = match self.services.get_mut(service) {
            Some(seen) => seen,
            None => match self.entry(service, cx) {
                Some(seen) => seen,
                None => return,
            },
        };
        let silent = now.saturating_sub(seen.traffic);
        seen.traffic = seen.traffic.max(now);
        if !std::mem::take(&mut seen.firing) {
            return;
        }
        let summary = format!(
            "{service} sends spans and logs again, after {} without any",
            fmt_secs(silent)
        );
        cx.resolve(
            &alert_id(rule::TRAFFIC_STOPPED, service),
            Some(summary),
            None,
        );
    }
}

impl Rule for TrafficStopped {
    fn on_span(&mut self, view: &SpanView<'_>, cx: &mut Context) {
        self.traffic(&view.span.service.name, cx);
    }

    fn on_log(&mut self, view: &LogView<'_>, cx: &mut Context) {
        self.traffic(&view.log.service.name, cx);
    }

    fn on_heartbeat(&mut self, hb: &Heartbeat, cx: &mut Context) {
        if !self.config.enabled {
            return;
        }
        let service = hb.service.name.as_str();
        if hb.status == ServiceStatus::Down {
            // A clean shutdown: nothing is stuck. A restarted instance starts afresh.
            if self.services.remove(service).is_some() {
                cx.resolve(
                    &alert_id(rule::TRAFFIC_STOPPED, service),
                    Some(format!("{service} shut down cleanly")),
                    Some(("reason", "shutdown")),
                );
            }
            return;
        }
        let now = cx.now;
        if let Some(seen) = self.entry(service, cx) {
            seen.heartbeat = seen.heartbeat.max(now);
        }
    }

    fn on_tick(&mut self, cx: &mut Context) {
        if !self.config.enabled {
            return;
        }
        let now = cx.now;
        let after = self.config.after_secs.saturating_mul(NANOS_PER_SEC);
        let forget = self.config.forget_after_secs.saturating_mul(NANOS_PER_SEC);
        let mut fire = Vec::new();
        let mut resolve = Vec::new();
        let mut gone = Vec::new();
        for (service, seen) in &self.services {
            let id = alert_id(rule::TRAFFIC_STOPPED, service);
            let firing = seen.firing;
            let last = seen.traffic.max(seen.heartbeat);
            if forget > 0 && now.saturating_sub(last) > forget {
                gone.push((service.clone(), id, firing));
                continue;
            }
            // An input stall is nobody's silence: measure from its end at the earliest.
            let quiet = now.saturating_sub(seen.traffic.max(cx.resumed_at));
            let alive = seen.heartbeat > seen.traffic
                && now.saturating_sub(seen.heartbeat.max(cx.resumed_at)) <= after;
            if !firing && seen.traffic > 0 && alive && quiet > after {
                fire.push((service.clone(), now.saturating_sub(seen.traffic)));
            } else if firing && !alive {
                resolve.push((service.clone(), id));
            }
        }
        for (service, id, firing) in gone {
            self.services.remove(&service);
            if firing {
                cx.resolve(&id, None, Some(("reason", "forgotten")));
            }
        }
        for (service, id) in resolve {
            if let Some(seen) = self.services.get_mut(&service) {
                seen.firing = false;
            }
            cx.resolve(&id, None, Some(("reason", "heartbeat_stopped")));
        }
        for (service, silent) in fire {
            let mut labels = BTreeMap::new();
            labels.insert("silent_ms".into(), (silent / NANOS_PER_MS).to_string());
            labels.insert("after_secs".into(), self.config.after_secs.to_string());
            let alert = Alert::firing(
                rule::TRAFFIC_STOPPED,
                service.clone(),
                self.config.severity,
                &service,
                format!(
                    "{service} still heartbeats but sent no span or log for {}: stuck or cut off",
                    fmt_secs(silent)
                ),
                now,
            )
            .with_labels(labels);
            if cx.fire(Active::new(alert, Kind::Condition, now)) {
                if let Some(seen) = self.services.get_mut(&service) {
                    seen.firing = true;
                }
            }
        }
    }

    fn save(&self, into: &mut RuleStates) {
        save_state(into, STATE_KEY, &self.services);
    }

    fn restore(&mut self, from: &RuleStates, _windows_kept: bool) {
        if let Some(services) = load_state(from, STATE_KEY) {
            self.services = services;
        }
    }
}
