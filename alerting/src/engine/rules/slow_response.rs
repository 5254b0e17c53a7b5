//! Rule 2, `slow_response`: a log record whose `response_time_ms` exceeds its own
//! `threshold_limit_ms`. Such a record is this rule's alone: the log-level rules after it
//! skip it, so one slow, failing response raises one alert.

use std::collections::BTreeMap;

use dlog_core::names;
use serde::{Deserialize, Serialize};

use super::{LogView, Rule};
use crate::alert::{rule, Severity};
use crate::engine::format::fmt_num;
use crate::engine::lifecycle::Hit;
use crate::engine::Context;
use crate::rules::{Invalid, RulesConfig, Section};

/// `[slow_response]`: `response_time_ms` above `threshold_limit_ms` on a log record.
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

impl Section for SlowResponseRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, _section: &str) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The rule; stateless beyond its alerts.
pub(crate) struct SlowResponse {
    config: SlowResponseRule,
}

impl SlowResponse {
    pub(crate) fn new(config: &SlowResponseRule, _rules: &RulesConfig) -> SlowResponse {
        SlowResponse {
            config: config.clone(),
        }
    }
}

impl Rule for SlowResponse {
    fn on_log(&mut self, view: &LogView<'_>, cx: &mut Context) {
        let log = view.log;
        if !self.config.enabled || view.service_call {
            return;
        }
        let (Some(rt), Some(limit)) = (
            log.attr_f64(names::RESPONSE_TIME_MS),
            log.attr_f64(names::THRESHOLD_LIMIT_MS),
        ) else {
            return;
        };
        if rt <= limit {
            return;
        }
        let service = log.service.name.as_str();
        let mut labels = BTreeMap::new();
        labels.insert("response_time_ms".into(), fmt_num(rt));
        labels.insert("threshold_limit_ms".into(), fmt_num(limit));
        labels.insert("message".into(), log.body.clone());
        cx.claim();
        cx.hit(Hit {
            rule: rule::SLOW_RESPONSE,
            key: service.to_string(),
            service,
            instance: log.service.instance_id.as_deref(),
            severity: self.config.severity,
            summary: format!(
                "{service} responded in {} ms, over its {} ms limit: {}",
                fmt_num(rt),
                fmt_num(limit),
                log.body
            ),
            labels,
            trace_id: log.trace_id.as_deref(),
            time: view.time,
            target: None,
        });
    }
}
