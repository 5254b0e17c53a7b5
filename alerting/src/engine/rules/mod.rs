//! The rules, one file each, and the one list that registers them.
//!
//! A rule is a [`Rule`]: hooks with no-op defaults that the engine calls for every span, log
//! record and heartbeat, and at every tick, in the manner of tracing-subscriber's `Layer`.
//! It keeps its own state, and raises and resolves alerts only through the [`Context`]
//! (see [`super::lifecycle`]), which also carries what the engine read from the record
//! (the call a log record describes, the edge a span showed) and root cause.
//!
//! **Adding a rule** is one new file in this folder (its config section with named
//! defaults, its state, its `impl Rule`) and one line in [`registry!`] below. The line
//! names the rules-file section, its config type, its default and the constructor; the
//! rules file, its validation, the snapshot and the evaluation order follow from it.

pub(crate) mod dependency_drift;
pub(crate) mod error_rate;
pub(crate) mod failed_call;
pub(crate) mod heartbeat;
pub(crate) mod log_level;
pub(crate) mod slow_response;
pub(crate) mod span_latency;
pub(crate) mod traffic_stopped;

use std::borrow::Cow;

use dlog_core::model::{Heartbeat, LogEntry, SpanRecord};
use dlog_core::names;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Context;
use crate::rules::{Defaults, Invalid, RootCauseRule, Section};

use dependency_drift::DriftRule;
use error_rate::ErrorRateRule;
use failed_call::FailedCallRule;
use heartbeat::HeartbeatRule;
use log_level::LogLevelRule;
use slow_response::SlowResponseRule;
use span_latency::SpanLatencyRule;
use traffic_stopped::TrafficStoppedRule;

/// Saved rule states, by key, as they appear at the top level of the engine snapshot.
pub(crate) type RuleStates = serde_json::Map<String, serde_json::Value>;

/// Saves a rule's `state` under `key`.
pub(crate) fn save_state<T: Serialize>(into: &mut RuleStates, key: &str, state: &T) {
    match serde_json::to_value(state) {
        Ok(value) => {
            into.insert(key.to_string(), value);
        }
        Err(e) => tracing::error!(key, error = %e, "a rule's state cannot be saved"),
    }
}

/// The state a rule saved under `key`, if there is one it can read.
pub(crate) fn load_state<T: DeserializeOwned>(from: &RuleStates, key: &str) -> Option<T> {
    let value = from.get(key)?;
    match T::deserialize(value) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(key, error = %e, "a rule's saved state is unreadable; it starts empty");
            None
        }
    }
}

/// One alert rule. Every hook has a no-op default: a rule implements what it looks at.
///
/// Hooks run in registration order. The engine has already fed the record to root cause
/// and resolved what it can tell about it (see [`SpanView`], [`LogView`]).
pub(crate) trait Rule: Send + Sync {
    /// A span from `trace_logs`.
    fn on_span(&mut self, _span: &SpanView<'_>, _cx: &mut Context) {}

    /// A log record from `service_logs`, `service.call` events included.
    fn on_log(&mut self, _log: &LogView<'_>, _cx: &mut Context) {}

    /// A registration or heartbeat from `heartbeat_logs`.
    fn on_heartbeat(&mut self, _heartbeat: &Heartbeat, _cx: &mut Context) {}

    /// The time-driven part, at `cx.now`.
    fn on_tick(&mut self, _cx: &mut Context) {}

    /// Writes the state to keep across restarts into `into`, under keys of its own.
    fn save(&self, _into: &mut RuleStates) {}

    /// Takes back the state [`Rule::save`] wrote. `windows_kept` is false when the rules
    /// that shape sliding windows changed since, so windows must start empty.
    fn restore(&mut self, _from: &RuleStates, _windows_kept: bool) {}
}

/// A span, with what the engine resolved about it.
pub(crate) struct SpanView<'a> {
    /// The span.
    pub(crate) span: &'a SpanRecord,
    /// A client span's callee, when known: its `peer.service`, or the service of the
    /// server span that is its child.
    pub(crate) callee: Option<String>,
    /// The call edge (caller, callee) the span showed, if any.
    pub(crate) edge: Option<(Cow<'a, str>, Cow<'a, str>)>,
}

/// A log record, with what the engine resolved about it.
pub(crate) struct LogView<'a> {
    /// The record.
    pub(crate) log: &'a LogEntry,
    /// Its time, or the engine's when it has none, ns.
    pub(crate) time: u64,
    /// A `service.call` event: no other rule judges it.
    pub(crate) service_call: bool,
    /// The call it describes, when it is a `service.call` event naming its target.
    pub(crate) call: Option<Call<'a>>,
    /// The call edge (caller, callee) it showed, if any.
    pub(crate) edge: Option<(Cow<'a, str>, Cow<'a, str>)>,
}

/// A call a `service.call` record describes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The caller.
    pub(crate) source: &'a str,
    /// The callee (never empty).
    pub(crate) target: &'a str,
    /// Whether it succeeded.
    pub(crate) success: bool,
}

impl<'a> Call<'a> {
    /// The call `log` describes, if it is a `service.call` event naming its target.
    pub(crate) fn of(log: &'a LogEntry) -> Option<Call<'a>> {
        let source = log
            .attr_str(names::CALL_SOURCE)
            .unwrap_or(log.service.name.as_str());
        let target = log.attr_str(names::CALL_TARGET).filter(|t| !t.is_empty())?;
        let success = log.attr_bool(names::CALL_SUCCESS).unwrap_or_else(|| {
            log.attr_str(names::CALL_STATUS)
                .map_or(!matches!(log.level.as_str(), "ERROR" | "FATAL"), |s| {
                    !s.eq_ignore_ascii_case("FAILURE")
                })
        });
        Some(Call {
            source,
            target,
            success,
        })
    }
}

/// Declares the rules: `section: ConfigType = default => constructor`, in evaluation
/// order. Generates [`RulesConfig`], the rules file's shape, validation and the registry.
macro_rules! registry {
    ($( $(#[$doc:meta])* $section:ident : $config:ty = $default:expr => $build:path ),* $(,)?) => {
        /// Every rule's settings. Read it with [`RulesConfig::from_file`] or
        /// [`RulesConfig::from_toml`], which start from [`RulesConfig::default`] (every rule
        /// on, the old system's thresholds).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct RulesConfig {
            /// Settings every rule shares: cooldown, example traces, bounds.
            pub defaults: Defaults,
            $( $(#[$doc])* pub $section: $config, )*
            /// Rule 6: grouping dependents' failures under the probable root cause.
            pub root_cause: RootCauseRule,
        }

        impl Default for RulesConfig {
            fn default() -> Self {
                RulesConfig {
                    defaults: Defaults::default(),
                    $( $section: $default, )*
                    root_cause: RootCauseRule::default(),
                }
            }
        }

        /// The rules file as written: a table per section, each optional.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct WrittenRules {
            #[serde(default)]
            defaults: Option<Defaults>,
            $(
                #[serde(default)]
                $section: Option<<$config as Section>::Written>,
            )*
            #[serde(default)]
            root_cause: Option<RootCauseRule>,
        }

        impl WrittenRules {
            /// The settings: each table over its section's default.
            pub(crate) fn over_defaults(self) -> RulesConfig {
                let base = RulesConfig::default();
                RulesConfig {
                    defaults: self.defaults.unwrap_or(base.defaults),
                    $(
                        $section: match self.$section {
                            Some(written) => <$config as Section>::over(written, &base.$section),
                            None => base.$section,
                        },
                    )*
                    root_cause: self.root_cause.unwrap_or(base.root_cause),
                }
            }
        }

        impl RulesConfig {
            /// Each rule's own checks, in order.
            pub(crate) fn validate_sections(&self) -> Result<(), Invalid> {
                $( self.$section.validate(stringify!($section))?; )*
                Ok(())
            }
        }

        /// Every rule, in evaluation order, set up for `config`.
        pub(crate) fn registry(config: &RulesConfig) -> Vec<Box<dyn Rule>> {
            vec![ $( Box::new($build(&config.$section, config)), )* ]
        }
    };
}

registry! {
    /// Rule 7: calls to services the caller did not declare.
    dependency_drift: DriftRule = DriftRule::default() => dependency_drift::Drift::new,
    /// Rule 4: heartbeat silence.
    heartbeat: HeartbeatRule = HeartbeatRule::default() => heartbeat::Silence::new,
    /// Rule 2: span-duration percentile over a sliding window.
    span_latency: SpanLatencyRule = SpanLatencyRule::default() => span_latency::Latency::new,
    /// Rule 5: failure ratio over a sliding window.
    error_rate: ErrorRateRule = ErrorRateRule::default() => error_rate::ErrorRate::new,
    /// Rule 2: records whose `response_time_ms` exceeds their `threshold_limit_ms`.
    slow_response: SlowResponseRule = SlowResponseRule::default() => slow_response::SlowResponse::new,
    /// Rule 1: ERROR (and FATAL) log records.
    error_log: LogLevelRule = LogLevelRule::error_default() => log_level::LogLevel::error,
    /// Rule 1: WARN log records.
    warn_log: LogLevelRule = LogLevelRule::warn_default() => log_level::LogLevel::warn,
    /// Rule 3: failed calls (`log_service_call` failures, client spans with error status).
    failed_call: FailedCallRule = FailedCallRule::default() => failed_call::FailedCall::new,
    /// Rule 8: services that heartbeat but stopped sending spans and logs.
    traffic_stopped: TrafficStoppedRule = TrafficStoppedRule::default() => traffic_stopped::TrafficStopped::new,
}
