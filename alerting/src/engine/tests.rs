//! One or more tests per rule, driven by a manual clock.

use std::time::Duration;

use std::collections::BTreeSet;

use dlog_core::model::{HeartbeatKind, ServiceInfo, ServiceStatus, StatusCode};
use serde_json::Value;

use super::*;
use crate::alert::{alert_id, rule, AlertState, Severity, TransitionKind};
use crate::clock::ManualClock;

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = NANOS_PER_MS;

fn service(name: &str, deps: &[&str]) -> ServiceInfo {
    ServiceInfo {
        name: name.into(),
        version: None,
        instance_id: Some(format!("{name}-1")),
        dependencies: deps.iter().map(|d| d.to_string()).collect(),
        attributes: Default::default(),
    }
}

fn log(svc: &str, level: &str, body: &str, attrs: &[(&str, Value)]) -> Record {
    Record::Log(LogEntry {
        time_unix_nano: T0,
        severity_number: 0,
        level: level.into(),
        body: body.into(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        span_id: None,
        event_name: None,
        service: service(svc, &[]),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    })
}

fn call(source: &str, deps: &[&str], target: &str, success: bool, trace: &str) -> Record {
    let Record::Log(mut entry) = log(
        source,
        if success { "INFO" } else { "WARN" },
        "call",
        &[
            (names::CALL_SOURCE, source.into()),
            (names::CALL_TARGET, target.into()),
            (names::CALL_SUCCESS, success.into()),
            (
                names::CALL_STATUS,
                if success { "SUCCESS" } else { "FAILURE" }.into(),
            ),
            (names::CALL_DURATION_MS, 12.5.into()),
        ],
    ) else {
        unreachable!()
    };
    entry.event_name = Some(names::SERVICE_CALL_EVENT.into());
    entry.trace_id = Some(trace.into());
    entry.service = service(source, deps);
    Record::Log(entry)
}

#[allow(clippy::too_many_arguments)]
fn span(
    svc: &str,
    deps: &[&str],
    name: &str,
    kind: SpanKind,
    trace: &str,
    id: u64,
    parent: Option<u64>,
    duration_ms: u64,
    error: bool,
) -> SpanRecord {
    SpanRecord {
        trace_id: trace.into(),
        span_id: format!("{id:016x}"),
        parent_span_id: parent.map(|p| format!("{p:016x}")),
        name: name.into(),
        kind,
        start_unix_nano: T0,
        end_unix_nano: T0 + duration_ms * MS,
        status: if error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: if error { "boom".into() } else { String::new() },
        service: service(svc, deps),
        scope: String::new(),
        attributes: Default::default(),
        events: Vec::new(),
        links: Vec::new(),
    }
}

fn heartbeat(
    svc: &str,
    kind: HeartbeatKind,
    status: ServiceStatus,
    at: u64,
    interval_ms: Option<u64>,
) -> Record {
    Record::Heartbeat(Heartbeat {
        kind,
        status,
        time_unix_nano: at,
        interval_ms,
        service: service(svc, &[]),
    })
}

struct Harness {
    clock: ManualClock,
    engine: Engine,
}

impl Harness {
    fn new(rules: RulesConfig) -> Self {
        let clock = ManualClock::new(T0);
        let engine = Engine::new(rules, Arc::new(clock.clone())).unwrap();
        Harness { clock, engine }
    }

    fn now(&self) -> u64 {
        self.clock.now_unix_nanos()
    }

    fn feed(&mut self, record: Record) -> Vec<Transition> {
        self.engine.process(&record)
    }

    fn advance(&mut self, secs: u64) -> Vec<Transition> {
        self.clock.advance(Duration::from_secs(secs));
        let now = self.now();
        self.engine.tick(now)
    }

    /// Fired and resolved transitions only (what the terminal, Kafka and webhook see).
    fn visible(transitions: Vec<Transition>) -> Vec<(TransitionKind, String, String)> {
        transitions
            .into_iter()
            .filter(|t| t.kind != TransitionKind::Updated)
            .map(|t| (t.kind, t.alert.rule, t.alert.key))
            .collect()
    }
}

fn only_rules(enabled: &[&str]) -> RulesConfig {
    let mut r = RulesConfig::default();
    r.error_log.enabled = enabled.contains(&rule::ERROR_LOG);
    r.warn_log.enabled = enabled.contains(&rule::WARN_LOG);
    r.slow_response.enabled = enabled.contains(&rule::SLOW_RESPONSE);
    r.span_latency.enabled = enabled.contains(&rule::SPAN_LATENCY);
    r.failed_call.enabled = enabled.contains(&rule::FAILED_CALL);
    r.heartbeat.enabled = enabled.contains(&rule::HEARTBEAT_DOWN);
    r.error_rate.enabled = enabled.contains(&rule::ERROR_RATE);
    r.root_cause.enabled = enabled.contains(&rule::INCIDENT);
    r.dependency_drift.enabled = enabled.contains(&rule::DEPENDENCY_DRIFT);
    r.traffic_stopped.enabled = enabled.contains(&rule::TRAFFIC_STOPPED);
    r
}

use Harness as H;
use TransitionKind::{Fired, Resolved, Updated};

#[test]
fn error_log_fires_once_with_code_and_message_then_resolves_after_cooldown() {
    let mut h = H::new(RulesConfig::default());
    let error = || {
        log(
            "svc-a",
            "ERROR",
            "payment failed",
            &[
                (names::ERROR_CODE, "E500".into()),
                (names::ERROR_MESSAGE, "database timeout".into()),
            ],
        )
    };
    let fired = h.feed(error());
    assert_eq!(fired.len(), 1);
    let a = &fired[0].alert;
    assert_eq!(fired[0].kind, Fired);
    assert_eq!(a.rule, "error_log");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.service, "svc-a");
    assert_eq!(a.instance.as_deref(), Some("svc-a-1"));
    assert_eq!(a.summary, "svc-a ERROR E500: database timeout");
    assert_eq!(a.labels["error_code"], "E500");
    assert_eq!(a.labels["error_message"], "database timeout");
    assert_eq!(
        a.example_trace_ids,
        vec!["0af7651916cd43dd8448eb211c80319c"]
    );
    assert_eq!(a.id, alert_id("error_log", "svc-a|E500"));
    assert_eq!(a.revision, 1);
    // Repeats fold in: no new alert, one update with the count at the next tick.
    assert!(h.feed(error()).is_empty());
    assert!(h.feed(error()).is_empty());
    let t = h.advance(1);
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].kind, t[0].alert.occurrences, t[0].alert.revision),
        (Updated, 3, 2)
    );
    // Nothing more while it lasts.
    assert!(h.advance(200).is_empty());
    // 300 s after the last repeat, it resolves.
    let t = h.advance(101);
    assert_eq!(
        H::visible(t.clone()),
        vec![(Resolved, "error_log".into(), "svc-a|E500".into())]
    );
    assert_eq!(t[0].alert.occurrences, 3);
    assert_eq!(t[0].alert.state, AlertState::Resolved);
    // A new occurrence after that fires again, with the same id.
    let again = h.feed(error());
    assert_eq!(
        (again[0].kind, again[0].alert.id.clone()),
        (Fired, a.id.clone())
    );
}

#[test]
fn warn_logs_raise_warnings_and_levels_are_configurable() {
    let mut h = H::new(RulesConfig::default());
    let t = h.feed(log("svc-a", "WARN", "cache miss ratio high: 93%", &[]));
    assert_eq!(t[0].alert.rule, "warn_log");
    assert_eq!(t[0].alert.severity, Severity::Warning);
    assert_eq!(t[0].alert.summary, "svc-a WARN: cache miss ratio high: 93%");
    // Digit runs are collapsed in the key, so the same warning with other numbers folds in.
    assert!(h
        .feed(log("svc-a", "WARN", "cache miss ratio high: 97%", &[]))
        .is_empty());
    assert!(h.feed(log("svc-a", "INFO", "hello", &[])).is_empty());

    let mut rules = RulesConfig::default();
    rules.warn_log.enabled = false;
    rules.error_log.levels = vec!["FATAL".into()];
    let mut h = H::new(rules);
    assert!(h.feed(log("svc-a", "WARN", "w", &[])).is_empty());
    assert!(h.feed(log("svc-a", "ERROR", "e", &[])).is_empty());
    assert_eq!(
        h.feed(log("svc-a", "FATAL", "f", &[]))[0].alert.rule,
        "error_log"
    );
}

#[test]
fn slow_response_fires_when_response_time_exceeds_its_limit() {
    let mut h = H::new(RulesConfig::default());
    let slow = |rt: f64| {
        log(
            "svc-a",
            "WARN",
            "slow checkout",
            &[
                (names::RESPONSE_TIME_MS, rt.into()),
                (names::THRESHOLD_LIMIT_MS, 1000.into()),
            ],
        )
    };
    // Under the limit: a plain warning, not a latency alert.
    let t = h.feed(slow(800.0));
    assert_eq!(t[0].alert.rule, "warn_log");
    let t = h.feed(slow(1500.0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].alert.rule, "slow_response");
    assert_eq!(
        t[0].alert.summary,
        "svc-a responded in 1500 ms, over its 1000 ms limit: slow checkout"
    );
    assert_eq!(t[0].alert.labels["response_time_ms"], "1500");
    assert_eq!(t[0].alert.labels["threshold_limit_ms"], "1000");
}

#[test]
fn span_latency_fires_on_p95_over_threshold_and_resolves_when_it_drops() {
    let mut h = H::new(only_rules(&[rule::SPAN_LATENCY]));
    let trace = "11111111111111111111111111111111";
    for i in 0..100u64 {
        let ms = if i < 90 { 100 } else { 1_800 };
        h.feed(Record::Span(span(
            "svc-b",
            &[],
            "GET /slow",
            SpanKind::Server,
            trace,
            i + 1,
            None,
            ms,
            false,
        )));
    }
    let t = h.advance(1);
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "span_latency".into(), "svc-b|GET /slow".into())]
    );
    let a = &t[0].alert;
    assert_eq!(a.labels["operation"], "GET /slow");
    assert_eq!(a.labels["threshold_ms"], "1000");
    assert_eq!(a.labels["samples"], "100");
    let p95: f64 = a.labels["p95_ms"].parse().unwrap();
    assert!((1_700.0..=1_900.0).contains(&p95), "{p95}");
    assert!(
        a.summary.starts_with("svc-b GET /slow: p95 "),
        "{}",
        a.summary
    );
    assert_eq!(a.example_trace_ids, vec![trace.to_string()]);
    // Still slow: no repeat.
    assert!(h.advance(4).is_empty());
    // Fast spans keep arriving; once the slow ones leave the window, it resolves, once.
    let mut seen = Vec::new();
    for round in 0..14u64 {
        for i in 0..20u64 {
            let id = 1_000 + round * 100 + i;
            h.feed(Record::Span(span(
                "svc-b",
                &[],
                "GET /slow",
                SpanKind::Server,
                trace,
                id,
                None,
                50,
                false,
            )));
        }
        seen.extend(h.advance(5));
    }
    let visible: Vec<_> = seen.iter().filter(|t| t.kind != Updated).collect();
    assert_eq!(visible.len(), 1, "{seen:#?}");
    assert_eq!(
        (visible[0].kind, visible[0].alert.rule.as_str()),
        (Resolved, "span_latency")
    );
    // Diluted by fast spans, the p95 is back under the threshold before the slow spans age out.
    let summary = &visible[0].alert.summary;
    let p95: f64 = summary
        .strip_prefix("svc-b GET /slow: p95 back to ")
        .and_then(|s| s.strip_suffix(" ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(p95 < 1_000.0, "{summary}");
}

#[test]
fn span_latency_overrides_and_min_samples() {
    let mut rules = only_rules(&[rule::SPAN_LATENCY]);
    rules
        .span_latency
        .overrides
        .push(crate::rules::LatencyOverride {
            service: "svc-b".into(),
            operation: None,
            threshold_ms: 5_000.0,
        });
    let mut h = H::new(rules);
    for i in 0..20u64 {
        h.feed(Record::Span(span(
            "svc-b",
            &[],
            "op",
            SpanKind::Server,
            "t",
            i + 1,
            None,
            2_000,
            false,
        )));
    }
    // Only 5 spans of svc-a: under min_samples (10).
    for i in 0..5u64 {
        h.feed(Record::Span(span(
            "svc-a",
            &[],
            "op",
            SpanKind::Server,
            "t",
            100 + i,
            None,
            2_000,
            false,
        )));
    }
    assert!(h.advance(1).is_empty());
}

#[test]
fn failed_calls_from_service_call_records_and_client_spans() {
    let mut h = H::new(only_rules(&[rule::FAILED_CALL]));
    let t = h.feed(call("svc-a", &[], "svc-b", false, "aaaa"));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].alert.rule, "failed_call");
    assert_eq!(t[0].alert.key, "svc-a->svc-b");
    assert_eq!(t[0].alert.summary, "svc-a → svc-b failed: call");
    assert_eq!(t[0].alert.labels["target"], "svc-b");
    // A client span with error status into the same callee is the same condition.
    let mut client = span(
        "svc-a",
        &[],
        "GET",
        SpanKind::Client,
        "bbbb",
        7,
        None,
        5,
        true,
    );
    client
        .attributes
        .insert(names::PEER_SERVICE.into(), "svc-b".into());
    assert!(h.feed(Record::Span(client)).is_empty());
    let t = h.advance(1);
    assert_eq!((t[0].kind, t[0].alert.occurrences), (Updated, 2));
    assert_eq!(t[0].alert.example_trace_ids, vec!["aaaa", "bbbb"]);
    // Successful calls raise nothing.
    assert!(h.feed(call("svc-a", &[], "svc-c", true, "cccc")).is_empty());
    // A client span without peer.service learns its callee from the child server span.
    let child = span(
        "svc-c",
        &[],
        "GET /",
        SpanKind::Server,
        "dddd",
        21,
        Some(20),
        5,
        false,
    );
    h.feed(Record::Span(child));
    let t = h.feed(Record::Span(span(
        "svc-a",
        &[],
        "GET",
        SpanKind::Client,
        "dddd",
        20,
        None,
        5,
        true,
    )));
    assert_eq!(t[0].alert.key, "svc-a->svc-c");
    assert_eq!(t[0].alert.summary, "svc-a → svc-c failed: boom");
}

#[test]
fn heartbeat_delayed_then_down_then_resolved_by_the_clock() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    // Tracking starts from the first heartbeat: the service started before the alerter.
    assert!(h
        .feed(heartbeat(
            "svc-b",
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            T0,
            None
        ))
        .is_empty());
    assert!(h.advance(10).is_empty());
    assert!(h.advance(10).is_empty()); // exactly 2 intervals: not yet "more than"
    let t = h.advance(1);
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "heartbeat_delayed".into(), "svc-b-1".into())]
    );
    assert_eq!(t[0].alert.severity, Severity::Warning);
    assert_eq!(
        t[0].alert.summary,
        "svc-b (svc-b-1) heartbeat delayed: no heartbeat for 21 s (interval 10 s)"
    );
    assert!(h.advance(9).is_empty()); // 30 s
    let t = h.advance(1);
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "heartbeat_down".into(), "svc-b-1".into())]
    );
    assert_eq!(t[0].alert.severity, Severity::Critical);
    assert_eq!(t[0].alert.instance.as_deref(), Some("svc-b-1"));
    // No repeat while it stays down (the old system repeated every 5 s).
    for _ in 0..20 {
        assert!(h.advance(5).is_empty());
    }
    let now = h.now();
    let t = h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        now,
        None,
    ));
    assert_eq!(
        H::visible(t.clone()),
        vec![
            (Resolved, "heartbeat_down".into(), "svc-b-1".into()),
            (Resolved, "heartbeat_delayed".into(), "svc-b-1".into())
        ]
    );
    assert_eq!(
        t[0].alert.summary,
        "svc-b (svc-b-1) is back: heartbeat after 131 s of silence"
    );
    assert!(t[0].alert.revision < t[1].alert.revision);
}

#[test]
fn heartbeat_uses_the_announced_interval_and_registration_starts_tracking() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Registration,
        ServiceStatus::Up,
        T0,
        Some(2_000),
    ));
    assert!(h.advance(4).is_empty());
    let t = h.advance(1);
    assert_eq!(
        H::visible(t),
        vec![(Fired, "heartbeat_delayed".into(), "svc-c-1".into())]
    );
    let t = h.advance(2);
    assert_eq!(
        H::visible(t),
        vec![(Fired, "heartbeat_down".into(), "svc-c-1".into())]
    );
}

#[test]
fn down_registration_ends_tracking_without_an_alert() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Registration,
        ServiceStatus::Up,
        T0,
        None,
    ));
    h.advance(5);
    let now = h.now();
    assert!(h
        .feed(heartbeat(
            "svc-b",
            HeartbeatKind::Registration,
            ServiceStatus::Down,
            now,
            None
        ))
        .is_empty());
    assert!(h.advance(3_600).is_empty());
    // A delayed alert that was firing resolves on a clean shutdown.
    h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        h.now(),
        None,
    ));
    assert_eq!(H::visible(h.advance(25)).len(), 1);
    let now = h.now();
    let t = h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Registration,
        ServiceStatus::Down,
        now,
        None,
    ));
    assert_eq!(
        H::visible(t.clone()),
        vec![(Resolved, "heartbeat_delayed".into(), "svc-c-1".into())]
    );
    assert_eq!(t[0].alert.labels["reason"], "shutdown");
}

#[test]
fn stale_history_does_not_start_tracking() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    h.clock.advance(Duration::from_secs(3_600));
    h.feed(heartbeat(
        "svc-old",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    assert!(h.advance(60).is_empty());
    assert_eq!(h.engine.stats().stale_heartbeats, 1);
}

#[test]
fn error_rate_fires_over_five_percent_in_the_window_and_resolves() {
    let mut h = H::new(only_rules(&[rule::ERROR_RATE]));
    for i in 0..100u64 {
        let failed = i % 10 == 0; // 10%
        h.feed(Record::Span(span(
            "svc-b",
            &[],
            "GET /",
            SpanKind::Server,
            &format!("{i:032x}"),
            i + 1,
            None,
            5,
            failed,
        )));
    }
    let t = h.advance(1);
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "error_rate".into(), "svc-b".into())]
    );
    let a = &t[0].alert;
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.labels["rate_percent"], "10.0");
    assert_eq!(a.labels["total"], "100");
    assert_eq!(
        a.summary,
        "svc-b: 10.0% of 100 calls and requests failed over the last 60 s (threshold 5%)"
    );
    assert_eq!(a.example_trace_ids.len(), 5);
    assert!(h.advance(10).is_empty());
    // The window slides past the failures.
    let t = h.advance(60);
    assert_eq!(
        H::visible(t),
        vec![(Resolved, "error_rate".into(), "svc-b".into())]
    );
}

#[test]
fn error_rate_needs_min_samples_and_exactly_five_percent_is_fine() {
    let mut h = H::new(only_rules(&[rule::ERROR_RATE]));
    for i in 0..10u64 {
        h.feed(call("svc-a", &[], "svc-b", i != 0, "t"));
    }
    assert!(h.advance(1).is_empty(), "10 samples < min_samples 20");
    for i in 0..90u64 {
        h.feed(call("svc-a", &[], "svc-b", i >= 4, "t"));
    }
    // 5 failures of 100: not more than 5%.
    assert!(h.advance(1).is_empty());
}

#[test]
fn b_down_and_a_calls_to_b_failing_is_one_incident_naming_b() {
    let mut h = H::new(RulesConfig::default());
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Registration,
        ServiceStatus::Up,
        T0,
        None,
    ));
    h.advance(21);
    let t = h.advance(10);
    assert_eq!(
        H::visible(t),
        vec![(Fired, "heartbeat_down".into(), "svc-b-1".into())]
    );
    // A's calls into B fail, traced and logged, from several requests.
    let mut all = Vec::new();
    for i in 0..5u64 {
        let trace = format!("{:032x}", 0xa0 + i);
        all.extend(h.feed(call("svc-a", &["svc-b"], "svc-b", false, &trace)));
        let mut client = span(
            "svc-a",
            &["svc-b"],
            "GET /b",
            SpanKind::Client,
            &trace,
            100 + i,
            None,
            3,
            true,
        );
        client
            .attributes
            .insert(names::PEER_SERVICE.into(), "svc-b".into());
        all.extend(h.feed(Record::Span(client)));
    }
    all.extend(h.advance(1));
    let visible = H::visible(all.clone());
    assert_eq!(
        visible,
        vec![(Fired, "incident".into(), "svc-b".into())],
        "{all:#?}"
    );
    let incident = all
        .iter()
        .rev()
        .find(|t| t.alert.rule == "incident")
        .unwrap();
    assert_eq!(incident.alert.root_cause.as_deref(), Some("svc-b"));
    assert_eq!(incident.alert.service, "svc-b");
    assert_eq!(incident.alert.occurrences, 10);
    assert_eq!(incident.alert.labels["cause"], "heartbeat_down");
    assert_eq!(incident.alert.labels["dependents"], "svc-a");
    assert_eq!(
        incident.alert.summary,
        "svc-b is down: probable root cause of 10 failures in svc-a"
    );
    // B's own down alert now names the incident.
    let down = all
        .iter()
        .find(|t| t.alert.rule == "heartbeat_down")
        .unwrap();
    assert_eq!(down.kind, Updated);
    assert_eq!(down.alert.incident_id, incident.alert.incident_id);
    // No failed_call alert was shown on its own.
    assert!(h.engine.firing().all(|a| a.rule != "failed_call"));
    // B comes back and keeps beating; the incident resolves once B has been healthy and
    // nothing was grouped into it for the window (60 s).
    let mut seen = Vec::new();
    for _ in 0..7 {
        let now = h.now();
        seen.extend(h.feed(heartbeat(
            "svc-b",
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            now,
            None,
        )));
        seen.extend(h.advance(10));
    }
    assert_eq!(
        H::visible(seen),
        vec![
            (Resolved, "heartbeat_down".into(), "svc-b-1".into()),
            (Resolved, "heartbeat_delayed".into(), "svc-b-1".into()),
            (Resolved, "incident".into(), "svc-b".into()),
        ]
    );
}

#[test]
fn failures_from_several_callers_make_the_callee_the_root_and_attach_earlier_alerts() {
    let mut h = H::new(only_rules(&[rule::FAILED_CALL, rule::INCIDENT]));
    let t = h.feed(call("svc-a", &[], "svc-db", false, "t1"));
    assert_eq!(
        H::visible(t),
        vec![(Fired, "failed_call".into(), "svc-a->svc-db".into())]
    );
    // A second caller failing into the same service: svc-db is failing.
    let t = h.feed(call("svc-c", &[], "svc-db", false, "t2"));
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "incident".into(), "svc-db".into())]
    );
    assert_eq!(t[0].alert.labels["cause"], "failing_callers");
    let t = h.advance(1);
    // The earlier failed_call alert joins the incident.
    let attached = t.iter().find(|t| t.alert.rule == "failed_call").unwrap();
    assert_eq!(attached.kind, Updated);
    assert_eq!(attached.alert.root_cause.as_deref(), Some("svc-db"));
    let incident = t.iter().find(|t| t.alert.rule == "incident").unwrap();
    assert_eq!(incident.alert.labels["dependents"], "svc-a,svc-c");
}

#[test]
fn root_cause_follows_dependencies_to_the_deepest_failing_service() {
    let mut h = H::new(RulesConfig::default());
    // B declares it depends on C; C is down.
    h.feed(Record::Span(span(
        "svc-b",
        &["svc-c"],
        "op",
        SpanKind::Server,
        "t",
        1,
        None,
        1,
        false,
    )));
    h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Registration,
        ServiceStatus::Up,
        T0,
        None,
    ));
    h.advance(31);
    let t = h.feed(call("svc-a", &["svc-b"], "svc-b", false, "t9"));
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "incident".into(), "svc-c".into())]
    );
    assert_eq!(t[0].alert.root_cause.as_deref(), Some("svc-c"));
}

#[test]
fn drift_is_raised_once_per_undeclared_edge() {
    let mut h = H::new(only_rules(&[rule::DEPENDENCY_DRIFT]));
    // Declared edge: fine.
    assert!(h
        .feed(call("svc-a", &["svc-b"], "svc-b", true, "t"))
        .is_empty());
    let t = h.feed(call("svc-a", &["svc-b"], "svc-z", true, "t"));
    assert_eq!(
        H::visible(t.clone()),
        vec![(Fired, "dependency_drift".into(), "svc-a->svc-z".into())]
    );
    assert_eq!(t[0].alert.severity, Severity::Info);
    assert_eq!(
        t[0].alert.summary,
        "svc-a calls svc-z, which is not among its declared dependencies (svc-b)"
    );
    // The same edge again, through a span: nothing new.
    let mut client = span(
        "svc-a",
        &["svc-b"],
        "GET",
        SpanKind::Client,
        "t",
        5,
        None,
        1,
        false,
    );
    client
        .attributes
        .insert(names::PEER_SERVICE.into(), "svc-z".into());
    assert!(h.feed(Record::Span(client)).is_empty());
    assert!(h
        .feed(call("svc-a", &["svc-b"], "svc-z", true, "t"))
        .is_empty());
    assert!(h.advance(3_600).is_empty());
    // Another undeclared edge: one more.
    let t = h.feed(call("svc-a", &["svc-b"], "svc-y", true, "t"));
    assert_eq!(
        H::visible(t),
        vec![(Fired, "dependency_drift".into(), "svc-a->svc-y".into())]
    );
    // An edge seen through parent/child spans of different services.
    h.feed(Record::Span(span(
        "svc-a",
        &["svc-b"],
        "GET",
        SpanKind::Client,
        "t",
        40,
        None,
        1,
        false,
    )));
    let t = h.feed(Record::Span(span(
        "svc-x",
        &[],
        "GET /",
        SpanKind::Server,
        "t",
        41,
        Some(40),
        1,
        false,
    )));
    assert_eq!(
        H::visible(t),
        vec![(Fired, "dependency_drift".into(), "svc-a->svc-x".into())]
    );
    // Declaring the dependency resolves it.
    let t = h.feed(call("svc-a", &["svc-b", "svc-z"], "svc-b", true, "t"));
    assert_eq!(
        H::visible(t),
        vec![(Resolved, "dependency_drift".into(), "svc-a->svc-z".into())]
    );
    // Services that declare nothing are not judged by default.
    assert!(h.feed(call("svc-q", &[], "svc-z", true, "t")).is_empty());
}

#[test]
fn every_rule_can_be_turned_off() {
    let mut h = H::new(only_rules(&[]));
    h.feed(log("svc-a", "ERROR", "e", &[]));
    h.feed(log(
        "svc-a",
        "WARN",
        "w",
        &[
            (names::RESPONSE_TIME_MS, 5000.into()),
            (names::THRESHOLD_LIMIT_MS, 1.into()),
        ],
    ));
    h.feed(call("svc-a", &["svc-b"], "svc-z", false, "t"));
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    for i in 0..100u64 {
        h.feed(Record::Span(span(
            "svc-c",
            &[],
            "op",
            SpanKind::Server,
            "t",
            i + 1,
            None,
            5_000,
            true,
        )));
    }
    assert!(h.advance(1).is_empty());
    assert!(h.advance(100).is_empty());
    assert_eq!(h.engine.firing().count(), 0);
}

#[test]
fn snapshot_restore_keeps_alerts_and_does_not_refire_or_lose_the_resolution() {
    let mut h = H::new(RulesConfig::default());
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    let fired = H::visible(h.advance(31));
    assert_eq!(fired.len(), 2);
    let json = serde_json::to_vec(&h.engine.snapshot()).unwrap();
    // "Restart", an hour later.
    h.clock.advance(Duration::from_secs(3_600));
    let snapshot: EngineSnapshot = serde_json::from_slice(&json).unwrap();
    let mut engine =
        Engine::restore(RulesConfig::default(), Arc::new(h.clock.clone()), snapshot).unwrap();
    assert!(engine.tick(h.now()).is_empty(), "no repeat after restore");
    assert_eq!(engine.firing().count(), 2);
    let t = engine.process(&heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        h.now(),
        None,
    ));
    let kinds: Vec<_> = t.iter().map(|t| (t.kind, t.alert.rule.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (Resolved, "heartbeat_down"),
            (Resolved, "heartbeat_delayed")
        ]
    );
    // Revisions continue after the restore.
    assert!(t[0].alert.revision > 2);
}

#[test]
fn restore_does_not_mistake_the_alerters_own_downtime_for_silence() {
    let mut h = H::new(RulesConfig::default());
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    let snapshot = h.engine.snapshot();
    h.clock.advance(Duration::from_secs(600));
    let mut engine =
        Engine::restore(RulesConfig::default(), Arc::new(h.clock.clone()), snapshot).unwrap();
    assert!(engine.tick(h.now()).is_empty());
    // Silence counts again from the restore.
    h.clock.advance(Duration::from_secs(21));
    let t = engine.tick(h.now());
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].alert.rule, "heartbeat_delayed");
}

#[test]
fn active_alerts_are_bounded() {
    let mut rules = only_rules(&[rule::ERROR_LOG]);
    rules.defaults.max_active_alerts = 3;
    let mut h = H::new(rules);
    for i in 0..10 {
        h.feed(log(
            "svc-a",
            "ERROR",
            "x",
            &[(names::ERROR_CODE, format!("E{i}").into())],
        ));
    }
    assert_eq!(h.engine.firing().count(), 3);
    assert_eq!(h.engine.stats().alerts_dropped, 7);
}

// ---------------------------------------------------------------- transitive root cause

const TC: &str = "test-client";
const SA: &str = "service-a";
const SB: &str = "service-b";
const SC: &str = "service-c";

fn deps_of(svc: &str) -> &'static [&'static str] {
    match svc {
        TC => &[SA],
        SA => &[SB, SC],
        SB => &[SC],
        _ => &[],
    }
}

/// A server span of `svc`, failing when `error`.
fn served(svc: &str, trace: &str, id: u64, parent: Option<u64>, error: bool) -> Record {
    Record::Span(span(
        svc,
        deps_of(svc),
        "handle",
        SpanKind::Server,
        trace,
        id,
        parent,
        5,
        error,
    ))
}

/// A client span of `svc` into `peer`, failing with status "502" when `error`.
fn calls(svc: &str, peer: &str, trace: &str, id: u64, parent: Option<u64>, error: bool) -> Record {
    let mut s = span(
        svc,
        deps_of(svc),
        "call",
        SpanKind::Client,
        trace,
        id,
        parent,
        4,
        error,
    );
    s.attributes.insert(names::PEER_SERVICE.into(), peer.into());
    if error {
        s.status_message = "502".into();
    }
    Record::Span(s)
}

/// An ERROR record of `svc` saying its call into `dependent` failed (error.code DEP-502).
fn dependency_error(svc: &str, dependent: &str, trace: &str) -> Record {
    let Record::Log(mut entry) = log(
        svc,
        "ERROR",
        "dependency call failed",
        &[
            (names::ERROR_CODE, "DEP-502".into()),
            (names::ERROR_MESSAGE, "bad gateway".into()),
            (names::DEPENDENT_SERVICE, dependent.into()),
        ],
    ) else {
        unreachable!()
    };
    entry.trace_id = Some(trace.into());
    Record::Log(entry)
}

/// One request of the demo: test-client → A, A → B → C and A → C. `b_fails`: B's call into
/// C fails; `c_fails`: A's own call into C fails. A fails when either does, test-client when
/// A does. Records arrive in the order the spans end.
fn chain_request(h: &mut Harness, i: u64, b_fails: bool, c_fails: bool) -> Vec<Transition> {
    let trace = format!("{:032x}", 0xc000 + i);
    let t = trace.as_str();
    let base = (i + 1) * 100;
    let a_fails = b_fails || c_fails;
    let mut records = vec![
        // B → C
        served(SC, t, base + 6, Some(base + 5), b_fails),
        calls(SB, SC, t, base + 5, Some(base + 4), b_fails),
        call(SB, deps_of(SB), SC, !b_fails, t),
    ];
    if b_fails {
        records.push(dependency_error(SB, SC, t));
    }
    records.extend([
        served(SB, t, base + 4, Some(base + 3), b_fails),
        calls(SA, SB, t, base + 3, Some(base + 2), b_fails),
        call(SA, deps_of(SA), SB, !b_fails, t),
        // A → C
        served(SC, t, base + 8, Some(base + 7), c_fails),
        calls(SA, SC, t, base + 7, Some(base + 2), c_fails),
        call(SA, deps_of(SA), SC, !c_fails, t),
    ]);
    if a_fails {
        records.push(dependency_error(SA, SC, t));
    }
    records.extend([
        served(SA, t, base + 2, Some(base + 1), a_fails),
        calls(TC, SA, t, base + 1, Some(base), a_fails),
        Record::Span(span(
            TC,
            deps_of(TC),
            "load",
            SpanKind::Internal,
            t,
            base,
            None,
            6,
            a_fails,
        )),
    ]);
    records.into_iter().flat_map(|r| h.feed(r)).collect()
}

/// Each alert id fired at most once.
fn assert_fired_once(seen: &[Transition]) {
    let mut fired = BTreeMap::new();
    for t in seen.iter().filter(|t| t.kind == Fired) {
        *fired.entry(t.alert.id.clone()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|t| t.kind == Fired && fired[&t.alert.id] > 1)
        .map(|t| (t.alert.rule.clone(), t.alert.key.clone()))
        .collect();
    assert!(twice.is_empty(), "fired twice: {twice:?}");
}

fn incidents(seen: &[Transition]) -> BTreeSet<String> {
    seen.iter()
        .filter(|t| t.alert.rule == rule::INCIDENT)
        .map(|t| t.alert.key.clone())
        .collect()
}

#[test]
fn a_chain_of_failures_is_one_incident_naming_the_deepest_failing_service() {
    let mut h = H::new(RulesConfig::default());
    let mut seen = Vec::new();
    // Five requests a second; C fails one call in five. The first failures all hit A's
    // direct calls into C, so at the first tick A's error rate is over its threshold while
    // C has one failing caller and too few requests to be judged: the order in which the
    // demo opened a second incident naming service-a.
    for i in 0..150u64 {
        let c_fails = i % 5 == 1;
        let b_fails = i % 5 == 3 && i >= 5;
        seen.extend(chain_request(&mut h, i, b_fails, c_fails));
        if i % 5 == 4 {
            seen.extend(h.advance(1));
        }
    }
    let incident_id = alert_id(rule::INCIDENT, SC);
    assert_eq!(
        incidents(&seen),
        BTreeSet::from([SC.to_string()]),
        "{seen:#?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|t| t.alert.rule == rule::INCIDENT && t.kind == Fired)
            .count(),
        1
    );
    assert_fired_once(&seen);
    // Whatever was shown with a root cause named service-c.
    for t in &seen {
        if let Some(root) = &t.alert.root_cause {
            assert_eq!(
                (root.as_str(), t.alert.incident_id.as_deref()),
                (SC, Some(incident_id.as_str())),
                "{t:#?}"
            );
        }
    }
    let snapshot = h.engine.snapshot();
    let alerts = &snapshot.alerts;
    let incident = &alerts[&incident_id];
    assert_eq!(incident.alert.root_cause.as_deref(), Some(SC));
    assert_eq!(
        incident.alert.labels["dependents"],
        "service-a,service-b,test-client"
    );
    assert!(
        incident
            .alert
            .summary
            .starts_with("service-c is failing (error rate): probable root cause of "),
        "{}",
        incident.alert.summary
    );
    // Every failure of A, B and test-client is grouped under it, and so is C's error rate.
    let grouped = |rule_name: &str, key: &str| {
        let a = &alerts[&alert_id(rule_name, key)].alert;
        (a.root_cause.clone(), a.incident_id.clone())
    };
    let expected = (Some(SC.to_string()), Some(incident_id.clone()));
    for (rule_name, key) in [
        (rule::FAILED_CALL, "test-client->service-a"),
        (rule::FAILED_CALL, "service-a->service-c"),
        (rule::FAILED_CALL, "service-a->service-b"),
        (rule::FAILED_CALL, "service-b->service-c"),
        (rule::ERROR_LOG, "service-a|DEP-502"),
        (rule::ERROR_RATE, SA),
        (rule::ERROR_RATE, SB),
        (rule::ERROR_RATE, TC),
        (rule::ERROR_RATE, SC),
    ] {
        assert_eq!(grouped(rule_name, key), expected, "{rule_name} {key}");
    }
    // Once C recovers, everything resolves, once.
    let mut after = Vec::new();
    for _ in 0..80 {
        after.extend(h.advance(5));
    }
    assert_eq!(h.engine.snapshot().firing(), 0, "{after:#?}");
    assert!(after.iter().all(|t| t.kind != Fired), "{after:#?}");
    let resolved: Vec<_> = after
        .iter()
        .filter(|t| t.kind == Resolved && t.alert.rule == rule::INCIDENT)
        .collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].alert.key, SC);
}

#[test]
fn a_service_failing_on_its_own_stays_the_root_cause() {
    let mut h = H::new(RulesConfig::default());
    let mut seen = Vec::new();
    // A's calls into C all succeed; A fails a request in three on its own.
    for i in 0..60u64 {
        let trace = format!("{:032x}", 0xa000 + i);
        let t = trace.as_str();
        let base = (i + 1) * 100;
        let a_fails = i % 3 == 0;
        for r in [
            served(SC, t, base + 4, Some(base + 3), false),
            calls(SA, SC, t, base + 3, Some(base + 2), false),
            call(SA, deps_of(SA), SC, true, t),
        ] {
            seen.extend(h.feed(r));
        }
        if a_fails {
            seen.extend(h.feed(log(
                SA,
                "ERROR",
                "null pointer",
                &[(names::ERROR_CODE, "E-NPE".into())],
            )));
        }
        for r in [
            served(SA, t, base + 2, Some(base + 1), a_fails),
            calls(TC, SA, t, base + 1, Some(base), a_fails),
        ] {
            seen.extend(h.feed(r));
        }
        if i % 10 == 9 {
            seen.extend(h.advance(1));
        }
    }
    assert_eq!(
        incidents(&seen),
        BTreeSet::from([SA.to_string()]),
        "{seen:#?}"
    );
    assert_fired_once(&seen);
    let incident_id = alert_id(rule::INCIDENT, SA);
    let snapshot = h.engine.snapshot();
    let alerts = &snapshot.alerts;
    assert_eq!(alerts[&incident_id].alert.labels["cause"], "error_rate");
    for (rule_name, key) in [
        (rule::FAILED_CALL, "test-client->service-a"),
        (rule::ERROR_RATE, SA),
        (rule::ERROR_RATE, TC),
    ] {
        let a = &alerts[&alert_id(rule_name, key)].alert;
        assert_eq!(
            (a.root_cause.as_deref(), a.incident_id.as_deref()),
            (Some(SA), Some(incident_id.as_str())),
            "{rule_name} {key}"
        );
    }
    // A's error record names no dependency: its own alert, not grouped under anything else.
    assert!(alerts[&alert_id(rule::ERROR_LOG, "service-a|E-NPE")]
        .alert
        .root_cause
        .is_none());
}

#[test]
fn services_whose_failures_explain_each_other_agree_on_one_root() {
    // A calls B and B calls A; both fail only in their calls into each other.
    let mut h = H::new(RulesConfig::default());
    let mut seen = Vec::new();
    let two = |svc: &str| -> Vec<String> { vec![if svc == SA { SB } else { SA }.to_string()] };
    for i in 0..30u64 {
        let trace = format!("{:032x}", 0xd000 + i);
        let t = trace.as_str();
        let base = (i + 1) * 100;
        for (svc, peer, id) in [(SA, SB, base), (SB, SA, base + 10)] {
            let deps = two(svc);
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let mut client = span(
                svc,
                &deps,
                "call",
                SpanKind::Client,
                t,
                id + 1,
                Some(id),
                4,
                true,
            );
            client
                .attributes
                .insert(names::PEER_SERVICE.into(), peer.into());
            seen.extend(h.feed(Record::Span(client)));
            seen.extend(h.feed(call(svc, &deps, peer, false, t)));
            seen.extend(h.feed(Record::Span(span(
                svc,
                &deps,
                "handle",
                SpanKind::Server,
                t,
                id,
                Some(id + 5),
                5,
                true,
            ))));
        }
        seen.extend(h.feed(calls(TC, SA, t, base + 50, None, true)));
        if i % 10 == 9 {
            seen.extend(h.advance(1));
        }
    }
    let now = h.now();
    let from_a = h.engine.find_root_at(SA, now);
    let from_b = h.engine.find_root_at(SB, now);
    assert_eq!(from_a, from_b);
    assert_eq!(from_a.map(|(root, _)| root).as_deref(), Some(SA));
    assert_eq!(
        incidents(&seen),
        BTreeSet::from([SA.to_string()]),
        "{seen:#?}"
    );
    assert_fired_once(&seen);
    let incident_id = alert_id(rule::INCIDENT, SA);
    let snapshot = h.engine.snapshot();
    let alerts = &snapshot.alerts;
    for (rule_name, key) in [
        (rule::ERROR_RATE, SB),
        (rule::ERROR_RATE, SA),
        (rule::FAILED_CALL, "test-client->service-a"),
    ] {
        let a = &alerts[&alert_id(rule_name, key)].alert;
        assert_eq!(
            (a.root_cause.as_deref(), a.incident_id.as_deref()),
            (Some(SA), Some(incident_id.as_str())),
            "{rule_name} {key}"
        );
    }
}

#[test]
fn an_incident_whose_root_turns_out_to_fail_because_of_a_deeper_service_is_merged() {
    let mut h = H::new(RulesConfig::default());
    let mut seen = Vec::new();
    // First A fails on its own: test-client's failures are an incident naming A.
    for i in 0..20u64 {
        let trace = format!("{:032x}", 0xe000 + i);
        let t = trace.as_str();
        let base = (i + 1) * 100;
        seen.extend(h.feed(served(SA, t, base + 2, Some(base + 1), i % 2 == 0)));
        seen.extend(h.feed(calls(TC, SA, t, base + 1, Some(base), i % 2 == 0)));
    }
    seen.extend(h.advance(1));
    assert_eq!(incidents(&seen), BTreeSet::from([SA.to_string()]));
    // Then C breaks: A's calls into it fail, and so do B's. A's failures now point at C.
    for i in 20..80u64 {
        let c_fails = i % 2 == 0;
        seen.extend(chain_request(&mut h, i, c_fails, c_fails));
        if i % 10 == 9 {
            seen.extend(h.advance(1));
        }
    }
    assert_fired_once(&seen);
    let old = alert_id(rule::INCIDENT, SA);
    let new = alert_id(rule::INCIDENT, SC);
    let merged: Vec<_> = seen
        .iter()
        .filter(|t| t.alert.id == old && t.kind == Resolved)
        .collect();
    assert_eq!(merged.len(), 1, "{seen:#?}");
    assert_eq!(merged[0].alert.labels["reason"], "merged");
    assert_eq!(merged[0].alert.labels["merged_into"], new);
    assert_eq!(
        merged[0].alert.summary,
        "service-a fails because its calls into service-c fail: merged into the incident of service-c"
    );
    let snapshot = h.engine.snapshot();
    let alerts = &snapshot.alerts;
    assert!(!alerts.contains_key(&old));
    let incident = &alerts[&new].alert;
    assert_eq!(
        incident.labels["dependents"],
        "service-a,service-b,test-client"
    );
    let tc = &alerts[&alert_id(rule::FAILED_CALL, "test-client->service-a")].alert;
    assert_eq!(
        (tc.root_cause.as_deref(), tc.incident_id.as_deref()),
        (Some(SC), Some(new.as_str()))
    );
}

/// Regression: silence was measured from processing time, so an input stall (an output outage
/// with the input paused, a broker outage) made every instance look silent at the first tick
/// after it, while their heartbeats sat unread in the backlog.
#[test]
fn an_input_stall_is_not_mistaken_for_every_service_going_silent() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    for svc in ["svc-b", "svc-c"] {
        h.feed(heartbeat(
            svc,
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            T0,
            None,
        ));
    }
    // No input (and no tick) for longer than the down threshold (3 intervals of 10 s).
    h.clock.advance(Duration::from_secs(60));
    h.engine.note_input_gap(h.now());
    assert!(h.engine.tick(h.now()).is_empty());
    // The backlog arrives: heartbeats sent during the stall, then a tick.
    for (i, svc) in ["svc-b", "svc-c"].iter().enumerate() {
        let at = T0 + (i as u64 + 1) * 10 * NANOS_PER_SEC;
        assert!(h
            .feed(heartbeat(
                svc,
                HeartbeatKind::Heartbeat,
                ServiceStatus::Up,
                at,
                None
            ))
            .is_empty());
    }
    assert!(h.advance(1).is_empty());
    // A service that then truly goes silent is still reported.
    h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        h.now(),
        None,
    ));
    assert!(h.advance(15).is_empty());
    h.feed(heartbeat(
        "svc-c",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        h.now(),
        None,
    ));
    let t = h.advance(10);
    assert_eq!(
        H::visible(t),
        vec![(Fired, "heartbeat_delayed".into(), "svc-b-1".into())]
    );
}

/// Regression: `drift_seen` and `declared` grew without limit, and drift alerts counted
/// toward `max_active_alerts`, so undeclared edges could make error alerts be dropped.
#[test]
fn drift_is_bounded_and_never_crowds_out_error_alerts() {
    let mut rules = only_rules(&[rule::DEPENDENCY_DRIFT, rule::ERROR_LOG]);
    rules.defaults.max_active_alerts = 3;
    rules.root_cause.max_edges = 5;
    let mut h = H::new(rules);
    let mut drift = 0;
    for i in 0..20 {
        let target = format!("svc-z{i}");
        drift += H::visible(h.feed(call("svc-a", &["svc-b"], &target, true, "t"))).len();
    }
    assert_eq!(drift, 5, "drift alerts are bounded by max_edges");
    assert!(
        h.engine.snapshot().rule_states["drift_seen"]
            .as_object()
            .unwrap()
            .values()
            .map(|callees| callees.as_array().unwrap().len())
            .sum::<usize>()
            <= 5
    );
    // Many services declaring dependencies: bounded too.
    for i in 0..20 {
        let deps = [format!("d{i}-1"), format!("d{i}-2")];
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        h.feed(call(&format!("svc-q{i}"), &deps, deps[0], true, "t"));
    }
    let declared: usize = h
        .engine
        .snapshot()
        .graph
        .declared
        .values()
        .map(Vec::len)
        .sum();
    assert!(declared <= 5, "{declared} declared dependencies kept");
    // Drift does not use up the cap: three error alerts still fire.
    for i in 0..3 {
        let t = h.feed(log(
            "svc-a",
            "ERROR",
            "x",
            &[(names::ERROR_CODE, format!("E{i}").into())],
        ));
        assert_eq!(H::visible(t).len(), 1, "error alert {i} fired");
    }
    assert_eq!(h.engine.stats().alerts_dropped, 0);
    // The fourth is over the cap.
    h.feed(log(
        "svc-a",
        "ERROR",
        "x",
        &[(names::ERROR_CODE, "E9".into())],
    ));
    assert_eq!(h.engine.stats().alerts_dropped, 1);
}

// ---------------------------------------------------------------- traffic_stopped

/// A heartbeat of `svc` at the clock's time.
fn beat(h: &mut Harness, svc: &str) -> Vec<Transition> {
    let now = h.now();
    h.feed(heartbeat(
        svc,
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        now,
        None,
    ))
}

/// Advances `secs` in steps of 10 s, heartbeating `svc` at each step; returns what changed.
fn heartbeating(h: &mut Harness, svc: &str, secs: u64) -> Vec<Transition> {
    let mut seen = Vec::new();
    for _ in 0..secs / 10 {
        seen.extend(h.advance(10));
        seen.extend(beat(h, svc));
    }
    seen
}

fn traffic_rules(after_secs: u64) -> RulesConfig {
    let mut rules = only_rules(&[rule::TRAFFIC_STOPPED, rule::HEARTBEAT_DOWN]);
    rules.traffic_stopped.after_secs = after_secs;
    rules
}

#[test]
fn traffic_stopped_fires_for_a_heartbeating_service_that_went_quiet_and_resolves_when_it_sends_again(
) {
    let mut h = H::new(traffic_rules(60));
    beat(&mut h, "svc-a");
    assert!(h.feed(log("svc-a", "INFO", "served", &[])).is_empty());
    // Quiet but alive for 60 s: not yet (strictly more than after_secs).
    assert!(heartbeating(&mut h, "svc-a", 60).is_empty());
    let fired = heartbeating(&mut h, "svc-a", 10);
    assert_eq!(
        H::visible(fired.clone()),
        vec![(Fired, "traffic_stopped".into(), "svc-a".into())]
    );
    let a = &fired[0].alert;
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(a.service, "svc-a");
    assert_eq!(
        a.summary,
        "svc-a still heartbeats but sent no span or log for 70 s: stuck or cut off"
    );
    assert_eq!(a.labels["silent_ms"], "70000");
    assert_eq!(a.labels["after_secs"], "60");
    // Still quiet: nothing fires twice.
    assert!(heartbeating(&mut h, "svc-a", 120).is_empty());
    // A span: resolved.
    let resolved = h.feed(Record::Span(span(
        "svc-a",
        &[],
        "GET /",
        SpanKind::Server,
        "0af7651916cd43dd8448eb211c80319c",
        1,
        None,
        5,
        false,
    )));
    assert_eq!(
        H::visible(resolved.clone()),
        vec![(Resolved, "traffic_stopped".into(), "svc-a".into())]
    );
    assert_eq!(
        resolved[0].alert.summary,
        "svc-a sends spans and logs again, after 190 s without any"
    );
}

#[test]
fn traffic_stopped_ignores_services_that_never_sent_traffic_and_quiet_services_that_stopped_heartbeating(
) {
    let mut h = H::new(traffic_rules(60));
    // svc-b only heartbeats: nothing to miss.
    assert!(heartbeating(&mut h, "svc-b", 300).is_empty());
    // svc-c sent a log, then went silent altogether: that is heartbeat_down's to report.
    h.feed(log("svc-c", "INFO", "served", &[]));
    h.advance(10);
    beat(&mut h, "svc-c");
    let seen = H::visible(h.advance(300));
    assert!(
        seen.iter().all(|(_, r, _)| r != "traffic_stopped"),
        "{seen:?}"
    );
    assert!(seen.contains(&(Fired, "heartbeat_down".into(), "svc-c-1".into())));
}

#[test]
fn traffic_stopped_resolves_when_heartbeats_stop_too_or_at_a_clean_shutdown() {
    let mut h = H::new(traffic_rules(30));
    for svc in ["svc-a", "svc-b"] {
        beat(&mut h, svc);
        h.feed(log(svc, "INFO", "served", &[]));
    }
    let mut fired = Vec::new();
    for _ in 0..4 {
        fired.extend(h.advance(10));
        fired.extend(beat(&mut h, "svc-a"));
        fired.extend(beat(&mut h, "svc-b"));
    }
    assert_eq!(
        H::visible(fired),
        vec![
            (Fired, "traffic_stopped".into(), "svc-a".into()),
            (Fired, "traffic_stopped".into(), "svc-b".into()),
        ]
    );
    // svc-a shuts down cleanly.
    let down = h.feed(heartbeat(
        "svc-a",
        HeartbeatKind::Registration,
        ServiceStatus::Down,
        h.now(),
        None,
    ));
    assert_eq!(
        H::visible(down.clone()),
        vec![(Resolved, "traffic_stopped".into(), "svc-a".into())]
    );
    assert_eq!(down[0].alert.labels["reason"], "shutdown");
    // svc-b stops heartbeating as well: the heartbeat rules take over.
    let later: Vec<_> = h
        .advance(40)
        .into_iter()
        .filter(|t| t.alert.rule == rule::TRAFFIC_STOPPED)
        .collect();
    assert_eq!(later.len(), 1, "{later:#?}");
    assert_eq!(later[0].kind, Resolved);
    assert_eq!(later[0].alert.key, "svc-b");
    assert_eq!(later[0].alert.labels["reason"], "heartbeat_stopped");
}

#[test]
fn traffic_stopped_is_on_by_default_with_a_five_minute_silence() {
    let rules = RulesConfig::default();
    assert!(rules.traffic_stopped.enabled);
    assert_eq!(rules.traffic_stopped.after_secs, 300);
    let mut bad = RulesConfig::default();
    bad.traffic_stopped.after_secs = 0;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("traffic_stopped.after_secs"));
}

/// The state file of a build from before the rules had files of their own: every rule's state
/// at the top level of the engine snapshot.
#[test]
fn a_snapshot_of_the_earlier_layout_restores_trackers_and_drift() {
    let mut h = H::new(RulesConfig::default());
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    let drift = H::visible(h.feed(call("svc-a", &["svc-b"], "svc-z", true, "t")));
    assert_eq!(drift.len(), 1);
    let mut json: serde_json::Map<String, Value> =
        serde_json::from_str(&serde_json::to_string(&h.engine.snapshot()).unwrap()).unwrap();
    // The earlier layout had exactly these keys.
    json.remove("traffic");
    let keys: BTreeSet<&str> = json.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "version",
            "rules_fingerprint",
            "seq",
            "alerts",
            "instances",
            "latency",
            "rates",
            "declared",
            "observed",
            "failures_into",
            "drift_seen",
            "failure_mix",
        ])
    );
    let old: EngineSnapshot = serde_json::from_value(Value::Object(json)).unwrap();
    let clock = ManualClock::new(h.now());
    let mut engine = Engine::restore(RulesConfig::default(), Arc::new(clock.clone()), old).unwrap();
    // The drift edge is not raised again, and svc-b is still tracked.
    assert!(engine
        .process(&call("svc-a", &["svc-b"], "svc-z", true, "t"))
        .is_empty());
    clock.advance(Duration::from_secs(31));
    let rules: Vec<String> = engine
        .tick(clock.now_unix_nanos())
        .into_iter()
        .map(|t| t.alert.rule)
        .collect();
    assert_eq!(rules, ["heartbeat_delayed", "heartbeat_down"]);
}

/// Regression: an ERROR log of about 500 KB became an alert event over Kafka's 1 MB limit
/// (its body in the summary and in two labels), which the Kafka output retried forever.
#[test]
fn regression_oversized_error_log_makes_a_bounded_alert() {
    use prost::Message as _;

    let mut h = H::new(RulesConfig::default());
    let body = "é".repeat(250_000); // 500 KB, multi-byte: cut at a character boundary
    let code = "E".repeat(10_000);
    let record = log(
        "svc-a",
        "ERROR",
        &body,
        &[
            (names::ERROR_CODE, code.clone().into()),
            (names::ERROR_MESSAGE, body.clone().into()),
        ],
    );
    let fired = h.feed(record.clone());
    assert_eq!(fired.len(), 1);
    let a = &fired[0].alert;
    let limit = lifecycle::MAX_ALERT_TEXT_BYTES;
    assert!(a.summary.len() <= limit, "{}", a.summary.len());
    assert!(
        a.summary.starts_with("svc-a ERROR EEE"),
        "{}",
        &a.summary[..40]
    );
    assert!(
        a.summary.ends_with("more bytes cut]"),
        "{}",
        &a.summary[limit - 60..]
    );
    assert!(a.key.len() <= limit);
    for (k, v) in &a.labels {
        assert!(v.len() <= limit, "label {k}: {} bytes", v.len());
    }
    assert!(a.labels["message"].starts_with("éé"));
    assert!(a.to_event().encoded_len() < 64 * 1024);
    // The same record again folds into the same alert, which stays bounded.
    h.feed(record);
    let updated = h.advance(1);
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].alert.occurrences, 2);
    assert!(updated[0].alert.to_event().encoded_len() < 64 * 1024);
}

/// Regression: operation names are unbounded (a scanner's 404 paths become span names), and
/// one service's flood of them used up every latency window, so another service's slow
/// operation was never judged.
#[test]
fn regression_one_services_operation_flood_does_not_crowd_out_others() {
    let mut rules = only_rules(&[rule::SPAN_LATENCY]);
    rules.span_latency.max_keys = 100;
    rules.span_latency.max_operations_per_service = 20;
    let mut h = H::new(rules);
    for i in 0..1_000u64 {
        let name = format!("GET /scan/{i}");
        h.feed(Record::Span(span(
            "svc-a",
            &[],
            &name,
            SpanKind::Server,
            "0af7651916cd43dd8448eb211c80319c",
            i + 1,
            None,
            5,
            false,
        )));
    }
    assert_eq!(h.engine.stats().keys_dropped, 980);
    for i in 0..10u64 {
        h.feed(Record::Span(span(
            "svc-b",
            &[],
            "GET /checkout",
            SpanKind::Server,
            "0af7651916cd43dd8448eb211c80319c",
            5_000 + i,
            None,
            2_000,
            false,
        )));
    }
    assert_eq!(
        H::visible(h.advance(1)),
        vec![(Fired, "span_latency".into(), "svc-b|GET /checkout".into())]
    );
}

// ---------------------------------------------------------------- instances that crash

fn beat_of(svc: &str, instance: &str, kind: HeartbeatKind, at: u64) -> Record {
    let Record::Heartbeat(mut hb) = heartbeat(svc, kind, ServiceStatus::Up, at, None) else {
        unreachable!()
    };
    hb.service.instance_id = Some(instance.into());
    Record::Heartbeat(hb)
}

/// Regression: a crashed instance never sends DOWN, so its delayed/down alerts stayed firing
/// for a day after a new instance of the service had taken over, and root cause treated the
/// whole service as down.
#[test]
fn regression_a_crashed_instance_superseded_by_a_new_one_resolves_as_replaced() {
    let mut h = H::new(only_rules(&[
        rule::HEARTBEAT_DOWN,
        rule::INCIDENT,
        rule::FAILED_CALL,
    ]));
    h.feed(beat_of("svc-b", "b-1", HeartbeatKind::Registration, T0));
    // b-1 crashes: delayed, then down.
    let fired = H::visible(h.advance(31));
    assert_eq!(
        fired,
        vec![
            (Fired, "heartbeat_delayed".into(), "b-1".into()),
            (Fired, "heartbeat_down".into(), "b-1".into()),
        ]
    );
    // Its successor registers: b-1 is replaced, its alerts resolve with that reason.
    assert!(h
        .feed(beat_of(
            "svc-b",
            "b-2",
            HeartbeatKind::Registration,
            h.now()
        ))
        .is_empty());
    let resolved = h.advance(1);
    assert_eq!(
        H::visible(resolved.clone()),
        vec![
            (Resolved, "heartbeat_down".into(), "b-1".into()),
            (Resolved, "heartbeat_delayed".into(), "b-1".into()),
        ]
    );
    for t in &resolved {
        assert_eq!(t.alert.labels["reason"], "replaced");
        assert_eq!(t.alert.labels["status"], "REPLACED");
        assert_eq!(
            t.alert.summary,
            "svc-b (b-1) was replaced: a newer instance of svc-b registered since its last heartbeat"
        );
    }
    // The service is not down: A's failed call into it is not an incident naming it.
    h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Heartbeat, h.now()));
    let seen = [
        h.feed(call("svc-a", &["svc-b"], "svc-b", false, "t1")),
        h.advance(1),
    ]
    .concat();
    assert!(seen.iter().any(|t| t.alert.rule == rule::FAILED_CALL));
    assert!(
        seen.iter().all(|t| t.alert.rule != rule::INCIDENT),
        "{seen:#?}"
    );
    // b-1 is no longer tracked: its silence never fires again.
    for _ in 0..10 {
        h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Heartbeat, h.now()));
        assert!(H::visible(h.advance(10)).is_empty());
    }
}

/// An instance replaced before its silence was reported is simply forgotten.
#[test]
fn an_instance_replaced_before_it_was_reported_raises_nothing() {
    let mut h = H::new(only_rules(&[rule::HEARTBEAT_DOWN]));
    h.feed(beat_of("svc-b", "b-1", HeartbeatKind::Registration, T0));
    h.advance(5);
    h.feed(beat_of(
        "svc-b",
        "b-2",
        HeartbeatKind::Registration,
        h.now(),
    ));
    for _ in 0..6 {
        h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Heartbeat, h.now()));
        assert!(H::visible(h.advance(10)).is_empty());
    }
}

/// Regression: one instance down made root cause treat its whole service as down, though
/// another instance of it was live.
#[test]
fn regression_a_service_with_a_live_instance_is_not_down() {
    let mut h = H::new(only_rules(&[
        rule::HEARTBEAT_DOWN,
        rule::INCIDENT,
        rule::FAILED_CALL,
    ]));
    // Both instances run; b-1 then crashes while b-2 keeps heartbeating (b-2 started before
    // b-1's last heartbeat: not a replacement).
    h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Registration, T0));
    h.feed(beat_of("svc-b", "b-1", HeartbeatKind::Registration, T0));
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(h.advance(10));
        h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Heartbeat, h.now()));
    }
    assert_eq!(
        H::visible(seen),
        vec![
            (Fired, "heartbeat_delayed".into(), "b-1".into()),
            (Fired, "heartbeat_down".into(), "b-1".into()),
        ]
    );
    // A's failed call into svc-b: svc-b is not down, so no incident names it.
    let mut seen = h.feed(call("svc-a", &["svc-b"], "svc-b", false, "t1"));
    h.feed(beat_of("svc-b", "b-2", HeartbeatKind::Heartbeat, h.now()));
    seen.extend(h.advance(1));
    assert!(seen.iter().any(|t| t.alert.rule == rule::FAILED_CALL));
    assert!(
        seen.iter().all(|t| t.alert.rule != rule::INCIDENT),
        "{seen:#?}"
    );
    // Then b-2 goes silent too: now none is live, and the service is down: A's failed
    // call is grouped into an incident naming it.
    let later = h.advance(31);
    let incident: Vec<_> = later
        .iter()
        .filter(|t| t.alert.rule == rule::INCIDENT && t.kind == Fired)
        .collect();
    assert_eq!(incident.len(), 1, "{later:#?}");
    assert_eq!(incident[0].alert.key, "svc-b");
    assert_eq!(incident[0].alert.labels["cause"], "heartbeat_down");
}

/// Regression: heartbeat alerts shared `max_active_alerts` with every other rule, so a flood
/// of error alerts kept "down" from firing.
#[test]
fn regression_heartbeat_alerts_have_their_own_cap() {
    let mut rules = only_rules(&[rule::HEARTBEAT_DOWN, rule::ERROR_LOG]);
    rules.defaults.max_active_alerts = 3;
    let mut h = H::new(rules);
    h.feed(beat_of("svc-b", "b-1", HeartbeatKind::Registration, T0));
    for i in 0..10 {
        h.feed(log(
            "svc-a",
            "ERROR",
            "x",
            &[(names::ERROR_CODE, format!("E{i}").into())],
        ));
    }
    assert_eq!(h.engine.stats().alerts_dropped, 7);
    assert_eq!(
        H::visible(h.advance(31)),
        vec![
            (Fired, "heartbeat_delayed".into(), "b-1".into()),
            (Fired, "heartbeat_down".into(), "b-1".into()),
        ]
    );
    assert_eq!(h.engine.stats().alerts_dropped, 7);
}

#[test]
fn forget_after_secs_stops_tracking_a_silent_instance_and_resolves_its_alerts() {
    let mut rules = only_rules(&[rule::HEARTBEAT_DOWN]);
    rules.heartbeat.forget_after_secs = 120;
    let mut h = H::new(rules);
    h.feed(heartbeat(
        "svc-b",
        HeartbeatKind::Heartbeat,
        ServiceStatus::Up,
        T0,
        None,
    ));
    assert_eq!(H::visible(h.advance(31)).len(), 2);
    // 91 s of silence: still tracked, still firing, nothing new.
    assert!(h.advance(60).is_empty());
    // 121 s: forgotten; both alerts resolve, saying why.
    let forgotten = h.advance(30);
    assert_eq!(
        H::visible(forgotten.clone()),
        vec![
            (Resolved, "heartbeat_down".into(), "svc-b-1".into()),
            (Resolved, "heartbeat_delayed".into(), "svc-b-1".into()),
        ]
    );
    for t in &forgotten {
        assert_eq!(t.alert.labels["reason"], "forgotten");
        assert_eq!(
            t.alert.summary,
            "svc-b (svc-b-1) is no longer tracked after 120 s of silence"
        );
    }
    assert_eq!(
        h.engine.snapshot().rule_states["instances"],
        serde_json::json!({})
    );
    // Silence goes on: nothing more.
    assert!(h.advance(300).is_empty());
    // It comes back: tracked afresh, no "is back" for alerts already resolved.
    assert!(h
        .feed(heartbeat(
            "svc-b",
            HeartbeatKind::Heartbeat,
            ServiceStatus::Up,
            h.now(),
            None,
        ))
        .is_empty());
    assert_eq!(H::visible(h.advance(31)).len(), 2);
}
