//! Rule 3, `failed_call`: "X → Y failed", from failed `service.call` records and client
//! spans with error status. One alert per edge; its failures count toward root cause.

use std::collections::BTreeMap;

use dlog_core::model::SpanKind;
use dlog_core::names;
use serde::{Deserialize, Serialize};

use super::{LogView, Rule, SpanView};
use crate::alert::{rule, Severity};
use crate::engine::format::{edge_key, nonzero};
use crate::engine::lifecycle::Hit;
use crate::engine::Context;
use crate::rules::{Invalid, RulesConfig, Section};

/// Callee named when a failed client span says nothing about it.
const UNKNOWN_TARGET: &str = "unknown";

/// `[failed_call]`: failed calls.
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

impl Section for FailedCallRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, _section: &str) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The rule; stateless beyond its alerts.
pub(crate) struct FailedCall {
    config: FailedCallRule,
}

impl FailedCall {
    pub(crate) fn new(config: &FailedCallRule, _rules: &RulesConfig) -> FailedCall {
        FailedCall {
            config: config.clone(),
        }
    }

    fn failed(
        &self,
        cx: &mut Context,
        source: &str,
        target: &str,
        error: &str,
        trace_id: Option<&str>,
        time: u64,
    ) {
        cx.note_failure(source, target);
        let mut labels = BTreeMap::new();
        labels.insert("source".into(), source.to_string());
        labels.insert("target".into(), target.to_string());
        labels.insert("error".into(), error.to_string());
        cx.hit(Hit {
            rule: rule::FAILED_CALL,
            key: edge_key(source, target),
            service: source,
            instance: None,
            severity: self.config.severity,
            summary: format!("{source} → {target} failed: {error}"),
            labels,
            trace_id,
            time,
            target: Some(target),
        });
    }
}

impl Rule for FailedCall {
    fn on_span(&mut self, view: &SpanView<'_>, cx: &mut Context) {
        let span = view.span;
        if span.kind != SpanKind::Client
            || !span.is_error()
            || !self.config.enabled
            || !self.config.client_spans
        {
            return;
        }
        let target = view
            .callee
            .as_deref()
            .or_else(|| {
                span.attributes
                    .get("server.address")
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or(UNKNOWN_TARGET);
        let error = if !span.status_message.is_empty() {
            span.status_message.as_str()
        } else {
            span.attributes
                .get("error.type")
                .and_then(|v| v.as_str())
                .unwrap_or("error status")
        };
        let time = nonzero(span.end_unix_nano, cx.now);
        self.failed(
            cx,
            &span.service.name,
            target,
            error,
            Some(&span.trace_id),
            time,
        );
    }

    fn on_log(&mut self, view: &LogView<'_>, cx: &mut Context) {
        let Some(call) = view.call else {
            return;
        };
        if call.success || !self.config.enabled {
            return;
        }
        let log = view.log;
        let error = log
            .attr_str(names::ERROR_MESSAGE)
            .unwrap_or(log.body.as_str());
        self.failed(
            cx,
            call.source,
            call.target,
            error,
            log.trace_id.as_deref(),
            view.time,
        );
    }
}
