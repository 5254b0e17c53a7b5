//! Rule 5, `error_rate`: a service's failure ratio over a sliding window above its threshold.
//!
//! The per-service outcome windows ([`Outcomes`]) live in the [`Context`] rather than in the
//! rule, because root cause reads them too: a service whose own error rate is healthy is not
//! blamed for a failing caller's failures.

use std::collections::{BTreeMap, VecDeque};

use dlog_core::model::SpanKind;
use serde::{Deserialize, Serialize};

use super::{LogView, Rule, SpanView};
use crate::alert::{alert_id, rule, Alert, Severity};
use crate::engine::format::{fmt_num, push_example};
use crate::engine::lifecycle::{Active, Kind};
use crate::engine::{Context, EngineStats, NANOS_PER_SEC};
use crate::rules::{check_window, Invalid, RulesConfig, Section};
use crate::window::RateWindow;

/// What the error-rate rule counts for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateInput {
    /// Requests it served: its server and consumer spans, and its root spans.
    ServerSpans,
    /// Calls it made, traced: its client spans.
    ClientSpans,
    /// Calls it made, logged: `service.call` records with it as `call.source`.
    ServiceCalls,
}

/// `[error_rate]`: failure ratio over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// Fires when more than this percent failed. Default 5.
    pub threshold_percent: f64,
    /// Length of the sliding window, s. Default 60.
    pub window_secs: u64,
    /// Bucket length of the window, s. Default 5.
    pub bucket_secs: u64,
    /// Fewest outcomes in the window before the rule judges it. Default 20.
    pub min_samples: u64,
    /// What counts as the service's calls and requests. Default all three.
    pub count: Vec<RateInput>,
    /// Severity of the alert. Default critical.
    pub severity: Severity,
    /// Most services tracked. Default 10000.
    pub max_services: usize,
}

impl Default for ErrorRateRule {
    fn default() -> Self {
        ErrorRateRule {
            enabled: true,
            threshold_percent: 5.0,
            window_secs: 60,
            bucket_secs: 5,
            min_samples: 20,
            count: vec![
                RateInput::ServerSpans,
                RateInput::ClientSpans,
                RateInput::ServiceCalls,
            ],
            severity: Severity::Critical,
            max_services: 10_000,
        }
    }
}

impl Section for ErrorRateRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, section: &str) -> Result<(), Invalid> {
        if !(self.threshold_percent.is_finite()
            && self.threshold_percent >= 0.0
            && self.threshold_percent < 100.0)
        {
            return Err(Invalid::new(
                section,
                "threshold_percent",
                format!("{} is not in [0, 100)", self.threshold_percent),
            ));
        }
        check_window(section, self.window_secs, self.bucket_secs)?;
        if self.enabled && self.count.is_empty() {
            return Err(Invalid::new(
                section,
                "count",
                "is empty; set `enabled = false` to turn the rule off",
            ));
        }
        if self.min_samples == 0 {
            return Err(Invalid::new(section, "min_samples", "must be at least 1"));
        }
        if self.max_services == 0 {
            return Err(Invalid::new(section, "max_services", "must be at least 1"));
        }
        Ok(())
    }
}

/// One service's outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RateEntry {
    window: RateWindow,
    /// Recent traces with a failure.
    examples: VecDeque<String>,
}

/// Each service's outcomes (requests served, calls made) over the rule's window.
pub(crate) struct Outcomes {
    config: ErrorRateRule,
    max_examples: usize,
    pub(crate) entries: BTreeMap<String, RateEntry>,
}

impl Outcomes {
    /// Outcome windows for `rules`, resuming `entries`.
    pub(crate) fn new(rules: &RulesConfig, entries: BTreeMap<String, RateEntry>) -> Outcomes {
        Outcomes {
            config: rules.error_rate.clone(),
            max_examples: rules.defaults.max_example_traces,
            entries,
        }
    }

    /// Whether outcomes of this kind are counted.
    fn counts(&self, input: RateInput) -> bool {
        self.config.enabled && self.config.count.contains(&input)
    }

    fn record(
        &mut self,
        service: &str,
        now: u64,
        failed: bool,
        trace_id: &str,
        stats: &mut EngineStats,
    ) {
        let entry = match self.entries.get_mut(service) {
            Some(entry) => entry,
            None => {
                let r = &self.config;
                if self.entries.len() >= r.max_services {
                    stats.keys_dropped += 1;
                    return;
                }
                self.entries
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
            push_example(&mut entry.examples, trace_id, self.max_examples);
        }
    }

    /// Whether `service`'s own error-rate window shows it healthy: enough outcomes, at most
    /// the threshold failing.
    pub(crate) fn shows_healthy(&self, service: &str, now: u64) -> bool {
        let r = &self.config;
        r.enabled
            && self.entries.get(service).is_some_and(|e| {
                let sums = e.window.sums(now);
                sums.total >= r.min_samples && sums.ratio() * 100.0 <= r.threshold_percent
            })
    }
}

/// The rule. Its state is the [`Outcomes`] in the context.
pub(crate) struct ErrorRate {
    config: ErrorRateRule,
}

impl ErrorRate {
    pub(crate) fn new(config: &ErrorRateRule, _rules: &RulesConfig) -> ErrorRate {
        ErrorRate {
            config: config.clone(),
        }
    }
}

impl Rule for ErrorRate {
    fn on_span(&mut self, view: &SpanView<'_>, cx: &mut Context) {
        let span = view.span;
        let service = span.service.name.as_str();
        let served = matches!(span.kind, SpanKind::Server | SpanKind::Consumer)
            || span.parent_span_id.is_none();
        let input = if span.kind == SpanKind::Client {
            // A client root span is both a request served and a call made.
            if served && cx.outcomes.counts(RateInput::ServerSpans) {
                cx.record_outcome(service, span.is_error(), &span.trace_id);
            }
            RateInput::ClientSpans
        } else if served {
            RateInput::ServerSpans
        } else {
            return;
        };
        if cx.outcomes.counts(input) {
            cx.record_outcome(service, span.is_error(), &span.trace_id);
        }
    }

    fn on_log(&mut self, view: &LogView<'_>, cx: &mut Context) {
        if let Some(call) = view.call {
            if cx.outcomes.counts(RateInput::ServiceCalls) {
                let trace = view.log.trace_id.as_deref().unwrap_or("");
                cx.record_outcome(call.source, !call.success, trace);
            }
        }
    }

    fn on_tick(&mut self, cx: &mut Context) {
        let r = &self.config;
        if !r.enabled {
            return;
        }
        let now = cx.now;
        let mut fire = Vec::new();
        let mut resolve = Vec::new();
        let mut idle = Vec::new();
        for (service, entry) in &cx.outcomes.entries {
            let id = alert_id(rule::ERROR_RATE, service);
            let firing = cx.is_firing(&id);
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
            cx.outcomes.entries.remove(&service);
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
            let alert = Alert::firing(
                rule::ERROR_RATE,
                service.clone(),
                r.severity,
                &service,
                format!(
                    "{service}: {percent:.1}% of {} calls and requests failed over the last {} s (threshold {}%)",
                    sums.total,
                    r.window_secs,
                    fmt_num(r.threshold_percent)
                ),
                now,
            )
            .with_occurrences(sums.failed)
            .with_examples(examples)
            .with_labels(labels);
            let mut active = Active::new(alert, Kind::Condition, now);
            active.suppressed = true;
            if cx.fire(active) {
                fired.push((id, service, sums.failed));
            }
        }
        for (id, service, failed) in fired {
            // A service failing because of a deeper one is part of that one's incident.
            if let Some((root, cause)) = cx.explained_root(&service) {
                let first = cx
                    .book
                    .alerts
                    .get(&id)
                    .and_then(|a| a.alert.example_trace_ids.first().cloned());
                let incident = cx.group_into(
                    &root,
                    &cause,
                    &service,
                    failed.max(1),
                    first.as_deref(),
                    now,
                );
                cx.join_incident(&id, incident, root, false);
                continue;
            }
            // It fails on its own: shown, and part of its own incident if it has one.
            let own_incident = alert_id(rule::INCIDENT, &service);
            if cx.is_firing(&own_incident) {
                cx.join_incident(&id, own_incident, service, false);
            }
            cx.show(&id);
        }
        for (id, service, sums) in resolve {
            let summary = format!(
                "{service}: failure rate back to {:.1}% of {} over the last {} s",
                sums.ratio() * 100.0,
                sums.total,
                r.window_secs
            );
            cx.resolve(&id, Some(summary), None);
        }
    }
}

impl Context {
    /// Counts one outcome of `service` in its error-rate window.
    fn record_outcome(&mut self, service: &str, failed: bool, trace_id: &str) {
        self.outcomes
            .record(service, self.now, failed, trace_id, &mut self.stats);
    }
}
