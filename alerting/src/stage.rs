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
//! With `standby` set, step 2 also writes the state to the state topic (acks=all) before
//! anything is delivered or acknowledged, and an alerter that takes the group's lease over
//! starts from the newer of that and its own state file ([`crate::state`]).
//!
//! A crash before 2 replays the records (nothing was emitted); between 2 and 5 the replayed
//! records are skipped and the outbox is delivered at start, so nothing fires twice and
//! nothing is lost (a required output may see an event again if the crash fell between its
//! acknowledgement and step 5; `(id, revision)` identifies such a repeat).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlog_core::encoding::{Signal, TopicSignals};
use dlog_core::kafka::{ensure_topics, KafkaSource};
use dlog_core::source::{Mark, Marks, RawRecord, Source, SourceError};
use dlog_core::stage::{
    BatchHandler, Driver, DriverOptions, Input, InputEvents, ReadRetry, StageTask,
};
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
use crate::state::topic::{StateTopic, TopicStateError};
use crate::state::{
    is_applied, mark_applied, AppliedOffsets, Pending, StageState, StateError, StateFile,
};
use dlog_core::admin::AdminSource;
use std::sync::atomic::{AtomicBool, Ordering};

/// The stage could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    /// The configuration or the rules are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state topic could not be read or written.
    #[error(transparent)]
    StateTopic(#[from] TopicStateError),
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
    /// The stage's task panicked or was aborted.
    #[error("stage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the stage on Kafka with the wall clock until `shutdown` is cancelled, once it holds
/// its group's lease ([`crate::lease`]): a second alerter in the same group refuses to start.
/// What `Alerter::builder(config).with_shutdown(&shutdown).start()` spawns, run in the
/// caller's task: dropping (aborting) it stops the stage where it is, as a crash would.
pub async fn run(config: AlerterConfig, shutdown: CancellationToken) -> Result<(), AlerterError> {
    config.validate()?;
    run_on_kafka(config, Arc::new(SystemClock), shutdown).await
}

/// A helper task that ends with the stage, even when the stage is dropped where it is.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The group's lease while the stage runs. Released on the blocking pool: releasing joins
/// the lease's thread, which must not block an async worker, even when the stage is dropped
/// where it is (an aborted task).
struct LeaseGuard(Option<crate::lease::Lease>);

impl LeaseGuard {
    /// Releases the lease and waits until it is released.
    async fn release(mut self) {
        if let Some(lease) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(lease)).await.ok();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(lease));
            }
            Err(_) => drop(lease),
        }
    }
}

/// The Kafka path: lease, then the consumer group, then the stage.
async fn run_on_kafka(
    config: AlerterConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), AlerterError> {
    config.validate()?;
    // Served while standing by, too: `/healthz` says `standby` until the lease is taken.
    let admin = Admin::start(&config, &shutdown).await?;
    admin.state.set_waiting(true, config.standby);
    admin.metrics.standby.set(i64::from(config.standby));
    // Opened (created when missing) before standing by: a wrong topic or a missing right shows
    // at start, not at a takeover.
    let state_topic = if config.standby {
        Some(
            StateTopic::open(
                crate::lease::client_config(&config),
                &config.state_topic,
                &config.input.group_id,
            )
            .await?,
        )
    } else {
        None
    };
    let lease = match crate::lease::acquire(&config, admin.addr.to_string(), &shutdown).await {
        Ok(lease) => lease,
        // Told to stop while waiting for the lease: nothing was evaluated, nothing to save.
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    admin.state.set_waiting(false, config.standby);
    admin.metrics.standby.set(0);
    // A holder that died is still a member of the data topics' group until its session
    // there ends, up to `session_timeout_ms - lease_session_timeout_ms` after the lease
    // moved. Joining before that leaves the partitions with the dead member on a broker
    // that does not rebalance when its session ends (tansu 0.6), so a successor waits it
    // out.
    let overlap = u64::from(config.input.session_timeout_ms)
        .saturating_sub(u64::from(config.lease_session_timeout_ms));
    if lease.took_over() && overlap > 0 {
        let wait = Duration::from_millis(overlap + 1_000);
        tracing::info!(wait_ms = wait.as_millis() as u64, "took the lease over; waiting for the previous holder's session in the data topics' group to end");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {
                // The successor must wait as this one did.
                lease.leave_unreleased();
                LeaseGuard(Some(lease)).release().await;
                return Ok(());
            }
        }
    }
    let lost = lease.lost();
    let epoch = lease.epoch();
    let lease = LeaseGuard(Some(lease));
    let state_topic = state_topic.map(|t| t.with_lease_lost(lost.clone()));
    // Losing the lease stops the stage: its last checkpoint goes to the state file only, and
    // it delivers and acknowledges nothing more.
    let stop = shutdown.child_token();
    let watcher = {
        let (stop, lost) = (stop.clone(), lost.clone());
        AbortOnDrop(tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
        }))
    };
    let group = config.input.group_id.clone();
    // The data topics' group is joined only now (a takeover waits for the dead holder's
    // partitions): until its first records arrive, silence is not the services'.
    let joining = Duration::from_millis(u64::from(config.input.session_timeout_ms) * 3);
    // The state is loaded before the data topics' group is joined.
    let input = config.clone();
    let result = match prepare(config, clock, stop, Some(admin), state_topic).await {
        Ok(mut prepared) => match kafka_source(&input).await {
            Ok(source) => {
                prepared.stage.joining_until = Some(Instant::now() + joining);
                prepared.stage.lease_lost = Some(lost.clone());
                // Never below the epoch resumed from (a recreated lease topic starts at 0).
                prepared.stage.epoch = prepared.stage.epoch.max(epoch);
                prepared.run(source).await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    drop(watcher);
    let lost = lost.is_cancelled();
    // Released only now: the successor starts from the state saved above.
    lease.release().await;
    result?;
    if lost {
        return Err(crate::lease::LeaseError::Lost { group }.into());
    }
    Ok(())
}

/// The alerting stage, started through [`Alerter::builder`].
#[derive(Debug)]
pub struct Alerter;

impl Alerter {
    /// A builder of the stage `config` describes. Without [`AlerterBuilder::with_source`] it
    /// joins its Kafka consumer group once it holds the group's lease; without
    /// [`AlerterBuilder::with_clock`] it runs on the wall clock.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), dlog_alerting::AlerterError> {
    /// use dlog_alerting::{Alerter, AlerterConfig};
    /// use dlog_core::source::ChannelSource;
    ///
    /// let (_sender, source) = ChannelSource::new(16);
    /// let alerter = Alerter::builder(AlerterConfig::default())
    ///     .with_source(source)
    ///     .start()
    ///     .await?;
    /// alerter.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(config: AlerterConfig) -> AlerterBuilder<JoinKafka> {
        AlerterBuilder {
            config,
            source: JoinKafka,
            clock: Arc::new(SystemClock),
            shutdown: CancellationToken::new(),
            lease_lost: None,
        }
    }
}

/// The default input of an [`AlerterBuilder`]: the Kafka consumer group of its config,
/// joined once the group's lease is held.
#[derive(Debug, Clone, Copy)]
pub struct JoinKafka;

/// Sets up an alerting stage; see [`Alerter::builder`].
pub struct AlerterBuilder<S> {
    config: AlerterConfig,
    source: S,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    lease_lost: Option<CancellationToken>,
}

impl<S> AlerterBuilder<S> {
    /// Reads `source` instead of joining Kafka (the local log, an in-process channel). No
    /// lease is taken: the caller owns the input.
    pub fn with_source<T: Source + 'static>(self, source: T) -> AlerterBuilder<T> {
        AlerterBuilder {
            config: self.config,
            source,
            clock: self.clock,
            shutdown: self.shutdown,
            lease_lost: self.lease_lost,
        }
    }

    /// Evaluates on `clock` (tests drive a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Stops the stage when `shutdown` is cancelled, as [`RunningAlerter::shutdown`] does.
    pub fn with_shutdown(mut self, shutdown: &CancellationToken) -> Self {
        self.shutdown = shutdown.child_token();
        self
    }
}

impl AlerterBuilder<JoinKafka> {
    /// Checks the configuration and starts the stage: it waits for its group's lease, joins
    /// the group and runs. What fails after this returned is the stage's outcome.
    pub async fn start(self) -> Result<RunningAlerter, AlerterError> {
        self.config.validate()?;
        let shutdown = self.shutdown;
        let run = run_on_kafka(self.config, self.clock, shutdown.clone());
        Ok(RunningAlerter {
            task: StageTask::spawn(shutdown, run),
            admin_addr: None,
        })
    }
}

impl<S: Source + 'static> AlerterBuilder<S> {
    /// The caller's own ownership of the group (a lease of its own): once `lost` is
    /// cancelled, the stage delivers and acknowledges nothing more; its next checkpoint goes
    /// to the state file only and the stage ends with [`crate::lease::LeaseError::Lost`].
    pub fn with_lease_lost(mut self, lost: &CancellationToken) -> Self {
        self.lease_lost = Some(lost.clone());
        self
    }

    /// Loads the rules and the saved state, sets up the outputs and the admin listener, then
    /// runs the stage on the given source.
    pub async fn start(self) -> Result<RunningAlerter, AlerterError> {
        let shutdown = self.shutdown;
        let mut prepared = prepare(self.config, self.clock, shutdown.clone(), None, None).await?;
        prepared.stage.lease_lost = self.lease_lost;
        let admin_addr = Some(prepared.admin.addr);
        Ok(RunningAlerter {
            task: StageTask::spawn(shutdown, prepared.run(self.source)),
            admin_addr,
        })
    }
}

/// A running alerting stage.
pub struct RunningAlerter {
    task: StageTask<AlerterError>,
    admin_addr: Option<SocketAddr>,
}

impl RunningAlerter {
    /// Where the admin listener is bound (the port the OS chose for port 0). `None` on
    /// Kafka, where the listener starts once the group's lease is held.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Saves and acknowledges what was evaluated, delivers what it can, and waits for the
    /// stage to stop.
    pub async fn shutdown(self) -> Result<(), AlerterError> {
        self.task.shutdown().await
    }

    /// Resolves when the stage has stopped: on its own (its in-process input closed, the
    /// lease was lost, or it failed) or after a shutdown; while it runs, never. Cancel-safe,
    /// for `select!`.
    pub async fn stopped(&mut self) -> Result<(), AlerterError> {
        self.task.stopped().await
    }

    /// Waits until the stage stops by itself or through [`RunningAlerter::shutdown`].
    /// Dropping the handle instead stops the stage where it is, as a crash would.
    pub async fn wait(mut self) -> Result<(), AlerterError> {
        self.task.stopped().await
    }
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
        ensure_topics(&config.input.topic_settings(None), &refs).await?;
    }
    Ok(KafkaSource::new(
        &config.input.settings(config.input_topics()),
    )?)
}

/// Runs the stage on any [`Source`] with any [`Clock`] until `shutdown` is cancelled (the
/// all-in-one mode feeds it the local log; tests drive it with a `ManualClock`). What
/// `Alerter::builder(config).with_source(source).with_clock(clock)` spawns, run in the
/// caller's task: dropping (aborting) it stops the stage where it is, as a crash would.
pub async fn run_with<S: Source>(
    config: AlerterConfig,
    source: S,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), AlerterError> {
    prepare(config, clock, shutdown, None, None)
        .await?
        .run(source)
        .await
}

/// A stage set up and ready to read its input.
struct Prepared {
    stage: Stage,
    admin: Admin,
    shutdown: CancellationToken,
}

/// `/metrics` and `/healthz` of the stage: healthy until a graceful shutdown begins, and
/// saying `standby` while the alerter waits for its group's lease.
struct AlerterAdmin {
    registry: Registry,
    serving: AtomicBool,
    standby: AtomicBool,
    /// Waiting for the lease without `standby` (it refuses if a live alerter keeps it).
    waiting: AtomicBool,
}

impl AlerterAdmin {
    /// Waiting for the lease (`true`), as a standby or not, or holding it (`false`).
    fn set_waiting(&self, waiting: bool, standby: bool) {
        self.standby.store(waiting && standby, Ordering::Relaxed);
        self.waiting.store(waiting && !standby, Ordering::Relaxed);
    }
}

impl AdminSource for AlerterAdmin {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn health(&self) -> Result<(), String> {
        if self.serving.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("shutting down".to_string())
        }
    }

    fn healthy_as(&self) -> String {
        if self.standby.load(Ordering::Relaxed) {
            "standby".to_string()
        } else if self.waiting.load(Ordering::Relaxed) {
            "waiting for the lease".to_string()
        } else {
            "ok".to_string()
        }
    }
}

/// The admin listener and the metrics it serves; stops serving when dropped.
struct Admin {
    state: Arc<AlerterAdmin>,
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    _task: AbortOnDrop,
}

impl Admin {
    /// Binds `config.admin` and serves until `shutdown` is cancelled (or this is dropped).
    async fn start(
        config: &AlerterConfig,
        shutdown: &CancellationToken,
    ) -> Result<Admin, AlerterError> {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let admin_refused = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "dlog_alerter_admin_unauthenticated",
            "Admin /metrics requests refused for a missing or wrong bearer token",
            admin_refused.clone(),
        );
        let state = Arc::new(AlerterAdmin {
            registry,
            serving: AtomicBool::new(true),
            standby: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
        });
        let (addr, task) = {
            let admin_state = Arc::clone(&state);
            let admin_stop = shutdown.clone();
            dlog_core::admin::serve_secure(
                config.admin,
                state.clone(),
                &config.admin_security(),
                admin_refused,
                async move {
                    admin_stop.cancelled().await;
                    admin_state.serving.store(false, Ordering::Relaxed);
                },
            )
            .await
            .map_err(|e| match e {
                dlog_core::admin::AdminError::Bind { addr, source } => {
                    AlerterError::Admin { addr, source }
                }
                dlog_core::admin::AdminError::Setting { key, reason } => AlerterError::Config(
                    dlog_core::config::ConfigError::invalid(key, reason).into(),
                ),
            })?
        };
        Ok(Admin {
            state,
            metrics,
            addr,
            _task: AbortOnDrop(task),
        })
    }
}

impl Prepared {
    /// Runs the batch driver over `source` until told to stop or the input closes, then
    /// closes the best-effort outputs.
    async fn run<S: Source>(self, source: S) -> Result<(), AlerterError> {
        let Prepared {
            mut stage,
            admin,
            shutdown,
        } = self;
        let options = DriverOptions {
            batch_max_records: stage.config.batch_max_records,
            batch_linger: Duration::from_millis(stage.config.batch_linger_ms),
            retry_initial: Duration::from_millis(stage.config.retry_initial_ms),
            retry_max: Duration::from_millis(stage.config.retry_max_ms),
            read_retry: ReadRetry::Backoff,
            log_paused_poll_errors: true,
        };
        let result = Driver::new(source, options, shutdown)
            .with_events(stage.metrics.clone())
            .run(&mut stage)
            .await;
        let timeout = Duration::from_millis(stage.config.shutdown_timeout_ms);
        for output in std::mem::take(&mut stage.best_effort) {
            output.close(timeout).await;
        }
        // The admin server stops with the token; on an error exit, stop it here.
        drop(admin);
        result
    }
}

/// Loads the rules and the saved state, builds the outputs and serves the admin endpoints.
async fn prepare(
    config: AlerterConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    admin: Option<Admin>,
    state_topic: Option<StateTopic>,
) -> Result<Prepared, AlerterError> {
    config.validate()?;
    let rules = config.load_rules()?;
    let state_file = StateFile::open(&config.state_dir)?;
    let saved = load_state(&state_file, state_topic.as_ref()).await?;
    let checkpoint = saved.as_ref().map_or(0, |s| s.checkpoint);
    let epoch = saved.as_ref().map_or(0, |s| s.epoch);
    let (engine, applied, outbox, held) = match saved {
        Some(saved) => (
            Engine::restore(rules, clock.clone(), saved.engine).map_err(ConfigError::from)?,
            saved.applied,
            saved.outbox,
            saved.held,
        ),
        None => (
            Engine::new(rules, clock.clone()).map_err(ConfigError::from)?,
            BTreeMap::new(),
            Vec::new(),
            BTreeMap::new(),
        ),
    };

    let admin = match admin {
        Some(admin) => admin,
        None => Admin::start(&config, &shutdown).await?,
    };
    let metrics = admin.metrics.clone();
    let (required, best_effort, muted) = build_outputs(&config, &metrics, &clock).await?;
    let mut held = held;
    for m in &muted {
        if let Some(events) = held.remove(m.output()) {
            m.hold(events);
        }
    }
    tracing::info!(
        admin = %admin.addr,
        outputs = ?required.iter().map(Output::name).chain(best_effort.iter().map(BestEffort::name)).collect::<Vec<_>>(),
        "alerter running"
    );

    let stage = Stage {
        clock,
        engine,
        applied,
        outbox,
        state_file,
        state_topic,
        checkpoint,
        epoch,
        muted,
        required,
        best_effort,
        metrics,
        pending_ack: Marks::default(),
        last_checkpoint: Instant::now(),
        last_tick: None,
        checkpoint_started: None,
        joining_until: None,
        lease_lost: None,
        config,
    };
    Ok(Prepared {
        stage,
        admin,
        shutdown,
    })
}

/// The state to resume from: the newer (by checkpoint number) of the state file and, with a
/// state topic, the group's newest checkpoint there.
async fn load_state(
    file: &StateFile,
    topic: Option<&StateTopic>,
) -> Result<Option<StageState>, AlerterError> {
    let local = file.load()?;
    let remote = match topic {
        Some(topic) => {
            let topic = topic.clone();
            let started = Instant::now();
            let remote = tokio::task::spawn_blocking(move || topic.load_blocking()).await??;
            tracing::debug!(elapsed = ?started.elapsed(), "read the state topic");
            remote
        }
        None => None,
    };
    let (state, from_topic) = crate::state::newer(local, remote);
    let (state, from) = if from_topic {
        let name = topic.map(StateTopic::topic).unwrap_or_default();
        (state, format!("state topic {name}"))
    } else {
        (state, format!("state file {}", file.path().display()))
    };
    if let Some(saved) = &state {
        tracing::info!(
            from = %from,
            checkpoint = saved.checkpoint,
            firing = saved.engine.firing(),
            undelivered = saved.outbox.len(),
            held = saved.held.values().map(Vec::len).sum::<usize>(),
            "resuming from saved state"
        );
    }
    Ok(state)
}

async fn build_outputs(
    config: &AlerterConfig,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<(Vec<Output>, Vec<BestEffort>, Vec<Arc<Muted>>), AlerterError> {
    let o = &config.outputs;
    let mut outputs = [
        terminal::build(&o.terminal),
        kafka::build(
            &o.kafka,
            &config.input.kafka_brokers,
            &config.input.consumer,
        )?,
        webhook::build(&o.webhook)?,
        None,
    ];
    // With the store output, silences and acks are read from the same store and mute the
    // notifying outputs.
    let mut muted_outputs = Vec::new();
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
            muted_outputs.push(muted.clone());
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
    Ok((required, best_effort, muted_outputs))
}

/// The alerter's batch logic, run by the stage runtime's [`Driver`].
struct Stage {
    config: AlerterConfig,
    clock: Arc<dyn Clock>,
    engine: Engine,
    applied: AppliedOffsets,
    outbox: Vec<Pending>,
    state_file: StateFile,
    /// Where checkpoints also go, with `standby`.
    state_topic: Option<StateTopic>,
    /// Number of the last checkpoint saved (or resumed from).
    checkpoint: u64,
    /// Lease epoch its checkpoints carry: the lease's once it is held, else the one resumed
    /// from.
    epoch: u64,
    /// The notifying outputs a silence mutes, whose held events are saved with the state.
    muted: Vec<Arc<Muted>>,
    required: Vec<Output>,
    best_effort: Vec<BestEffort>,
    metrics: Arc<Metrics>,
    /// Highest offset taken per topic and partition since the last acknowledgement.
    pending_ack: Marks,
    last_checkpoint: Instant,
    /// Clock time of the last tick.
    last_tick: Option<u64>,
    /// When the checkpoint whose marks are being acknowledged started.
    checkpoint_started: Option<Instant>,
    /// While the input's consumer group is being joined (until its first records, at most
    /// until this instant), the engine is told its input is stalled, so that heartbeats not
    /// read yet do not count as silence.
    joining_until: Option<Instant>,
    /// Cancelled when the group's lease was lost: a checkpoint then goes to the state file
    /// only, since the state topic is the new holder's now, and the stage delivers and
    /// acknowledges nothing more (the successor resumes from the state topic).
    lease_lost: Option<CancellationToken>,
}

impl InputEvents for Metrics {
    fn input_error(&self, _error: &SourceError) {
        self.input_errors.inc();
    }
}

impl<S: Source> BatchHandler<S> for Stage {
    type Error = AlerterError;

    /// Alerts a previous run saved but could not deliver go out first, while the lease is
    /// still held.
    async fn start(&mut self, input: &mut Input<S>) -> Result<Vec<Mark>, AlerterError> {
        if !self.outbox.is_empty() {
            self.check_lease()?;
        }
        if !self.outbox.is_empty() && self.deliver(input).await? {
            self.save(input).await?;
        }
        Ok(Vec::new())
    }

    async fn handle(
        &mut self,
        batch: Vec<RawRecord>,
        input: &mut Input<S>,
    ) -> Result<Vec<Mark>, AlerterError> {
        if let Some(until) = self.joining_until {
            if !batch.is_empty() || Instant::now() >= until {
                self.joining_until = None;
            }
            self.engine.note_input_gap(self.clock.now_unix_nanos());
        }
        let tick_nanos = self.config.tick_interval_ms.saturating_mul(1_000_000);
        let checkpoint_every = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut records: Vec<Record> = Vec::new();
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
            return self.checkpoint(transitions, input).await;
        }
        Ok(Vec::new())
    }

    /// A failed commit is not fatal: the state is saved, so the marks are kept and committed
    /// again at the next checkpoint, and records a restart would replay meanwhile are skipped
    /// through the saved applied offsets.
    fn acked(&mut self, marks: Vec<Mark>, result: Result<(), SourceError>) {
        if let Err(e) = result {
            self.metrics.input_errors.inc();
            tracing::warn!(error = %e, "committing input offsets failed; retrying at the next checkpoint");
            self.pending_ack.restore(marks);
        }
        if let Some(started) = self.checkpoint_started.take() {
            self.metrics
                .checkpoint_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Graceful stop: save and acknowledge what was evaluated.
    async fn finish(&mut self, input: &mut Input<S>) -> Result<Vec<Mark>, AlerterError> {
        if !self.pending_ack.is_empty() || !self.outbox.is_empty() {
            return self.checkpoint(Vec::new(), input).await;
        }
        Ok(Vec::new())
    }
}

impl Stage {
    /// Whether the group's lease was lost.
    fn lease_is_lost(&self) -> bool {
        self.lease_lost.as_ref().is_some_and(|l| l.is_cancelled())
    }

    /// Fails with [`crate::lease::LeaseError::Lost`] once the group's lease was lost.
    fn check_lease(&self) -> Result<(), AlerterError> {
        if self.lease_is_lost() {
            return Err(crate::lease::LeaseError::Lost {
                group: self.config.input.group_id.clone(),
            }
            .into());
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
    async fn save<S: Source>(&mut self, input: &mut Input<S>) -> Result<(), AlerterError> {
        let mut backoff = input.backoff();
        let result = loop {
            // A number per attempt: chunks an attempt that failed midway left on the state
            // topic are never mistaken for part of the next one.
            self.checkpoint = self.checkpoint.saturating_add(1);
            match self.save_once().await {
                Ok(()) => break Ok(()),
                // The group is another alerter's now: nothing to retry.
                Err(e) if self.lease_is_lost() => break Err(e),
                Err(e) => {
                    self.metrics.state_save_errors.inc();
                    if input.stopping() {
                        break Err(e);
                    }
                    let wait = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?wait, "saving the state failed; input paused until it succeeds");
                    // Told to stop during the wait: one last attempt, then the error.
                    let _ = input.retry(wait).await;
                }
            }
        };
        if input.resume() {
            self.engine.note_input_gap(self.clock.now_unix_nanos());
        }
        result
    }

    /// Saves the state once: to the state file, then (with `standby`) to the state topic.
    /// Serializing, compressing, writing and fsyncing run on the blocking pool: a large state
    /// or a slow disk must not stall an async worker (the admin server and best-effort
    /// outputs share them).
    async fn save_once(&self) -> Result<(), AlerterError> {
        let state = StageState {
            engine: self.engine.snapshot(),
            applied: self.applied.clone(),
            outbox: self.outbox.clone(),
            held: self
                .muted
                .iter()
                .map(|m| (m.output().to_string(), m.held()))
                .filter(|(_, events)| !events.is_empty())
                .collect(),
            checkpoint: self.checkpoint,
            epoch: self.epoch,
        };
        let file = self.state_file.clone();
        let topic = self.state_topic.clone().filter(|_| !self.lease_is_lost());
        let (bytes, chunks) = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec(&state).map_err(|e| StateError::Corrupt {
                path: file.path().to_path_buf(),
                message: e.to_string(),
            })?;
            file.save_json(&json)?;
            let chunks = match &topic {
                Some(topic) => Some(topic.encode(&json)?),
                None => None,
            };
            Ok::<_, AlerterError>((json.len(), chunks))
        })
        .await
        .map_err(|e| StateError::Io {
            path: self.state_file.path().to_path_buf(),
            source: std::io::Error::other(format!("state save task failed: {e}")),
        })??;
        // Saved to the file only once the lease is lost: that checkpoint must not lead to a
        // delivery or an acknowledgement, since the successor resumes from the state topic.
        self.check_lease()?;
        if let (Some(topic), Some(chunks)) = (&self.state_topic, chunks) {
            let written = topic.save(self.epoch, self.checkpoint, &chunks).await?;
            self.metrics.state_topic_bytes.set(written as i64);
            // Lost during the write: the successor may have loaded an older checkpoint.
            self.check_lease()?;
        }
        self.metrics.state_bytes.set(bytes as i64);
        self.metrics.outbox.set(self.outbox.len() as i64);
        Ok(())
    }

    /// Outbox, save, best-effort outputs, required outputs, save; returns the marks to
    /// acknowledge (none when told to stop before the required outputs took everything).
    async fn checkpoint<S: Source>(
        &mut self,
        transitions: Vec<Transition>,
        input: &mut Input<S>,
    ) -> Result<Vec<Mark>, AlerterError> {
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
        self.save(input).await?;
        for output in &self.best_effort {
            output.offer(&transitions);
        }
        let delivered = if self.outbox.is_empty() {
            true
        } else {
            self.check_lease()?;
            self.deliver(input).await?
        };
        if !delivered {
            // Stopping with alerts undelivered: they are in the saved outbox, and the input
            // stays unacknowledged.
            return Ok(Vec::new());
        }
        if !transitions.is_empty() {
            self.save(input).await?;
        }
        // Acknowledged only while the group is still this alerter's.
        self.check_lease()?;
        let marks = self.pending_ack.take();
        self.last_checkpoint = Instant::now();
        self.metrics
            .engine(self.engine.stats(), self.engine.firing_count());
        if marks.is_empty() {
            self.metrics
                .checkpoint_seconds
                .observe(started.elapsed().as_secs_f64());
        } else {
            // Observed once the driver acknowledged the marks: the time covers the commit.
            self.checkpoint_started = Some(started);
        }
        Ok(marks)
    }

    /// Delivers the outbox to every required output that still owes it, retrying with
    /// backoff while the input is paused. A transition an output refuses for good is dropped
    /// for that output (logged and counted); only what failed is retried, so one bad alert
    /// neither blocks the output nor makes it see the others again. Returns false when the
    /// stage was told to stop before everything was delivered.
    async fn deliver<S: Source>(&mut self, input: &mut Input<S>) -> Result<bool, AlerterError> {
        let mut complete = true;
        for output in self.required.clone() {
            let name = output.name();
            let mut backoff = input.backoff();
            loop {
                let owed: Vec<usize> = (0..self.outbox.len())
                    .filter(|i| self.outbox[*i].outputs.contains(name))
                    .collect();
                if owed.is_empty() {
                    break;
                }
                // Never delivered once the group is another alerter's (also on a retry).
                self.check_lease()?;
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
                if input.retry(wait).await.is_err() {
                    complete = false;
                    break;
                }
            }
            if !complete {
                break;
            }
        }
        self.outbox.retain(|p| !p.outputs.is_empty());
        if input.resume() {
            // The input was stalled: heartbeats sent meanwhile are still in the backlog, so
            // the outage must not count as every service's silence.
            self.engine.note_input_gap(self.clock.now_unix_nanos());
        }
        Ok(complete)
    }
}
