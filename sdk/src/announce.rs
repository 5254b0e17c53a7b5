//! Registration (UP at start, DOWN at shutdown) and periodic heartbeats.
//!
//! Both are OTLP log records marked as events (`event_name` `service.registration` and
//! `service.heartbeat`) with `service.status` and `heartbeat.interval_ms` attributes, so any
//! OTLP pipeline carries them and the bridge routes them to `heartbeat_logs`. They are emitted
//! from a thread of their own, outside any span, so they never pick up an application trace.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use dlog_core::names;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::Key;
use opentelemetry_sdk::logs::SdkLogger;

use crate::error::BuildError;

/// The heartbeat thread. Stopping it sends the DOWN registration.
pub(crate) struct Announcer {
    stop: SyncSender<()>,
    handle: JoinHandle<()>,
}

struct Announcement {
    logger: SdkLogger,
    service_name: String,
    dependencies: Vec<String>,
    interval: Duration,
}

impl Announcement {
    fn emit(&self, event_name: &'static str, status: &'static str) {
        let mut record = self.logger.create_log_record();
        record.set_timestamp(SystemTime::now());
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_event_name(event_name);
        let body = if event_name == names::HEARTBEAT_EVENT {
            format!("{} heartbeat", self.service_name)
        } else {
            format!("{} {status}", self.service_name)
        };
        record.set_body(AnyValue::from(body));
        record.add_attribute(Key::from_static_str(names::SERVICE_STATUS), status);
        let interval_ms = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX);
        record.add_attribute(
            Key::from_static_str(names::HEARTBEAT_INTERVAL_MS),
            interval_ms,
        );
        if event_name == names::REGISTRATION_EVENT {
            // Also on the resource; repeated here so the registration alone says it all.
            let list = self
                .dependencies
                .iter()
                .map(|d| AnyValue::from(d.clone()))
                .collect::<Vec<_>>();
            record.add_attribute(
                Key::from_static_str(names::SERVICE_DEPENDENCIES),
                AnyValue::ListAny(Box::new(list)),
            );
        }
        self.logger.emit(record);
    }
}

impl Announcer {
    /// Emits the UP registration, then starts the heartbeat thread.
    pub(crate) fn start(
        logger: SdkLogger,
        service_name: String,
        dependencies: Vec<String>,
        interval: Duration,
    ) -> Result<Self, BuildError> {
        let announcement = Announcement {
            logger,
            service_name,
            dependencies,
            interval,
        };
        let (stop, stop_rx) = mpsc::sync_channel::<()>(1);
        let (up_sent, up_rx) = mpsc::sync_channel::<()>(1);
        let handle = thread::Builder::new()
            .name("dlog-heartbeat".into())
            .spawn(move || {
                announcement.emit(names::REGISTRATION_EVENT, names::STATUS_UP);
                let _ = up_sent.send(());
                // Fixed delay: consecutive heartbeats are never closer than the interval,
                // even after the thread was held up, so "no heartbeat for k intervals" stays
                // a sound liveness test downstream.
                while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    announcement.emit(names::HEARTBEAT_EVENT, names::STATUS_UP);
                }
                announcement.emit(names::REGISTRATION_EVENT, names::STATUS_DOWN);
            })
            .map_err(BuildError::Thread)?;
        // "Registered at start" means before build() returns.
        let _ = up_rx.recv();
        Ok(Announcer { stop, handle })
    }

    /// Stops the heartbeats and emits the DOWN registration.
    pub(crate) fn stop(self) {
        let _ = self.stop.try_send(());
        let _ = self.handle.join();
    }
}
