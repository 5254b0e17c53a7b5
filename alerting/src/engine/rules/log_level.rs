//! Rule 1, `error_log` and `warn_log`: a log record at one of the configured levels. One
//! alert per service and error code (or, without a code, per message with its numbers
//! collapsed), folding repeats in until the cooldown passes without one.

use std::collections::BTreeMap;

use dlog_core::names;
use serde::{Deserialize, Serialize};

use super::{LogView, Rule};
use crate::alert::{rule, Severity};
use crate::engine::format::fingerprint_text;
use crate::engine::lifecycle::Hit;
use crate::engine::Context;
use crate::rules::{Invalid, RulesConfig, Section, LEVELS};

/// `[error_log]` / `[warn_log]`: log records at some levels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLevelRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Levels (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) that raise this alert.
    pub levels: Vec<String>,
    /// Severity of the alert.
    pub severity: Severity,
    /// Overrides `defaults.cooldown_secs` for this rule.
    pub cooldown_secs: Option<u64>,
}

impl LogLevelRule {
    /// `[error_log]` by default: ERROR and FATAL, critical.
    pub fn error_default() -> Self {
        LogLevelRule {
            enabled: true,
            levels: vec!["ERROR".into(), "FATAL".into()],
            severity: Severity::Critical,
            cooldown_secs: None,
        }
    }

    /// `[warn_log]` by default: WARN, warning.
    pub fn warn_default() -> Self {
        LogLevelRule {
            enabled: true,
            levels: vec!["WARN".into()],
            severity: Severity::Warning,
            cooldown_secs: None,
        }
    }
}

/// `[error_log]` / `[warn_log]` as written: unset keys keep the section's default, which
/// differs between the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenLogLevelRule {
    enabled: Option<bool>,
    levels: Option<Vec<String>>,
    severity: Option<Severity>,
    cooldown_secs: Option<u64>,
}

impl Section for LogLevelRule {
    type Written = WrittenLogLevelRule;

    fn over(written: WrittenLogLevelRule, base: &Self) -> Self {
        LogLevelRule {
            enabled: written.enabled.unwrap_or(base.enabled),
            levels: written.levels.unwrap_or_else(|| base.levels.clone()),
            severity: written.severity.unwrap_or(base.severity),
            cooldown_secs: written.cooldown_secs.or(base.cooldown_secs),
        }
    }

    fn validate(&self, section: &str) -> Result<(), Invalid> {
        for level in &self.levels {
            if !LEVELS.contains(&level.to_ascii_uppercase().as_str()) {
                return Err(Invalid::new(
                    section,
                    "levels",
                    format!(
                        "unknown level `{level}` (expected one of {})",
                        LEVELS.join(", ")
                    ),
                ));
            }
        }
        if self.enabled && self.levels.is_empty() {
            return Err(Invalid::new(
                section,
                "levels",
                "is empty; set `enabled = false` to turn the rule off",
            ));
        }
        Ok(())
    }
}

/// One of the two log-level rules.
pub(crate) struct LogLevel {
    rule: &'static str,
    severity: Severity,
    /// Upper-case; empty when the rule is off.
    levels: Vec<String>,
}

impl LogLevel {
    /// `error_log`.
    pub(crate) fn error(config: &LogLevelRule, _rules: &RulesConfig) -> LogLevel {
        LogLevel::new(rule::ERROR_LOG, config)
    }

    /// `warn_log`.
    pub(crate) fn warn(config: &LogLevelRule, _rules: &RulesConfig) -> LogLevel {
        LogLevel::new(rule::WARN_LOG, config)
    }

    fn new(rule: &'static str, config: &LogLevelRule) -> LogLevel {
        LogLevel {
            rule,
            severity: config.severity,
            levels: if config.enabled {
                config
                    .levels
                    .iter()
                    .map(|l| l.to_ascii_uppercase())
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

impl Rule for LogLevel {
    fn on_log(&mut self, view: &LogView<'_>, cx: &mut Context) {
        let log = view.log;
        let level = log.level.as_str();
        if view.service_call || cx.claimed() || !self.levels.iter().any(|l| l == level) {
            return;
        }
        cx.claim();
        let service = log.service.name.as_str();
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
            cx.note_failure(service, d);
        }
        cx.hit(Hit {
            rule: self.rule,
            key,
            service,
            instance: log.service.instance_id.as_deref(),
            severity: self.severity,
            summary,
            labels,
            trace_id: log.trace_id.as_deref(),
            time: view.time,
            target: dependent,
        });
    }
}
