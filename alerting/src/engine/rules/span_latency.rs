//! Rule 2, `span_latency`: a span-duration percentile over a sliding window above a
//! per-service or per-operation threshold. Resolves when the percentile drops back or the
//! window empties.

use std::collections::{BTreeMap, VecDeque};

use dlog_core::model::SpanKind;
use serde::{Deserialize, Serialize};

use super::{load_state, save_state, Rule, RuleStates, SpanView};
use crate::alert::{alert_id, rule, Alert, Severity};
use crate::engine::format::{fmt_num, push_example, span_kind};
use crate::engine::lifecycle::{Active, Kind};
use crate::engine::{Context, NANOS_PER_MS, NANOS_PER_SEC};
use crate::rules::{check_window, Invalid, RulesConfig, Section, SPAN_KINDS};
use crate::window::LatencyWindow;

/// Key of the rule's state in the snapshot.
const STATE_KEY: &str = "latency";
/// Default `max_operations_per_service`: far more than the routes of a real service, far
/// fewer than the paths a scanner tries.
pub const DEFAULT_MAX_OPERATIONS_PER_SERVICE: usize = 200;

/// What a latency window is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyGrouping {
    /// One window per service.
    Service,
    /// One window per service and operation (span name).
    Operation,
}

/// `[span_latency]`: span-duration percentile over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanLatencyRule {
    /// Run this rule. Default true.
    pub enabled: bool,
    /// The duration the percentile must not exceed, ms. Default 1000.
    pub threshold_ms: f64,
    /// Which percentile, (0, 100). Default 95.
    pub percentile: f64,
    /// Length of the sliding window, s. Default 60.
    pub window_secs: u64,
    /// Bucket length of the window, s (its time resolution). Default 5.
    pub bucket_secs: u64,
    /// Fewest spans in the window before the rule judges it. Default 10.
    pub min_samples: u64,
    /// `service` or `operation`. Default `operation`.
    pub group_by: LatencyGrouping,
    /// Span kinds counted (`server`, `client`, `internal`, `producer`, `consumer`,
    /// `unspecified`). Empty: all. Default empty.
    pub span_kinds: Vec<String>,
    /// Severity of the alert. Default warning.
    pub severity: Severity,
    /// Most windows kept (services or operations); spans of further keys are not judged,
    /// and counted. Default 10000.
    pub max_keys: usize,
    /// Most operations (span names) with a window per service, when grouped by operation;
    /// spans of further operations of that service are not judged, and counted. Unbounded
    /// span names (a 404 scanner's paths) of one service then cannot use up `max_keys` for
    /// every other service. Default 200.
    pub max_operations_per_service: usize,
    /// Per-service or per-operation thresholds, first match wins.
    pub overrides: Vec<LatencyOverride>,
}

impl Default for SpanLatencyRule {
    fn default() -> Self {
        SpanLatencyRule {
            enabled: true,
            threshold_ms: 1000.0,
            percentile: 95.0,
            window_secs: 60,
            bucket_secs: 5,
            min_samples: 10,
            group_by: LatencyGrouping::Operation,
            span_kinds: Vec::new(),
            severity: Severity::Warning,
            max_keys: 10_000,
            max_operations_per_service: DEFAULT_MAX_OPERATIONS_PER_SERVICE,
            overrides: Vec::new(),
        }
    }
}

/// A threshold for one service, or one operation of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyOverride {
    /// The service.
    pub service: String,
    /// The operation (span name); unset: every operation of the service.
    #[serde(default)]
    pub operation: Option<String>,
    /// Threshold for it, ms.
    pub threshold_ms: f64,
}

impl SpanLatencyRule {
    /// The threshold for a service and operation, ms.
    pub fn threshold_for(&self, service: &str, operation: Option<&str>) -> f64 {
        self.overrides
            .iter()
            .find(|o| {
                o.service == service
                    && match (&o.operation, operation) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want == got,
                        (Some(_), None) => false,
                    }
            })
            .map_or(self.threshold_ms, |o| o.threshold_ms)
    }
}

impl Section for SpanLatencyRule {
    type Written = Self;

    fn over(written: Self, _base: &Self) -> Self {
        written
    }

    fn validate(&self, section: &str) -> Result<(), Invalid> {
        if !(self.threshold_ms.is_finite() && self.threshold_ms > 0.0) {
            return Err(Invalid::new(
                section,
                "threshold_ms",
                format!("{} is not a positive number", self.threshold_ms),
            ));
        }
        if !(self.percentile > 0.0 && self.percentile < 100.0) {
            return Err(Invalid::new(
                section,
                "percentile",
                format!("{} is not in (0, 100)", self.percentile),
            ));
        }
        check_window(section, self.window_secs, self.bucket_secs)?;
        for kind in &self.span_kinds {
            if !SPAN_KINDS.contains(&kind.as_str()) {
                return Err(Invalid::new(
                    section,
                    "span_kinds",
                    format!(
                        "unknown span kind `{kind}` (expected one of {})",
                        SPAN_KINDS.join(", ")
                    ),
                ));
            }
        }
        if self.max_keys == 0 {
            return Err(Invalid::new(section, "max_keys", "must be at least 1"));
        }
        if self.max_operations_per_service == 0 {
            return Err(Invalid::new(
                section,
                "max_operations_per_service",
                "must be at least 1",
            ));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if !(o.threshold_ms.is_finite() && o.threshold_ms > 0.0) {
                return Err(Invalid::new(
                    section,
                    &format!("overrides[{i}].threshold_ms"),
                    format!("{} is not a positive number", o.threshold_ms),
                ));
            }
            if o.service.is_empty() {
                return Err(Invalid::new(
                    section,
                    &format!("overrides[{i}].service"),
                    "is empty",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LatencyEntry {
    window: LatencyWindow,
    /// Recent traces with a span over the threshold.
    examples: VecDeque<String>,
}

/// The rule: one window per service or operation.
pub(crate) struct Latency {
    config: SpanLatencyRule,
    kinds: Vec<SpanKind>,
    max_examples: usize,
    /// Service → operation (empty when grouped by service) → window.
    windows: BTreeMap<String, BTreeMap<String, LatencyEntry>>,
    /// Windows kept.
    keys: usize,
}

impl Latency {
    pub(crate) fn new(config: &SpanLatencyRule, rules: &RulesConfig) -> Latency {
        Latency {
            kinds: config
                .span_kinds
                .iter()
                .filter_map(|k| span_kind(k))
                .collect(),
            config: config.clone(),
            max_examples: rules.defaults.max_example_traces,
            windows: BTreeMap::new(),
            keys: 0,
        }
    }
}

impl Rule for Latency {
    fn on_span(&mut self, view: &SpanView<'_>, cx: &mut Context) {
        let span = view.span;
        if !self.config.enabled || !(self.kinds.is_empty() || self.kinds.contains(&span.kind)) {
            return;
        }
        let now = cx.now;
        let service = span.service.name.as_str();
        let op = match self.config.group_by {
            LatencyGrouping::Service => "",
            LatencyGrouping::Operation => span.name.as_str(),
        };
        let duration = span.duration_nanos();
        let entry = match self
            .windows
            .get_mut(service)
            .and_then(|ops| ops.get_mut(op))
        {
            Some(entry) => entry,
            None => {
                let l = &self.config;
                let of_service = self.windows.get(service).map_or(0, BTreeMap::len);
                if self.keys >= l.max_keys || of_service >= l.max_operations_per_service {
                    cx.stats.keys_dropped += 1;
                    return;
                }
                let threshold = l.threshold_for(service, (!op.is_empty()).then_some(op));
                let entry = LatencyEntry {
                    window: LatencyWindow::new(
                        (l.window_secs / l.bucket_secs) as usize,
                        l.bucket_secs * NANOS_PER_SEC,
                        (threshold * NANOS_PER_MS as f64) as u64,
                    ),
                    examples: VecDeque::new(),
                };
                self.keys += 1;
                self.windows
                    .entry(service.to_string())
                    .or_default()
                    .entry(op.to_string())
                    .or_insert(entry)
            }
        };
        entry.window.record(now, duration);
        if duration > entry.window.threshold_nanos() {
            push_example(&mut entry.examples, &span.trace_id, self.max_examples);
        }
    }

    fn on_tick(&mut self, cx: &mut Context) {
        let l = &self.config;
        if !l.enabled {
            return;
        }
        let now = cx.now;
        let mut fire = Vec::new();
        let mut resolve = Vec::new();
        let mut idle = Vec::new();
        for (service, ops) in &self.windows {
            for (op, entry) in ops {
                let key = if op.is_empty() {
                    service.clone()
                } else {
                    format!("{service}|{op}")
                };
                let id = alert_id(rule::SPAN_LATENCY, &key);
                let firing = cx.is_firing(&id);
                let sums = entry.window.sums(now);
                let exceeds = sums.total >= l.min_samples && sums.percentile_exceeds(l.percentile);
                if sums.total == 0 && !firing {
                    idle.push((service.clone(), op.clone()));
                } else if exceeds && !firing {
                    let p = entry.window.percentile_ms(now, l.percentile).unwrap_or(0.0);
                    let threshold_ms = entry.window.threshold_nanos() as f64 / NANOS_PER_MS as f64;
                    // The bucketed estimate can land a hair under a threshold the exact count
                    // says is exceeded; never show a percentile below the threshold it broke.
                    let p = p.max(threshold_ms);
                    fire.push((
                        service.clone(),
                        op.clone(),
                        key,
                        p,
                        threshold_ms,
                        sums.total,
                        entry.examples.iter().cloned().collect::<Vec<_>>(),
                    ));
                } else if firing
                    && (sums.total == 0
                        || (sums.total >= l.min_samples && !sums.percentile_exceeds(l.percentile)))
                {
                    let p = entry.window.percentile_ms(now, l.percentile);
                    resolve.push((id, service.clone(), op.clone(), p));
                }
            }
        }
        for (service, op) in idle {
            if let Some(ops) = self.windows.get_mut(&service) {
                if ops.remove(&op).is_some() {
                    self.keys -= 1;
                }
                if ops.is_empty() {
                    self.windows.remove(&service);
                }
            }
        }
        let pct = fmt_num(l.percentile);
        for (service, op, key, p, threshold_ms, total, examples) in fire {
            let what = if op.is_empty() {
                service.clone()
            } else {
                format!("{service} {op}")
            };
            let mut labels = BTreeMap::new();
            if !op.is_empty() {
                labels.insert("operation".into(), op.clone());
            }
            labels.insert(format!("p{pct}_ms"), fmt_num(p.round()));
            labels.insert("threshold_ms".into(), fmt_num(threshold_ms));
            labels.insert("samples".into(), total.to_string());
            labels.insert("window_secs".into(), l.window_secs.to_string());
            let alert = Alert::firing(
                rule::SPAN_LATENCY,
                key,
                l.severity,
                &service,
                format!(
                    "{what}: p{pct} {} ms over the last {} s exceeds {} ms ({total} spans)",
                    fmt_num(p.round()),
                    l.window_secs,
                    fmt_num(threshold_ms)
                ),
                now,
            )
            .with_examples(examples)
            .with_labels(labels);
            cx.fire(Active::new(alert, Kind::Condition, now));
        }
        for (id, service, op, p) in resolve {
            let what = if op.is_empty() {
                service
            } else {
                format!("{service} {op}")
            };
            let summary = match p {
                Some(p) => format!("{what}: p{pct} back to {} ms", fmt_num(p.round())),
                None => format!("{what}: no spans in the last {} s", l.window_secs),
            };
            cx.resolve(&id, Some(summary), None);
        }
    }

    fn save(&self, into: &mut RuleStates) {
        save_state(into, STATE_KEY, &self.windows);
    }

    fn restore(&mut self, from: &RuleStates, windows_kept: bool) {
        if windows_kept {
            if let Some(windows) = load_state(from, STATE_KEY) {
                self.windows = windows;
            }
        }
        self.keys = self.windows.values().map(BTreeMap::len).sum();
    }
}
