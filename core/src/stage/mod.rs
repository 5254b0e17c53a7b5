//! The runtime every consuming stage (indexer, alerter) shares: the batch loop ([`Driver`]:
//! consume, handle, pause and keep polling while the next hop refuses, back off, retry, ack),
//! how it waits between retries ([`Backoff`]) and the Kafka consumer settings it flattens into
//! its config ([`ConsumerConfig`], validated once for every stage).

mod backoff;
mod config;
mod driver;
mod task;

pub use backoff::{
    delay, Backoff, DEFAULT_RETRY_INITIAL_MS, DEFAULT_RETRY_MAX_MS, JITTER_FRACTION,
};
pub use config::{
    ConsumerConfig, StageDefaults, DEFAULT_KAFKA_BROKERS, DEFAULT_SESSION_TIMEOUT_MS,
    DEFAULT_TOPIC_PARTITIONS, DEFAULT_TOPIC_REPLICATION, MIN_SESSION_TIMEOUT_MS,
};
pub use driver::{
    BatchHandler, Driver, DriverOptions, Input, InputEvents, NoInputEvents, ReadRetry, Stopped,
    PAUSED_POLL_STEP,
};
pub use task::StageTask;
