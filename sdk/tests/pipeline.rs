//! The whole SDK pipeline against an in-test OTLP/gRPC receiver: what arrives, with which
//! ids, names and fields.

mod support;

use std::time::Duration;

use distributed_logger::{names, Telemetry};
use dlog_core::model::{HeartbeatKind, LogEntry, LogItem, ServiceStatus};
use opentelemetry::trace::TraceContextExt;
use serde_json::json;
use support::{wait_for, Receiver};
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn entries(receiver: &Receiver) -> Vec<LogEntry> {
    receiver
        .logs()
        .into_iter()
        .filter_map(|item| match item {
            LogItem::Log(entry) => Some(entry),
            LogItem::Heartbeat(_) => None,
        })
        .collect()
}

#[test]
fn logs_carry_the_active_span_and_exact_fields() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let telemetry = Telemetry::builder("svc-a")
        .with_version("1.2.3")
        .with_instance_id("svc-a-1")
        .with_dependencies(["svc-b", "svc-c"])
        .with_endpoint(receiver.endpoint())
        .with_heartbeat_interval(Duration::from_millis(50))
        .with_export_interval(Duration::from_millis(50))
        .with_stderr(false)
        .build()
        .unwrap();
    let logger = telemetry.logger();

    let (trace_id, outer_id, inner_id) =
        tracing::dispatcher::with_default(telemetry.dispatch(), || {
            let outer = tracing::info_span!("checkout", order = 42);
            let _outer = outer.enter();
            tracing::info!(order = 42, "checking out");
            let inner = tracing::info_span!("pay");
            let inner_id = {
                let _inner = inner.enter();
                logger.warn_with("payment slow", 850, 500, [("route", "/pay")]);
                logger.error(
                    "payment failed",
                    "PAY-502",
                    "gateway timeout",
                    Some("payments"),
                );
                logger.log_service_call("payments", false, Duration::from_millis(37));
                inner.context().span().span_context().span_id()
            };
            logger.info_with("paid", [("attempts", 2_i64)]);
            logger
                .event(tracing::Level::INFO)
                .message("built")
                .field("order.id", 42_u64)
                .field("express", true)
                .emit();
            // The exporter's own crates never reach the OTLP layers.
            tracing::info!(target: "h2::proto", "must not be exported");
            let cx = outer.context();
            let span = cx.span();
            (
                span.span_context().trace_id(),
                span.span_context().span_id(),
                inner_id,
            )
        });
    let trace_hex = trace_id.to_string();

    // Heartbeats arrive while the service runs.
    wait_for("two heartbeats", Duration::from_secs(20), || {
        receiver
            .logs()
            .iter()
            .filter(|i| matches!(i, LogItem::Heartbeat(h) if h.kind == HeartbeatKind::Heartbeat))
            .count()
            >= 2
    });
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");

    let spans = receiver.spans();
    let checkout = spans
        .iter()
        .find(|s| s.name == "checkout")
        .expect("checkout span");
    let pay = spans.iter().find(|s| s.name == "pay").expect("pay span");
    assert_eq!(checkout.trace_id, trace_hex);
    assert_eq!(checkout.span_id, outer_id.to_string());
    assert_eq!(
        pay.parent_span_id.as_deref(),
        Some(checkout.span_id.as_str())
    );
    assert_eq!(pay.span_id, inner_id.to_string());
    assert_eq!(checkout.service.name, "svc-a");
    assert_eq!(checkout.service.version.as_deref(), Some("1.2.3"));
    assert_eq!(checkout.service.instance_id.as_deref(), Some("svc-a-1"));
    assert_eq!(checkout.service.dependencies, vec!["svc-b", "svc-c"]);

    let logs = entries(&receiver);
    let by_body = |body: &str| {
        logs.iter()
            .find(|l| l.body == body)
            .unwrap_or_else(|| panic!("no log `{body}` in {logs:#?}"))
    };
    let checking_out = by_body("checking out");
    assert_eq!(checking_out.trace_id.as_deref(), Some(trace_hex.as_str()));
    assert_eq!(
        checking_out.span_id.as_deref(),
        Some(checkout.span_id.as_str())
    );
    assert_eq!(checking_out.level, "INFO");
    assert_eq!(checking_out.attributes.get("order"), Some(&json!(42)));
    assert_eq!(
        checking_out.event_name, None,
        "call-site names are not event names"
    );

    let slow = by_body("payment slow");
    assert_eq!(slow.level, "WARN");
    assert_eq!(slow.span_id.as_deref(), Some(pay.span_id.as_str()));
    assert_eq!(
        slow.attributes.get(names::RESPONSE_TIME_MS),
        Some(&json!(850))
    );
    assert_eq!(
        slow.attributes.get(names::THRESHOLD_LIMIT_MS),
        Some(&json!(500))
    );
    assert_eq!(slow.attributes.get("route"), Some(&json!("/pay")));

    let failed = by_body("payment failed");
    assert_eq!(failed.level, "ERROR");
    assert_eq!(failed.trace_id.as_deref(), Some(trace_hex.as_str()));
    assert_eq!(
        failed.attributes.get(names::ERROR_CODE),
        Some(&json!("PAY-502"))
    );
    assert_eq!(
        failed.attributes.get(names::ERROR_MESSAGE),
        Some(&json!("gateway timeout"))
    );
    assert_eq!(
        failed.attributes.get(names::DEPENDENT_SERVICE),
        Some(&json!("payments"))
    );

    let call = logs
        .iter()
        .find(|l| l.is_service_call())
        .expect("service.call event");
    assert_eq!(call.event_name.as_deref(), Some(names::SERVICE_CALL_EVENT));
    assert_eq!(call.span_id.as_deref(), Some(pay.span_id.as_str()));
    assert_eq!(call.attr_str(names::CALL_SOURCE), Some("svc-a"));
    assert_eq!(call.attr_str(names::CALL_TARGET), Some("payments"));
    assert_eq!(call.attr_bool(names::CALL_SUCCESS), Some(false));
    assert_eq!(call.attr_str(names::CALL_STATUS), Some("FAILURE"));
    assert_eq!(call.attr_f64(names::CALL_DURATION_MS), Some(37.0));

    assert_eq!(by_body("paid").attributes.get("attempts"), Some(&json!(2)));
    let built = by_body("built");
    assert_eq!(built.attributes.get("order.id"), Some(&json!(42)));
    assert_eq!(built.attributes.get("express"), Some(&json!(true)));
    assert!(logs.iter().all(|l| l.body != "must not be exported"));

    // Registration UP first, DOWN last, heartbeats in between, none with a trace.
    let heartbeats: Vec<_> = receiver
        .logs()
        .into_iter()
        .filter_map(|i| match i {
            LogItem::Heartbeat(h) => Some(h),
            LogItem::Log(_) => None,
        })
        .collect();
    let first = heartbeats.iter().min_by_key(|h| h.time_unix_nano).unwrap();
    let last = heartbeats.iter().max_by_key(|h| h.time_unix_nano).unwrap();
    assert_eq!(
        (first.kind, first.status),
        (HeartbeatKind::Registration, ServiceStatus::Up)
    );
    assert_eq!(
        (last.kind, last.status),
        (HeartbeatKind::Registration, ServiceStatus::Down)
    );
    assert!(heartbeats.iter().all(|h| h.interval_ms == Some(50)));
    assert_eq!(first.service.dependencies, vec!["svc-b", "svc-c"]);
    for request in receiver.log_requests() {
        for record in request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            if dlog_core::model::is_heartbeat_record(record) {
                assert!(
                    dlog_core::encoding::is_empty_id(&record.trace_id),
                    "heartbeat with a trace"
                );
            }
        }
    }
}

#[test]
fn shutdown_reports_success_and_later_records_count_as_dropped() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let telemetry = Telemetry::builder("svc-late")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .build()
        .unwrap();
    let logger = telemetry.logger();
    logger.info("before");
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");
    // UP, "before", DOWN.
    assert_eq!(report.stats.exported_logs, 3, "{report}");
    logger.info("after");
    assert_eq!(telemetry.stats().dropped_logs, 1);
    assert_eq!(telemetry.shutdown(), report, "shutdown is idempotent");
}

#[test]
fn otlp_layer_composes_into_a_subscriber_of_ones_own() {
    use tracing_subscriber::layer::SubscriberExt;

    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let telemetry = Telemetry::builder("svc-composed")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(telemetry.otlp_layer());
    let span_id = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("composed");
        let _entered = span.enter();
        tracing::info!("inside");
        tracing::debug!("filtered out by my own filter");
        tracing::info!(target: "hyper::client", "excluded crate");
        span.context().span().span_context().span_id().to_string()
    });
    let report = telemetry.shutdown();
    assert!(report.is_complete(), "{report}");
    assert!(receiver
        .spans()
        .iter()
        .any(|s| s.name == "composed" && s.span_id == span_id));
    let logs = entries(&receiver);
    let inside = logs.iter().find(|l| l.body == "inside").expect("the event");
    assert_eq!(inside.span_id.as_deref(), Some(span_id.as_str()));
    assert!(logs
        .iter()
        .all(|l| l.body != "filtered out by my own filter" && l.body != "excluded crate"));
}

fn down_delivered(receiver: &Receiver, service: &str) -> bool {
    receiver.logs().iter().any(|i| {
        matches!(i, LogItem::Heartbeat(h) if h.service.name == service
            && h.kind == HeartbeatKind::Registration
            && h.status == ServiceStatus::Down)
    })
}

#[test]
fn logger_shutdown_is_the_same_idempotent_shutdown_as_the_guards() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let telemetry = Telemetry::builder("svc-logger-shutdown")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .build()
        .unwrap();
    let logger = telemetry.logger();
    let clone = logger.clone();
    logger.info("before");

    let report = logger.shutdown();
    assert!(report.is_complete(), "{report}");
    // UP, "before", DOWN: flushed before shutdown returned.
    assert_eq!(report.stats.exported_logs, 3, "{report}");
    assert!(down_delivered(&receiver, "svc-logger-shutdown"));
    assert!(entries(&receiver).iter().any(|l| l.body == "before"));

    // Every handle returns the first report, and records after it are dropped and counted.
    assert_eq!(logger.shutdown(), report);
    assert_eq!(clone.shutdown(), report);
    assert_eq!(telemetry.shutdown(), report);
    clone.info("after");
    assert_eq!(telemetry.stats().dropped_logs, 1);
    assert_eq!(logger.shutdown(), report, "the report does not change");
    drop(telemetry);
    assert_eq!(logger.shutdown(), report);
}

#[test]
fn dropping_the_telemetry_shuts_down_even_while_a_logger_lives() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let telemetry = Telemetry::builder("svc-outlived")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .build()
        .unwrap();
    let logger = telemetry.logger();
    logger.info("while running");
    // The logger holds the shared shutdown state; that must not keep the pipeline running.
    drop(telemetry);
    assert!(
        down_delivered(&receiver, "svc-outlived"),
        "the drop shut down and flushed before returning"
    );
    let report = logger.shutdown();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.stats.exported_logs, 3, "{report}");
    logger.info("after the drop");
    assert_eq!(logger.shutdown(), report);
    assert!(entries(&receiver)
        .iter()
        .all(|l| l.body != "after the drop"));
}
