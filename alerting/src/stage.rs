//! The alerting stage: input → [`Engine`] → outputs, with state saved before input is
//! acknowledged.
//!
//! Per batch: records already reflected in the saved state (a replay after a crash) are
//! skipped; the rest are decoded and evaluated; the time-driven rules run every
//! `tick_interval_ms` of the stage's clock. When alerts changed, or `checkpoint_interval_ms`
//! passed, the stage checkpoints:
//! 1. the transitions go into the outbox, each with the required outputs that owe it;
//! 2. the state (engine, applied offsets, outbox) is saved atomically;
//! 3. best-effort outputs (the terminal; the webhook unless required) get the transitions
//!    through their queues;
//! 4. required outputs (Kafka, the store; the webhook when required) get the outbox, retried
//!    with backoff until they accept it. Meanwhile the input is paused but still polled, so
//!    that a Kafka consumer stays in its group (librdkafka drops a consumer that does not poll
//!    within `max.poll.interval.ms`, paused or not); records it still hands out are kept and
//!    evaluated first, in order, once the outputs are back;
//! 5. the emptied outbox is saved and the input acknowledged.
//!
//! A crash before 2 replays the records (nothing was emitted); between 2 and 5 the replayed
//! records are skipped and the outbox is delivered at start, so nothing fires twice and
//! nothing is lost (a required output may see an event again if the crash fell between its
//! acknowledgement and step 5; `(id, revision)` identifies such a repeat).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlog_core::encoding::{Signal, TopicSignals};
use dlog_core::kafka::{ensure_topics, KafkaSource};
use dlog_core::source::{Marks, RawRecord, Source, SourceError};
use dlog_core::stage::Backoff;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::alert::Transition;
use crate::clock::{Clock, SystemClock};
use crate::config::{AlerterConfig, ConfigError};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::output::silences::{Muted, Silences};
use crate::output::{kafka, store, terminal, webhook};
use crate::output::{BestEffort, Delivery, Output, SinkError};
use crate::record::{decode_into, Record};
use crate::state::{
    is_applied, mark_applied, AppliedOffsets, Pending, StageState, StateError, StateFile,
};
use dlog_core::admin::Serving;

/// The stage could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    /// The configuration or the rules are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The input failed.
    #[error("input: {0}")]
    Source(#[from] SourceError),
    /// The topics could not be created.
    #[error(transparent)]
    Topics(#[from] dlog_core::kafka::TopicError),
    /// An output could not be set up.
    #[error(transparent)]
    Output(#[from] SinkError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] dlog_storage::StoreError),
    /// The group's lease is held by another alerter, or was lost.
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    /// The admin port could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the stage on Kafka with the wall clock until `shutdown` is cancelled, once it holds
/// its group's lease ([`crate::lease`]): a second alerter in the same group refuses to start.
pub async fn run(config: AlerterConfig, shutdown: CancellationToken) -> Result<(), AlerterError> {
    config.validate()?;
    let lease = match crate::lease::acquire(&config, config.admin.to_string(), &shutdown).await {
        Ok(lease) => lease,
        // Told to stop while waiting for the lease: nothing was evaluated, nothing to save.
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let source = kafka_source(&config).await?;
    // Losing the lease stops the stage as a shutdown would, after its last checkpoint.
    let stop = shutdown.child_token();
    let lost = lease.lost();
    let watcher = {
        let (stop, lost) = (stop.clone(), lost.clone());
        tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
        })
    };
    let group = config.input.group_id.clone();
    let result = run_with(config, source, Arc::new(SystemClock), stop).await;
    watcher.abort();
    let lost = lost.is_cancelled();
    // Released only now: the successor starts from the state saved above.
    tokio::task::spawn_blocking(move || drop(lease)).await.ok();
    result?;
    if lost {
        return Err(crate::lease::LeaseError::Lost { group }.into());
    }
    Ok(())
}

/// The Kafka input the configuration names: creates missing topics when `create_topics` is
/// set, then joins `group_id` on the three input topics.
pub async fn kafka_source(config: &AlerterConfig) -> Result<KafkaSource, AlerterError> {
    config.validate()?;
    if config.input.create_topics {
        let mut topics = config.input_topics();
        if config.outputs.kafka.enabled {
            topics.push(config.outputs.kafka.topic.clone());
        }
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        ensure_topics(
            &config.input.kafka_brokers,
            &refs,
            config.input.topic_partitions,
            1,
        )
        .await?;
    }
    Ok(KafkaSource::new(
        &config.input.settings(config.input_topics()),
    )?)
}

/// Runs the stage on any [`Source`] with any [`Clock`] until `shutdown` is cancelled (the
/// all-in-one mode feeds it a `ChannelSource`; tests drive it with a `ManualClock`).
pub async fn run_with<S: Source>(
    config: AlerterConfig,
    source: S,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), AlerterError> {
    config.validate()?;
    let rules = config.load_rules()?;
    let state_file = StateFile::open(&config.state_dir)?;
    let saved = state_file.load()?;
    let (engine, applied, outbox) = match saved {
        Some(saved) => {
            tracing::info!(
                path = %state_file.path().display(),
                firing = saved.engine.firing(),
                undelivered = saved.outbox.len(),
                "resuming from saved state"
            );
            (
                Engine::restore(rules, clock.clone(), saved.engine).map_err(ConfigError::from)?,
                saved.applied,
                saved.outbox,
            )
        }
        None => (
            Engine::new(rules, clock.clone()).map_err(ConfigError::from)?,
            BTreeMap::new(),
            Vec::new(),
        ),
    };

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let (required, best_effort) = build_outputs(&config, &metrics, &clock).await?;

    let admin_state = Arc::new(Serving::new(registry));
    let (admin_addr, admin_task) = {
        let admin_state = Arc::clone(&admin_state);
        let admin_stop = shutdown.clone();
        dlog_core::admin::serve(config.admin, admin_state.clone(), async move {
            admin_stop.cancelled().await;
            admin_state.stop_serving();
        })
        .await
        .map_err(|source| AlerterError::Admin {
            addr: config.admin,
            source,
        })?
    };
    tracing::info!(
        admin = %admin_addr,
        outputs = ?required.iter().map(Output::name).chain(best_effort.iter().map(BestEffort::name)).collect::<Vec<_>>(),
        "alerter running"
    );

    let mut stage = Stage {
        source,
        clock,
        engine,
        applied,
        outbox,
        state_file,
        required,
        best_effort,
        metrics,
        stop: shutdown,
        pending_ack: Marks::default(),
        last_checkpoint: Instant::now(),
        last_tick: None,
        stash: VecDeque::new(),
        config,
    };
    let result = stage.run().await;
    let timeout = Duration::from_millis(stage.config.shutdown_timeout_ms);
    for output in std::mem::take(&mut stage.best_effort) {
        output.close(timeout).await;
    }
    // The admin server stops with the token; on an error exit, stop it here.
    admin_task.abort();
    result
}

async fn build_outputs(
    config: &AlerterConfig,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<(Vec<Output>, Vec<BestEffort>), AlerterError> {
    let o = &config.outputs;
    let mut outputs = [
        terminal::build(&o.terminal),
        kafka::build(&o.kafka, &config.input.kafka_brokers)?,
        webhook::build(&o.webhook)?,
        None,
    ];
    // With the store output, silences and acks are read from the same store and mute the
    // notifying outputs.
    if o.store.enabled {
        let db = dlog_storage::open_store(&o.store.backend).await?;
        let silences = Silences::with_metrics(db.clone(), clock.clone(), metrics.clone());
        silences
            .start(
                Duration::from_millis(o.store.silence_refresh_ms),
                Duration::from_secs(5),
            )
            .await;
        for output in outputs.iter_mut().flatten() {
            let muted = Arc::new(Muted::new(output.sink.clone(), silences.clone()));
            muted.start_release(Duration::from_millis(o.store.silence_refresh_ms));
            output.sink = muted;
        }
        outputs[3] = Some(store::build_on(&o.store, db));
    }
    let mut required = Vec::new();
    let mut best_effort = Vec::new();
    for output in outputs.into_iter().flatten() {
        if output.required {
            required.push(output);
        } else {
            let queue = output.queue;
            best_effort.push(BestEffort::spawn(output, queue, metrics.clone()));
        }
    }
    Ok((required, best_effort))
}

struct Stage<S> {
    config: AlerterConfig,
    source: S,
    clock: Arc<dyn Clock>,
    engine: Engine,
    applied: AppliedOffsets,
    outbox: Vec<Pending>,
    state_file: StateFile,
    required: Vec<Output>,
    best_effort: Vec<BestEffort>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// Highest offset taken per topic and partition since the last acknowledgement.
    pending_ack: Marks,
    last_checkpoint: Instant,
    /// Clock time of the last tick.
    last_tick: Option<u64>,
    /// Records the input handed out while it was paused for an output outage, evaluated before
    /// anything new. At most `batch_max_records`: an input that ignores pausing (an in-process
    /// channel) is then left to push back on its sender instead of filling memory.
    stash: VecDeque<RawRecord>,
}

/// Longest wait between two polls of a paused input: far below any consumer's
/// `max.poll.interval.ms`, and short enough to notice a stop quickly.
const PAUSED_POLL_STEP: Duration = Duration::from_millis(250);

impl<S: Source> Stage<S> {
    /// A fresh backoff with the configured waits (`retry_initial_ms` doubling, with jitter,
    /// up to `retry_max_ms`).
    fn backoff(&self) -> Backoff {
        Backoff::from_millis(self.config.retry_initial_ms, self.config.retry_max_ms)
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    async fn run(&mut self) -> Result<(), AlerterError> {
        // Alerts a previous run saved but could not deliver go out first.
        if !self.outbox.is_empty() && self.deliver().await? {
            self.save().await?;
        }
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let mut input_backoff = self.backoff();
        let tick_nanos = self.config.tick_interval_ms.saturating_mul(1_000_000);
        let checkpoint_every = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut records: Vec<Record> = Vec::new();
        while !self.stopping() {
            let stop = self.stop.clone();
            let batch = if !self.stash.is_empty() {
                // What the paused input handed out during an outage comes first, in order.
                let n = self.stash.len().min(self.config.batch_max_records);
                self.stash.drain(..n).collect()
            } else {
                tokio::select! {
                    batch = self.source.next_batch(self.config.batch_max_records, linger) => match batch {
                        Ok(batch) => {
                            input_backoff.reset();
                            batch
                        }
                        // An in-process input whose sender went away: the feeding side shut down.
                        Err(SourceError::Closed) => break,
                        // A broker or disk hiccup (a read error of the local log, a Kafka
                        // error): nothing was taken, so try again after a while rather than
                        // stop alerting, as the indexer does.
                        Err(e) => {
                            let wait = input_backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "reading the input failed; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(wait) => continue,
                                () = stop.cancelled() => break,
                            }
                        }
                    },
                    _ = stop.cancelled() => break,
                }
            };
            let mut transitions = Vec::new();
            for raw in &batch {
                self.pending_ack.advance(raw);
                if self.config.skip_replayed_offsets
                    && is_applied(&self.applied, &raw.topic, raw.partition, raw.offset)
                {
                    self.metrics.replayed.inc();
                    continue;
                }
                let signal = self.signal_of(raw);
                if let Err(e) = decode_into(raw, signal, &mut records) {
                    // The indexer dead-letters undecodable records; the alerter only skips them.
                    self.metrics.decode_errors.inc();
                    tracing::warn!(topic = %raw.topic, partition = raw.partition, offset = raw.offset, error = %e, "skipping undecodable record");
                }
                for record in records.drain(..) {
                    transitions.extend(self.engine.process(&record));
                }
                mark_applied(&mut self.applied, &raw.topic, raw.partition, raw.offset);
                self.metrics
                    .records
                    .get_or_create(&crate::metrics::TopicLabels {
                        topic: raw.topic.clone(),
                    })
                    .inc();
            }
            let now = self.clock.now_unix_nanos();
            if self
                .last_tick
                .is_none_or(|last| now.saturating_sub(last) >= tick_nanos)
            {
                transitions.extend(self.engine.tick(now));
                self.last_tick = Some(now);
            }
            let due =
                !self.pending_ack.is_empty() && self.last_checkpoint.elapsed() >= checkpoint_every;
            if !transitions.is_empty() || due {
                self.checkpoint(transitions).await?;
            }
        }
        // Graceful stop: save and acknowledge what was evaluated.
        if !self.pending_ack.is_empty() || !self.outbox.is_empty() {
            self.checkpoint(Vec::new()).await?;
        }
        Ok(())
    }

    /// The signal of a record; a record that names none is read as logs.
    fn signal_of(&self, raw: &RawRecord) -> Signal {
        TopicSignals {
            trace_logs: &self.config.trace_logs_topic,
            service_logs: &self.config.service_logs_topic,
            heartbeat_logs: &self.config.heartbeat_logs_topic,
        }
        .signal_of(raw)
        .unwrap_or(Signal::Logs)
    }

    /// Saves the state, retrying with backoff (`retry_initial_ms` doubling, with jitter, to
    /// `retry_max_ms`) while the disk refuses (full, EIO), with the input paused but still
    /// polled, as during an output outage. Fails only when told to stop before a save
    /// succeeded.
    async fn save(&mut self) -> Result<(), AlerterError> {
        let mut backoff = self.backoff();
        let mut paused = false;
        let result = loop {
            match self.save_once().await {
                Ok(()) => break Ok(()),
                Err(e) => {
                    self.metrics.state_save_errors.inc();
                    if self.stopping() {
                        break Err(e);
                    }
                    let wait = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?wait, "saving the state failed; input paused until it succeeds");
                    if !paused {
                        if let Err(e) = self.source.pause() {
                            self.metrics.input_errors.inc();
                            tracing::warn!(error = %e, "pausing the input failed");
                        }
                        paused = true;
                    }
                    self.wait_polling(wait).await;
                }
            }
        };
        if paused {
            if let Err(e) = self.source.resume() {
                self.metrics.input_errors.inc();
                tracing::warn!(error = %e, "resuming the input failed");
            }
            self.engine.note_input_gap(self.clock.now_unix_nanos());
        }
        result
    }

    /// Saves the state once. Serializing, writing and fsyncing run on the blocking pool: a
    /// large state or a slow disk must not stall an async worker (the admin server and
    /// best-effort outputs share them).
    async fn save_once(&self) -> Result<(), AlerterError> {
        let state = StageState {
            engine: self.engine.snapshot(),
            applied: self.applied.clone(),
            outbox: self.outbox.clone(),
        };
        let file = self.state_file.clone();
        let bytes = tokio::task::spawn_blocking(move || file.save(&state))
            .await
            .map_err(|e| StateError::Io {
                path: self.state_file.path().to_path_buf(),
                source: std::io::Error::other(format!("state save task failed: {e}")),
            })??;
        self.metrics.state_bytes.set(bytes as i64);
        self.metrics.outbox.set(self.outbox.len() as i64);
        Ok(())
    }

    async fn checkpoint(&mut self, transitions: Vec<Transition>) -> Result<(), AlerterError> {
        let started = Instant::now();
        self.metrics.count_transitions(&transitions);
        for t in &transitions {
            let owed: BTreeSet<String> = self
                .required
                .iter()
                .filter(|o| o.filter.accepts(t))
                .map(|o| o.name().to_string())
                .collect();
            if !owed.is_empty() {
                self.outbox.push(Pending {
                    transition: t.clone(),
                    outputs: owed,
                });
            }
        }
        self.save().await?;
        for output in &self.best_effort {
            output.offer(&transitions);
        }
        let delivered = if self.outbox.is_empty() {
            true
        } else {
            self.deliver().await?
        };
        if !delivered {
            // Stopping with alerts undelivered: they are in the saved outbox, and the input
            // stays unacknowledged.
            return Ok(());
        }
        if !transitions.is_empty() {
            self.save().await?;
        }
        self.ack().await;
        self.last_checkpoint = Instant::now();
        self.metrics
            .engine(self.engine.stats(), self.engine.firing_count());
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Delivers the outbox to every required output that still owes it, retrying with
    /// backoff while the input is paused. A transition an output refuses for good is dropped
    /// for that output (logged and counted); only what failed is retried, so one bad alert
    /// neither blocks the output nor makes it see the others again. Returns false when the
    /// stage was told to stop before everything was delivered.
    async fn deliver(&mut self) -> Result<bool, AlerterError> {
        let mut paused = false;
        let mut complete = true;
        for output in self.required.clone() {
            let name = output.name();
            let mut backoff = self.backoff();
            loop {
                let owed: Vec<usize> = (0..self.outbox.len())
                    .filter(|i| self.outbox[*i].outputs.contains(name))
                    .collect();
                if owed.is_empty() {
                    break;
                }
                let batch: Vec<Transition> = owed
                    .iter()
                    .map(|i| self.outbox[*i].transition.clone())
                    .collect();
                let results = output.sink.send_each(&batch).await;
                let mut sent = 0u64;
                let mut retry = None;
                for (n, i) in owed.iter().enumerate() {
                    let result = results
                        .get(n)
                        .cloned()
                        .unwrap_or_else(|| Delivery::Retry("no result from the output".into()));
                    match result {
                        Delivery::Delivered => {
                            sent += 1;
                            self.outbox[*i].outputs.remove(name);
                        }
                        Delivery::Rejected(e) => {
                            let t = &self.outbox[*i].transition;
                            tracing::error!(output = name, alert = %t.alert.id, revision = t.alert.revision, error = %e, "required output refused an alert for good; dropped for it");
                            self.metrics.output(&self.metrics.output_rejected, name, 1);
                            self.outbox[*i].outputs.remove(name);
                        }
                        Delivery::Retry(e) => {
                            retry.get_or_insert(e);
                        }
                    }
                }
                self.metrics.output(&self.metrics.output_sent, name, sent);
                let Some(e) = retry else {
                    break;
                };
                self.metrics.output(&self.metrics.output_errors, name, 1);
                let wait = backoff.next_delay();
                tracing::warn!(output = name, error = %e, retry_in = ?wait, "required output refused alerts; input paused");
                if !paused {
                    if let Err(e) = self.source.pause() {
                        // Not fatal: an unpaused input is only polled into the bounded stash.
                        self.metrics.input_errors.inc();
                        tracing::warn!(error = %e, "pausing the input failed");
                    }
                    paused = true;
                }
                self.wait_polling(wait).await;
                if self.stopping() {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
        }
        self.outbox.retain(|p| !p.outputs.is_empty());
        if paused {
            if let Err(e) = self.source.resume() {
                self.metrics.input_errors.inc();
                tracing::warn!(error = %e, "resuming the input failed");
            }
            // The input was stalled: heartbeats sent meanwhile are still in the backlog, so
            // the outage must not count as every service's silence.
            self.engine.note_input_gap(self.clock.now_unix_nanos());
        }
        Ok(complete)
    }

    /// Waits `wait` (or until stopped) while an output is down and the input paused, polling
    /// the input all along: librdkafka removes a consumer from its group when it does not poll
    /// within `max.poll.interval.ms`, paused or not, and the rebalance would hand its
    /// partitions elsewhere. A paused input normally hands out nothing; whatever it does hand
    /// out is stashed and evaluated first once the outputs are back.
    async fn wait_polling(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let stop = self.stop.clone();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || self.stopping() {
                return;
            }
            let step = (deadline - now).min(PAUSED_POLL_STEP);
            let room = self
                .config
                .batch_max_records
                .saturating_sub(self.stash.len());
            if room == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let polled = tokio::select! {
                polled = self.source.next_batch(room, step) => polled,
                _ = stop.cancelled() => return,
            };
            match polled {
                Ok(records) => {
                    if !records.is_empty() {
                        tracing::debug!(
                            records = records.len(),
                            "paused input handed out records; kept for after the outage"
                        );
                    }
                    self.stash.extend(records);
                }
                Err(e) => {
                    // A closed in-process input ends the stage after the outage, through the
                    // main loop; here, only do not spin on it.
                    if !matches!(e, SourceError::Closed) {
                        tracing::warn!(error = %e, "polling the paused input failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(step) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Commits what was evaluated. A failed commit is not fatal: the state is saved, so the
    /// marks are kept and committed again at the next checkpoint, and records a restart
    /// would replay meanwhile are skipped through the saved applied offsets.
    async fn ack(&mut self) {
        if self.pending_ack.is_empty() {
            return;
        }
        let marks = self.pending_ack.take();
        if let Err(e) = self.source.ack(&marks).await {
            self.metrics.input_errors.inc();
            tracing::warn!(error = %e, "committing input offsets failed; retrying at the next checkpoint");
            self.pending_ack.restore(marks);
        }
    }
}
