//! dlog's alerting stage: tells the on-call what broke, why, and where it started, once.
//!
//! It reads `trace_logs`, `service_logs` and `heartbeat_logs` in its own consumer group and
//! runs eight rules over them (see [`rules`] and `docs/alerting.md`):
//!
//! 1. ERROR / WARN log records (levels configurable);
//! 2. latency: `response_time_ms` over `threshold_limit_ms`, and the p95 span duration over a
//!    sliding window above a per-service or per-operation threshold;
//! 3. failed calls, "X → Y failed", from `service.call` records and client spans;
//! 4. heartbeat silence per instance: delayed, down, and back;
//! 5. error rate over a sliding window;
//! 6. root cause: dependents' failures into a down or failing service become one incident
//!    naming it, or the deepest failing service that explains its failures in turn;
//! 7. dependency drift: one informational alert per call edge a service did not declare;
//! 8. traffic stopped: a service that heartbeats but stopped sending spans and logs.
//!
//! Alerts have a stable id (rule + key), fire once per ongoing condition, fold repeats in,
//! and resolve; the state survives restarts. They go to the terminal, the Kafka `alerts`
//! topic (`dlog.alert.v1.AlertEvent`), a webhook and the store.
//!
//! The rule logic is the in-memory [`Engine`], driven by an injectable [`Clock`]:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use dlog_alerting::{Engine, ManualClock, Record, RulesConfig, TransitionKind};
//! use dlog_core::model::{Heartbeat, HeartbeatKind, ServiceInfo, ServiceStatus};
//!
//! let clock = ManualClock::new(1_700_000_000_000_000_000);
//! let mut engine = Engine::new(RulesConfig::default(), Arc::new(clock.clone())).unwrap();
//! let beat = Record::Heartbeat(Heartbeat {
//!     kind: HeartbeatKind::Heartbeat,
//!     status: ServiceStatus::Up,
//!     time_unix_nano: 1_700_000_000_000_000_000,
//!     interval_ms: Some(10_000),
//!     service: ServiceInfo { name: "svc-b".into(), instance_id: Some("b-1".into()), ..Default::default() },
//! });
//! assert!(engine.process(&beat).is_empty());
//!
//! clock.advance(Duration::from_secs(31)); // more than 3 intervals of silence
//! let fired = engine.tick(clock.now_unix_nanos());
//! let rules: Vec<&str> = fired.iter().map(|t| t.alert.rule.as_str()).collect();
//! assert_eq!(rules, ["heartbeat_delayed", "heartbeat_down"]);
//! assert!(fired.iter().all(|t| t.kind == TransitionKind::Fired));
//!
//! // Silence goes on: nothing fires twice.
//! clock.advance(Duration::from_secs(60));
//! assert!(engine.tick(clock.now_unix_nanos()).is_empty());
//! # use dlog_alerting::Clock;
//! ```
//!
//! The stage wraps it: [`Alerter::builder`] starts it on Kafka, or on any
//! [`dlog_core::source::Source`] (the all-in-one mode's local log) with any clock; [`run`] and
//! [`run_with`] run it in the caller's task until it stops.

pub mod alert;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod lease;
mod metrics;
pub mod output;
pub mod record;
pub mod rules;
pub mod stage;
pub mod state;
pub mod window;

pub use alert::{alert_id, Alert, AlertState, Severity, Transition, TransitionKind};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::AlerterConfig;
pub use engine::{Engine, EngineSnapshot, EngineStats};
pub use record::Record;
pub use rules::RulesConfig;
pub use stage::{
    kafka_source, run, run_with, Alerter, AlerterBuilder, AlerterError, RunningAlerter,
};
