//! Silences and acknowledgements, read from the store and honoured by the notifying outputs
//! (terminal, Kafka, webhook).
//!
//! [`Silences`] keeps the last silences and acks read through the `AlertStore` role and rereads
//! them every `silence_refresh_ms` in its own task, so evaluation never waits for the store;
//! when the store cannot be read the last known ones stay in force (logged and counted in
//! `dlog_alerter_silence_refresh_errors`). [`Muted`] wraps an output: an event of an alert
//! that an active silence matches is held back (it still goes to the store, where the viewer
//! shows it silenced) and sent when the silence ends if the alert still fires; an `updated`
//! event of an acknowledged alert is not sent. Either counts in
//! `dlog_alerter_output_silenced`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dlog_storage::{AlertAck, AlertStore, Silence, StoreError};

use super::{AlertSink, Delivery, SinkError};
use crate::alert::{Transition, TransitionKind};
use crate::clock::Clock;
use crate::metrics::Metrics;

#[derive(Default)]
struct Known {
    silences: Vec<Silence>,
    acks: HashMap<String, AlertAck>,
}

/// The silences and acknowledgements in force, as last read from the store.
pub struct Silences {
    store: Arc<dyn AlertStore>,
    clock: Arc<dyn Clock>,
    known: RwLock<Known>,
    metrics: Option<Arc<Metrics>>,
}

/// Why an event is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Muting {
    /// An active silence matches the alert.
    Silenced,
    /// An update of an acknowledged alert.
    Acknowledged,
}

impl Silences {
    /// Reads silences from `store`, judging expiry by `clock`. Nothing is known until the
    /// first [`Silences::refresh`].
    pub fn new(store: Arc<dyn AlertStore>, clock: Arc<dyn Clock>) -> Arc<Silences> {
        Arc::new(Silences {
            store,
            clock,
            known: RwLock::new(Known::default()),
            metrics: None,
        })
    }

    pub(crate) fn with_metrics(
        store: Arc<dyn AlertStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Arc<Silences> {
        Arc::new(Silences {
            store,
            clock,
            known: RwLock::new(Known::default()),
            metrics: Some(metrics),
        })
    }

    /// Rereads silences and acks. A store without them (`Refused`) means none; any other error
    /// keeps what was known.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let silences = match self.store.list_silences().await {
            Err(StoreError::Refused(_)) => Vec::new(),
            r => r?,
        };
        let acks = match self.store.list_acks().await {
            Err(StoreError::Refused(_)) => Vec::new(),
            r => r?,
        };
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.silences = silences;
        known.acks = acks.into_iter().map(|a| (a.alert_id.clone(), a)).collect();
        Ok(())
    }

    async fn refresh_logged(&self) {
        if let Err(e) = self.refresh().await {
            if let Some(m) = &self.metrics {
                m.silence_refresh_errors.inc();
            }
            tracing::warn!(error = %e, "cannot read silences from the store; the last ones read stay in force");
        }
    }

    /// Reads now (waiting at most `first_wait`), then every `every` in a task that ends when
    /// the last handle is dropped.
    pub async fn start(self: &Arc<Self>, every: Duration, first_wait: Duration) {
        if tokio::time::timeout(first_wait, self.refresh_logged())
            .await
            .is_err()
        {
            tracing::warn!("silences not read at start; they apply once the store answers");
        }
        let weak: Weak<Silences> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                s.refresh_logged().await;
            }
        });
    }

    /// Whether the event is held back from notifying outputs, and why.
    pub fn muting(&self, t: &Transition) -> Option<Muting> {
        let now = self.clock.now_unix_nanos();
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        if known
            .silences
            .iter()
            .any(|s| s.active_at(now) && s.matches(&t.alert.service, &t.alert.rule))
        {
            return Some(Muting::Silenced);
        }
        if t.kind == TransitionKind::Updated
            && known
                .acks
                .get(&t.alert.id)
                .is_some_and(|a| a.covers(t.alert.first_seen_unix_nano))
        {
            return Some(Muting::Acknowledged);
        }
        None
    }
}

/// Most alerts a [`Muted`] output holds back at once; beyond, events of new alerts are
/// dropped (and counted) rather than held.
const MAX_HELD: usize = 10_000;

/// An output that does not get muted events (see the module's documentation).
///
/// A silence delays, it does not lose: the latest event of an alert that started firing under
/// a silence is held (as `fired`, with the alert as it is now) and sent once no silence
/// matches it any more, if the alert is still firing then; an alert that fired and resolved
/// within the silence is never sent. A `resolved` event of an alert that was notified before
/// the silence began always goes through, so that the receiver's incident closes. `updated`
/// events of such an alert are dropped while the silence lasts. Held events are part of the
/// stage's saved state ([`Muted::held`], [`Muted::hold`]): an alerter restarted during the
/// silence, or a standby taking over, still sends them when it ends.
pub struct Muted {
    inner: Arc<dyn AlertSink>,
    silences: Arc<Silences>,
    held: std::sync::Mutex<HashMap<String, Transition>>,
}

impl Muted {
    /// `inner`, muted by `silences`.
    pub fn new(inner: Arc<dyn AlertSink>, silences: Arc<Silences>) -> Muted {
        Muted {
            inner,
            silences,
            held: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The output's name.
    pub fn output(&self) -> &'static str {
        self.inner.name()
    }

    /// The events held back now, by alert id, to save with the state.
    pub fn held(&self) -> Vec<Transition> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut events: Vec<Transition> = held.values().cloned().collect();
        events.sort_by(|a, b| a.alert.id.cmp(&b.alert.id));
        events
    }

    /// Holds `events` back again (from a saved state), as many as the bound allows.
    pub fn hold(&self, events: Vec<Transition>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for t in events {
            if held.len() >= MAX_HELD && !held.contains_key(&t.alert.id) {
                break;
            }
            held.insert(t.alert.id.clone(), t);
        }
    }

    /// Sends held events whose silence ended every `every`, until the last handle is dropped.
    pub fn start_release(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(muted) = weak.upgrade() else { return };
                muted.release().await;
            }
        });
    }

    /// Sends the held events no silence matches any more; they are held again when the
    /// output refuses them.
    pub async fn release(&self) {
        let due: Vec<Transition> = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<String> = held
                .iter()
                .filter(|(_, t)| self.silences.muting(t).is_none())
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| held.remove(id)).collect()
        };
        if due.is_empty() {
            return;
        }
        if let Err(e) = self.inner.send(&due).await {
            tracing::warn!(output = self.inner.name(), error = %e, "cannot send alerts held by a silence that ended; trying again");
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            for t in due {
                held.entry(t.alert.id.clone()).or_insert(t);
            }
        }
    }

    /// Decides, per event, whether it goes to the output now; holds what a silence delays.
    fn sort(&self, transitions: &[Transition]) -> Vec<Option<Transition>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        transitions
            .iter()
            .map(|t| {
                let id = &t.alert.id;
                match (self.silences.muting(t), t.kind) {
                    // Fired and resolved within the silence: nobody was told, nobody is.
                    (_, TransitionKind::Resolved) if held.remove(id).is_some() => None,
                    // The receiver knew of the alert: its resolution always goes through.
                    (Some(Muting::Silenced), TransitionKind::Resolved) => Some(t.clone()),
                    (Some(Muting::Silenced), kind) => {
                        let never_told = kind == TransitionKind::Fired || held.contains_key(id);
                        if never_told && (held.contains_key(id) || held.len() < MAX_HELD) {
                            held.insert(
                                id.clone(),
                                Transition {
                                    kind: TransitionKind::Fired,
                                    alert: t.alert.clone(),
                                },
                            );
                        }
                        None
                    }
                    (Some(Muting::Acknowledged), _) => None,
                    (None, kind) => {
                        // A silence that ended before the release ran: the receiver's first
                        // event of the alert is a `fired` one.
                        if held.remove(id).is_some() && kind == TransitionKind::Updated {
                            Some(Transition {
                                kind: TransitionKind::Fired,
                                alert: t.alert.clone(),
                            })
                        } else {
                            Some(t.clone())
                        }
                    }
                }
            })
            .collect()
    }

    fn count(&self, n: usize) {
        if n > 0 {
            if let Some(m) = &self.silences.metrics {
                m.output(&m.output_silenced, self.inner.name(), n as u64);
            }
        }
    }
}

#[async_trait]
impl AlertSink for Muted {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        let kept: Vec<Transition> = self.sort(transitions).into_iter().flatten().collect();
        self.count(transitions.len() - kept.len());
        if kept.is_empty() {
            return Ok(());
        }
        self.inner.send(&kept).await
    }

    async fn send_each(&self, transitions: &[Transition]) -> Vec<Delivery> {
        let sorted = self.sort(transitions);
        let muted: Vec<bool> = sorted.iter().map(Option::is_none).collect();
        let kept: Vec<Transition> = sorted.into_iter().flatten().collect();
        self.count(transitions.len() - kept.len());
        let mut sent = if kept.is_empty() {
            Vec::new()
        } else {
            self.inner.send_each(&kept).await
        }
        .into_iter();
        muted
            .iter()
            .map(|m| {
                if *m {
                    Delivery::Delivered
                } else {
                    sent.next()
                        .unwrap_or_else(|| Delivery::Retry("output gave no answer".into()))
                }
            })
            .collect()
    }
}
