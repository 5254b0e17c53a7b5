//! The one-call setup a service uses: `init()` installs the global subscriber, and dropping
//! the guard flushes everything, DOWN registration included.

mod support;

use distributed_logger::{InstallError, Telemetry};
use dlog_core::model::{HeartbeatKind, LogItem, ServiceStatus};
use support::Receiver;

#[test]
fn init_installs_globally_and_the_guard_flushes_on_drop() {
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap());
    let (guard, logger) = Telemetry::builder("global-svc")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .init()
        .unwrap();

    #[tracing::instrument]
    fn handle(order: u64) {
        tracing::info!(order, "handled");
    }
    handle(7);
    logger.info("done");
    assert_eq!(guard.service_name(), "global-svc");

    // A second global install is refused with a clear error (and shuts the second one down).
    let second = Telemetry::builder("other")
        .with_endpoint(receiver.endpoint())
        .with_stderr(false)
        .init();
    assert!(matches!(second, Err(InstallError::AlreadyInstalled)));

    drop(guard);
    // Everything was flushed before drop returned: no waiting needed.
    assert!(receiver.spans().iter().any(|s| s.name == "handle"));
    let items = receiver.logs();
    let body = |b: &str| {
        items
            .iter()
            .any(|i| matches!(i, LogItem::Log(l) if l.body == b))
    };
    assert!(body("handled") && body("done"), "{items:#?}");
    let down = items.iter().any(|i| {
        matches!(i, LogItem::Heartbeat(h) if h.service.name == "global-svc"
            && h.kind == HeartbeatKind::Registration
            && h.status == ServiceStatus::Down)
    });
    assert!(down, "DOWN registration delivered on drop");
}
