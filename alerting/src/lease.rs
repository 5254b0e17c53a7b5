//! One alerter per consumer group: a lease held through Kafka's own group coordinator.
//!
//! Two alerters evaluating the same group would split the partitions between them, and each
//! would hold half of every window, tracker and incident: a split brain that fires wrong
//! alerts and misses right ones. So before it subscribes to the data topics, an alerter
//! takes the group's lease:
//!
//! - the lease is partition 0 of a single-partition topic (`lease_topic`, default
//!   `alerter_lease`), consumed in a group of its own, `<group_id>.lease`, with the
//!   `cooperative-sticky` assignor, so that a newcomer never takes the partition away from a
//!   live holder;
//! - the member the coordinator assigns the partition to holds the lease; it writes who it
//!   is (host, pid, admin address, client id, since when) to the lease topic, keyed by the
//!   group, so that others can name it;
//! - a member that joins without the partition (each join may take up to three lease
//!   sessions and 10 s) waits up to `lease_wait_ms` (a holder that
//!   died leaves the group after `lease_session_timeout_ms`, and the partition moves to the
//!   waiting member); if a live alerter still holds it then, the newcomer refuses to start,
//!   naming the group and the holder;
//! - the holder keeps polling the lease consumer; if the coordinator ever revokes the
//!   partition (the holder was cut off longer than its session), the stage stops with an
//!   error instead of evaluating alongside the new holder.
//!
//! Failover: with `standby` set, a member that joins without the partition does not
//! refuse; it stands by as long as it takes (`/healthz` says `standby`, the
//! `dlog_alerter_standby` gauge is 1, and it logs who holds the lease every
//! [`STANDBY_LOG_EVERY`]). When the holder dies, its session ends after
//! `lease_session_timeout_ms`, the coordinator hands the partition to a waiting member (or
//! the member joins again after a session and gets it: it does so once the holder stopped
//! renewing its lease record, which a live holder does every half of its own session and
//! says so in the record, since on tansu
//! 0.6 a join now and then takes the partition from a live holder), and that member loads the newest
//! state the holder checkpointed to the state topic ([`crate::state::topic`]) before it
//! joins the data topics' group and evaluates. A holder that stops gracefully leaves the
//! lease group only after its last checkpoint and a `released` lease record, so the
//! successor starts at once from it; a successor of a holder that died (its last record is
//! not a release, or cannot be read) first waits out that holder's session in the data
//! topics' group ([`Lease::took_over`]), since tansu 0.6 does not rebalance when that session
//! ends. A successor stopped during that wait records no release ([`Lease::leave_unreleased`]).
//! A holder that loses the lease delivers and acknowledges nothing more and writes no more
//! checkpoints to the state topic.
//! Without `standby`, a second alerter in the same group refuses to start, as above: a
//! deployment that did not ask for a standby gets a clear error instead of a process that
//! silently waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dlog_core::kafka::ensure_topics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::AlerterConfig;

/// The lease's partition.
const LEASE_PARTITION: i32 = 0;
/// How often the holder polls its lease consumer (and so notices a revocation).
const POLL_STEP: Duration = Duration::from_millis(100);
/// How many of the lease topic's last records are read to name the holder.
const HOLDER_TAIL: i64 = 200;
/// Longest renewal interval a lease record may claim (5 minutes).
const MAX_RENEW_EVERY_MS: u64 = 300_000;
/// How often a standby logs who holds the lease.
pub const STANDBY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Who holds a group's lease, as written to the lease topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The alerters' consumer group.
    pub group: String,
    /// Host name of the holder.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its admin address (`/metrics`, `/healthz`).
    pub admin: String,
    /// Its client id in the lease group (`dlog-alerter-<pid>`).
    pub client_id: String,
    /// When it took the lease, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// Written when the holder let the lease go after a graceful stop (it left the data
    /// topics' group first); a holder whose last record is not a release died holding it.
    #[serde(default)]
    pub released: bool,
    /// How often it renews this record, in ms: a standby judges it silent by this, not by its
    /// own setting. Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_every_ms: Option<u64>,
}

impl Holder {
    /// How often it renews its record, when it says (bounded: the record is anyone's to
    /// write).
    fn renews_every(&self) -> Option<Duration> {
        self.renew_every_ms
            .map(|ms| Duration::from_millis(ms.clamp(100, MAX_RENEW_EVERY_MS)))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} (admin {}, client {}, holding since {} ms after the epoch)",
            self.pid, self.host, self.admin, self.client_id, self.since_unix_ms
        )
    }
}

/// The lease could not be taken or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live alerter holds the group.
    #[error(
        "another alerter is already running in consumer group `{group}`: {holder}; two alerters \
         in one group would split its state between them, so this one refuses to start (stop \
         the other one, or give this one its own --group-id)"
    )]
    Held {
        /// The group.
        group: String,
        /// Who holds it, as far as the lease topic tells.
        holder: String,
    },
    /// The holder lost the lease while running.
    #[error(
        "lost the lease of consumer group `{group}` (cut off from the group coordinator for \
         longer than lease_session_timeout_ms); stopped so as not to evaluate alongside another \
         alerter"
    )]
    Lost {
        /// The group.
        group: String,
    },
    /// The task taking the lease panicked or was cancelled.
    #[error("taking the lease of consumer group `{group}` failed: {source}")]
    Task {
        /// The group.
        group: String,
        /// Why the task stopped.
        source: tokio::task::JoinError,
    },
    /// Kafka failed.
    #[error("lease of consumer group `{group}` on topic `{topic}`: {message}")]
    Kafka {
        /// The group.
        group: String,
        /// The lease topic.
        topic: String,
        /// What failed.
        message: String,
    },
}

/// What the coordinator told the lease consumer.
#[derive(Debug, Default)]
struct Assignment {
    /// A rebalance completed at least once.
    joined: bool,
    /// The lease's partition is assigned to this member.
    holds: bool,
    /// The partition was revoked after being held.
    revoked: bool,
}

struct LeaseContext {
    topic: String,
    state: Mutex<Assignment>,
}

impl LeaseContext {
    fn has_lease(&self, tpl: &TopicPartitionList) -> bool {
        tpl.find_partition(&self.topic, LEASE_PARTITION).is_some()
    }

    fn snapshot(&self) -> (bool, bool, bool) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.joined, s.holds, s.revoked)
    }
}

impl ClientContext for LeaseContext {}

impl ConsumerContext for LeaseContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        tracing::debug!(?rebalance, "lease group rebalance");
        match rebalance {
            // Cooperative assignments are incremental: an empty one changes nothing.
            Rebalance::Assign(tpl) => {
                s.joined = true;
                if self.has_lease(tpl) {
                    s.holds = true;
                }
            }
            Rebalance::Revoke(tpl) => {
                if self.has_lease(tpl) && s.holds {
                    s.holds = false;
                    s.revoked = true;
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "lease group rebalance failed");
            }
        }
    }
}

/// A held lease: kept alive by a thread that polls the lease consumer, released (the member
/// leaves the lease group) on drop.
pub struct Lease {
    stop: Arc<AtomicBool>,
    /// Offset of the lease record this holder wrote when it took the lease.
    epoch: u64,
    /// Leave without recording a release.
    unreleased: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    lost: CancellationToken,
    holder: Holder,
    took_over: bool,
}

impl Lease {
    /// Cancelled when the lease is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The epoch of this holding: the offset of the lease record written when it was taken,
    /// higher than any earlier holder's. Checkpoints carry it, so that a later holder's win
    /// over an earlier one's whatever their numbers.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Who holds it: this process.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Whether this one took the lease over from a holder that may have died holding it (the
    /// group's last lease record is not a release, or could not be read): that holder may
    /// still be a member of the data topics' group until its session there ends.
    pub fn took_over(&self) -> bool {
        self.took_over
    }

    /// Leaves the lease group without recording a release: this holder never joined the
    /// data topics' group, so the previous holder that died may still be a member there,
    /// and the next one must wait it out as this one did.
    pub fn leave_unreleased(&self) {
        self.unreleased.store(true, Ordering::SeqCst);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lease group of an alerters' consumer group.
pub fn lease_group(group_id: &str) -> String {
    format!("{group_id}.lease")
}

/// Takes the lease of `config`'s consumer group, waiting up to `lease_wait_ms` after joining
/// for a dead holder to leave; refuses with [`LeaseError::Held`] when a live one keeps it.
/// `admin` is this process's admin address, written into the lease record.
pub async fn acquire(
    config: &AlerterConfig,
    admin: String,
    shutdown: &CancellationToken,
) -> Result<Lease, LeaseError> {
    let group = config.input.group_id.clone();
    let topic = config.lease_topic.clone();
    let kafka = |message: String| LeaseError::Kafka {
        group: group.clone(),
        topic: topic.clone(),
        message,
    };
    // The lease topic is the alerter's own: created whatever `create_topics` says.
    ensure_topics(&config.input.topic_settings(Some(1)), &[&topic])
        .await
        .map_err(|e| kafka(e.to_string()))?;
    let config = config.clone();
    let stop = shutdown.clone();
    tokio::task::spawn_blocking(move || acquire_blocking(&config, admin, &stop))
        .await
        .map_err(|source| LeaseError::Task { group, source })?
}

/// Clients of the alerter's own topics (lease, state): the brokers and the consumer
/// properties (security and the like).
pub(crate) fn client_config(config: &AlerterConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    // Security and similar properties apply to the lease clients too.
    for (k, v) in &config.input.consumer {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.input.kafka_brokers);
    c
}

fn acquire_blocking(
    config: &AlerterConfig,
    admin: String,
    shutdown: &CancellationToken,
) -> Result<Lease, LeaseError> {
    let group = config.input.group_id.clone();
    let topic = config.lease_topic.clone();
    let kafka = |e: KafkaError| LeaseError::Kafka {
        group: group.clone(),
        topic: topic.clone(),
        message: e.to_string(),
    };
    let session = config.lease_session_timeout_ms;
    let client_id = format!("dlog-alerter-{}", std::process::id());
    let join = || -> Result<BaseConsumer<LeaseContext>, LeaseError> {
        let context = LeaseContext {
            topic: topic.clone(),
            state: Mutex::new(Assignment::default()),
        };
        let consumer: BaseConsumer<LeaseContext> = client_config(config)
            .set("group.id", lease_group(&group))
            .set("client.id", &client_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .create_with_context(context)
            .map_err(kafka)?;
        consumer.subscribe(&[&topic]).map_err(kafka)?;
        Ok(consumer)
    };
    let mut consumer = join()?;

    // A join takes about half a session on some brokers, a rebalance with a live member up
    // to a session and a heartbeat more.
    // It applies to each join: a standby joins again after every session (below), and each
    // of those joins gets the same time as the first.
    let join_within = Duration::from_millis(u64::from(session) * 3 + 10_000);
    let mut join_deadline = Instant::now() + join_within;
    let mut wait_deadline: Option<Instant> = None;
    // A member that joined while a dead holder was still in the group is not always offered
    // the partition once the holder's session ends (tansu 0.6 does not rebalance then), so a
    // waiting member joins again after each session, once the holder stopped renewing its
    // lease record (or released it): on tansu 0.6, a join now and then moves the partition
    // away from a live holder.
    let rejoin_every = Duration::from_millis(u64::from(session) + 1_000);
    let mut rejoin_at: Option<Instant> = None;
    // The holder renews as often as its own setting says (its record tells; else this one's).
    let silent_after = |renews: Duration| renews * 3 + Duration::from_millis(1_000);
    let mut holder_renews: Option<Duration> = None;
    let follower = match follow_holders(config) {
        Ok(follower) => Some(follower),
        Err(e) => {
            tracing::warn!(group = %group, error = %e, "cannot follow the lease topic; joining the lease group again after every session");
            None
        }
    };
    let mut holder_seen = Instant::now();
    let mut holder_released = false;
    let mut standby_log_at: Option<Instant> = None;
    // The group assigned this member something once: the brokers and the group work.
    let mut ever_joined = false;
    loop {
        if shutdown.is_cancelled() {
            return Err(LeaseError::Kafka {
                group,
                topic,
                message: "stopped while waiting for the lease".into(),
            });
        }
        let _ = consumer.poll(POLL_STEP);
        let (joined, holds, _) = consumer.context().snapshot();
        if holds {
            break;
        }
        ever_joined |= joined;
        if let Some(follower) = &follower {
            while let Some(Ok(message)) = follower.poll(Duration::ZERO) {
                if let Some(h) = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Holder>(p).ok())
                    .filter(|h| h.group == config.input.group_id)
                {
                    holder_seen = Instant::now();
                    holder_released = h.released;
                    holder_renews = h.renews_every().or(holder_renews);
                }
            }
        }
        let now = Instant::now();
        if joined && config.standby && standby_log_at.is_none_or(|at| now >= at) {
            // The record comes from a topic anyone may write: escaped for a terminal.
            let holder = read_holder(config)
                .ok()
                .flatten()
                .map(|h| dlog_core::terminal::escape_control(&h.to_string()).into_owned())
                .unwrap_or_else(|| "its holder wrote no lease record".into());
            tracing::info!(group = %group, holder = %holder, "standing by: another alerter holds the lease of the group; taking over when it goes");
            standby_log_at = Some(now + STANDBY_LOG_EVERY);
        }
        if joined && holder_renews.is_none() {
            let renews = read_holder(config)
                .ok()
                .flatten()
                .and_then(|h| h.renews_every())
                .unwrap_or_else(|| renew_every(session));
            holder_renews = Some(renews);
        }
        if joined {
            let deadline =
                *wait_deadline.get_or_insert(now + Duration::from_millis(config.lease_wait_ms));
            if now >= deadline && !config.standby {
                let holder = read_holder(config)
                    .ok()
                    .flatten()
                    // The record comes from a topic anyone may write: escaped for a terminal.
                    .map(|h| dlog_core::terminal::escape_control(&h.to_string()).into_owned())
                    .unwrap_or_else(|| "its holder wrote no lease record".into());
                return Err(LeaseError::Held { group, holder });
            }
            let at = *rejoin_at.get_or_insert(now + rejoin_every);
            let holder_silent = follower.is_none()
                || holder_released
                || now.duration_since(holder_seen)
                    >= silent_after(holder_renews.unwrap_or_else(|| renew_every(session)));
            if now >= at && holder_silent {
                tracing::debug!(group = %group, "the alerter lease is held by another member; joining the lease group again");
                drop(consumer);
                consumer = join()?;
                join_deadline = Instant::now() + join_within;
                rejoin_at = None;
            }
        } else if now >= join_deadline && config.standby && ever_joined {
            // A standby that stood by once keeps waiting: a join the coordinator leaves
            // unanswered (tansu 0.6 now and then, after the holder died) is tried again rather
            // than ending the standby just when it is needed.
            tracing::warn!(group = %group, "the lease group assigned nothing to this standby's join in time; joining again");
            drop(consumer);
            consumer = join()?;
            join_deadline = Instant::now() + join_within;
            rejoin_at = None;
        } else if now >= join_deadline {
            return Err(LeaseError::Kafka {
                group,
                topic,
                message: format!(
                    "the lease group `{}` did not assign anything in time",
                    lease_group(&config.input.group_id)
                ),
            });
        }
    }

    let previous = read_holder(config);
    let holder = Holder {
        released: false,
        renew_every_ms: Some(renew_every(session).as_millis() as u64),
        group: group.clone(),
        host: host_name(),
        pid: std::process::id(),
        admin,
        client_id,
        since_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    // The previous record is never this lease's own (it is written below), even when it
    // names this host and pid (a restarted container). No record at all: no holder ever
    // evaluated the group. A record that could not be read: the previous holder may have
    // died holding the group, so the successor waits as for one that did.
    let took_over = match &previous {
        Ok(previous) => previous.as_ref().is_some_and(|p| !p.released),
        Err(e) => {
            tracing::warn!(group = %group, error = %e, "cannot read the previous lease record; waiting as after a holder that died");
            true
        }
    };
    // Every later holder's record lands at a higher offset: the epoch of this holding.
    let epoch = write_holder(config, &holder).map_err(kafka)?;
    tracing::info!(group = %group, lease_topic = %topic, client_id = %holder.client_id, "took the alerter lease of the group");

    let stop = Arc::new(AtomicBool::new(false));
    let unreleased = Arc::new(AtomicBool::new(false));
    let lost = CancellationToken::new();
    let thread = {
        let stop = Arc::clone(&stop);
        let unreleased = Arc::clone(&unreleased);
        let lost = lost.clone();
        let owned = config.clone();
        let release = Holder {
            released: true,
            ..holder.clone()
        };
        let renewal = holder.clone();
        let renew = renew_every(session);
        // A renewal not delivered within a renewal interval is dropped, not sent late.
        let renewer = holder_producer(config, renew).map_err(kafka)?;
        std::thread::Builder::new()
            .name("alerter-lease".into())
            .spawn(move || {
                let mut renew_at = Instant::now() + renew;
                while !stop.load(Ordering::SeqCst) {
                    let _ = consumer.poll(POLL_STEP);
                    // Renewed while held, so that standbys see it is alive; not waited for.
                    if Instant::now() >= renew_at && !lost.is_cancelled() {
                        if let Err(e) = send_holder(&renewer, &owned, &renewal) {
                            tracing::debug!(group = %group, error = %e, "cannot renew the lease record");
                        }
                        renew_at = Instant::now() + renew;
                    }
                    renewer.poll(Duration::ZERO);
                    let (_, _, revoked) = consumer.context().snapshot();
                    if revoked && !lost.is_cancelled() {
                        tracing::error!(group = %group, "the alerter lease was revoked");
                        lost.cancel();
                    }
                }
                // The stage has stopped and left the data topics' group: a successor need not
                // wait for this one's session there.
                // Through the renewer, after its last renewal: one producer with one request
                // in flight keeps the order, so no renewal lands after the release.
                if !lost.is_cancelled() && !unreleased.load(Ordering::SeqCst) {
                    let _ = renewer.flush(renew + Duration::from_secs(1));
                    if let Err(e) = write_through(&renewer, &owned, &release, renew + Duration::from_secs(1)) {
                        tracing::warn!(group = %group, error = %e, "cannot record the lease's release");
                    }
                }
                // Dropping the consumer leaves the lease group, so a successor takes it at
                // once instead of after a session timeout.
                drop(consumer);
            })
            .map_err(|e| LeaseError::Kafka {
                group: config.input.group_id.clone(),
                topic: config.lease_topic.clone(),
                message: format!("cannot start the lease thread: {e}"),
            })?
    };
    Ok(Lease {
        stop,
        epoch,
        unreleased,
        thread: Some(thread),
        lost,
        holder,
        took_over,
    })
}

/// Keeps the offset of the record a producer wrote.
#[derive(Default)]
struct Written(Mutex<Option<i64>>);

impl ClientContext for Written {}

impl ProducerContext for Written {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(message) = result {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.offset());
        }
    }
}

/// How often a holder renews its lease record.
fn renew_every(session_ms: u32) -> Duration {
    Duration::from_millis(u64::from(session_ms / 2).max(100))
}

/// A producer of lease records, delivered in the order sent (one request in flight), each
/// within `timeout` or not at all.
fn holder_producer(
    config: &AlerterConfig,
    timeout: Duration,
) -> Result<BaseProducer<Written>, KafkaError> {
    client_config(config)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
        .create_with_context(Written::default())
}

/// Queues `holder` for the lease topic.
fn send_holder(
    producer: &BaseProducer<Written>,
    config: &AlerterConfig,
    holder: &Holder,
) -> Result<(), KafkaError> {
    let payload = serde_json::to_vec(holder).unwrap_or_default();
    producer
        .send(
            BaseRecord::to(&config.lease_topic)
                .partition(LEASE_PARTITION)
                .key(&holder.group)
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
}

/// A consumer of the lease records written from now on.
fn follow_holders(config: &AlerterConfig) -> Result<BaseConsumer, KafkaError> {
    let follower: BaseConsumer = client_config(config)
        .set(
            "group.id",
            format!("{}.reader", lease_group(&config.input.group_id)),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.lease_topic, LEASE_PARTITION, Offset::End)?;
    follower.assign(&tpl)?;
    Ok(follower)
}

/// Writes `holder` to the lease topic; returns the record's offset.
fn write_holder(config: &AlerterConfig, holder: &Holder) -> Result<u64, KafkaError> {
    let within = Duration::from_secs(10);
    let producer = holder_producer(config, within)?;
    write_through(&producer, config, holder, within)
}

/// Writes `holder` through `producer`, which has nothing else queued, and waits up to `within`
/// for it; returns the record's offset.
fn write_through(
    producer: &BaseProducer<Written>,
    config: &AlerterConfig,
    holder: &Holder,
    within: Duration,
) -> Result<u64, KafkaError> {
    *producer
        .context()
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
    send_holder(producer, config, holder)?;
    producer.flush(within)?;
    // Delivery reports are served by the flush.
    let offset = *producer
        .context()
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    offset
        .and_then(|o| u64::try_from(o).ok())
        .ok_or(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut))
}

/// The latest holder record of the group among the lease topic's last records: `Ok(None)`
/// when the end was read and none names the group, an error when it could not be read to
/// its end.
fn read_holder(config: &AlerterConfig) -> Result<Option<Holder>, String> {
    let reader: BaseConsumer = client_config(config)
        .set(
            "group.id",
            format!("{}.reader", lease_group(&config.input.group_id)),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &config.lease_topic,
        LEASE_PARTITION,
        Offset::OffsetTail(HOLDER_TAIL),
    )
    .map_err(|e| e.to_string())?;
    reader.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut latest = None;
    while Instant::now() < deadline {
        match reader.poll(POLL_STEP) {
            Some(Ok(message)) => {
                if let Some(holder) = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Holder>(p).ok())
                    .filter(|h| h.group == config.input.group_id)
                {
                    latest = Some(holder);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(latest),
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                return Ok(latest)
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading the lease topic");
            }
            None => {}
        }
    }
    Err("the lease topic was not read to its end within 5 s".into())
}

/// This machine's host name, for the lease record.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
