//! The Kafka consumer settings every consuming stage shares, flattened into its own config.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Default `kafka_brokers`.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default `session_timeout_ms`.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;
/// Least `session_timeout_ms` accepted.
pub const MIN_SESSION_TIMEOUT_MS: u32 = 1_000;
/// Default `topic_partitions`.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 3;
/// Default `topic_replication`: right for a single broker; production clusters should use 3.
pub const DEFAULT_TOPIC_REPLICATION: i32 = 1;

/// What differs between the stages' consumer settings.
pub trait StageDefaults {
    /// Default `group_id`.
    const GROUP_ID: &'static str;
    /// What a record's offset waits for before it is committed, as the reason why
    /// `enable.auto.commit` may not be set ("the store acknowledged ...").
    const COMMITTED_AFTER: &'static str;
}

/// How a stage reaches Kafka and in which group it consumes. Each stage flattens it into
/// its own config (`#[serde(flatten)]`), so the keys sit at the top of the stage's file,
/// and validates it with [`ConsumerConfig::validate`]; `D` gives the stage's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct ConsumerConfig<D: StageDefaults> {
    /// Kafka bootstrap brokers, `HOST:PORT[,HOST:PORT..]`.
    pub kafka_brokers: String,
    /// Consumer group. Instances with the same group share the partitions.
    pub group_id: String,
    /// Create missing topics (the stage's inputs and outputs) at start.
    pub create_topics: bool,
    /// Partitions of topics created with `create_topics`.
    pub topic_partitions: i32,
    /// Replication factor of every topic the stage creates (`create_topics`, the alerter's
    /// lease topic). 1 suits a single broker; production clusters should use 3.
    pub topic_replication: i32,
    /// Consumer-group session timeout, ms.
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties, passed through. The consumer gets them all, and so does
    /// every other Kafka client the stage makes (the admin client that creates topics, the
    /// dead-letter producer, the alerter's lease clients and, on the same brokers, its alerts
    /// producer), so that `security.protocol`, `sasl.*` and `ssl.*` apply everywhere.
    pub consumer: BTreeMap<String, String>,
    /// Which stage's defaults apply; not a setting.
    #[serde(skip)]
    pub stage: PhantomData<fn() -> D>,
}

impl<D: StageDefaults> Default for ConsumerConfig<D> {
    fn default() -> Self {
        ConsumerConfig {
            kafka_brokers: DEFAULT_KAFKA_BROKERS.to_string(),
            group_id: D::GROUP_ID.to_string(),
            create_topics: false,
            topic_partitions: DEFAULT_TOPIC_PARTITIONS,
            topic_replication: DEFAULT_TOPIC_REPLICATION,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            consumer: BTreeMap::new(),
            stage: PhantomData,
        }
    }
}

/// librdkafka properties the stage sets itself; `None` stands for the stage's
/// [`StageDefaults::COMMITTED_AFTER`] reason.
const RESERVED_CONSUMER_PROPERTIES: &[(&str, Option<&str>)] = &[
    ("bootstrap.servers", Some("set `kafka_brokers` instead")),
    ("group.id", Some("set `group_id` instead")),
    ("enable.auto.commit", None),
    ("enable.auto.offset.store", None),
];

impl<D: StageDefaults> ConsumerConfig<D> {
    /// Checks every setting, naming the key (as spelt in the stage's file) and the reason of
    /// the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka_brokers.trim().is_empty()
            || self.kafka_brokers.split(',').any(|b| {
                !b.trim()
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
        {
            return Err(ConfigError::invalid(
                "kafka_brokers",
                format!("`{}` is not a list of HOST:PORT", self.kafka_brokers),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("group_id", "must not be empty"));
        }
        if self.topic_partitions < 1 {
            return Err(ConfigError::invalid(
                "topic_partitions",
                "must be at least 1",
            ));
        }
        if self.topic_replication < 1 {
            return Err(ConfigError::invalid(
                "topic_replication",
                "must be at least 1",
            ));
        }
        if self.session_timeout_ms < MIN_SESSION_TIMEOUT_MS {
            return Err(ConfigError::invalid(
                "session_timeout_ms",
                format!("must be at least {MIN_SESSION_TIMEOUT_MS}"),
            ));
        }
        for (key, why) in RESERVED_CONSUMER_PROPERTIES {
            if self.consumer.contains_key(*key) {
                let why = match why {
                    Some(why) => (*why).to_string(),
                    None => format!("offsets are committed only after {}", D::COMMITTED_AFTER),
                };
                return Err(ConfigError::invalid(format!("consumer.{key}"), why));
            }
        }
        Ok(())
    }

    /// The settings a [`crate::kafka::KafkaSource`] joins the group with, consuming `topics`.
    #[cfg(feature = "kafka")]
    pub fn settings(&self, topics: Vec<String>) -> crate::kafka::ConsumerSettings {
        let mut settings =
            crate::kafka::ConsumerSettings::new(&self.kafka_brokers, &self.group_id, topics);
        settings.session_timeout_ms = self.session_timeout_ms;
        settings.extra = self.consumer.clone();
        settings
    }

    /// How the stage creates topics: on its brokers, with its properties, its
    /// `topic_partitions` (`partitions` for a topic of fixed size such as the lease) and its
    /// `topic_replication`.
    #[cfg(feature = "kafka")]
    pub fn topic_settings(&self, partitions: Option<i32>) -> crate::kafka::TopicSettings<'_> {
        crate::kafka::TopicSettings {
            brokers: &self.kafka_brokers,
            properties: &self.consumer,
            partitions: partitions.unwrap_or(self.topic_partitions),
            replication: self.topic_replication,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct TestStage;
    impl StageDefaults for TestStage {
        const GROUP_ID: &'static str = "test-group";
        const COMMITTED_AFTER: &'static str = "the test said so";
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        #[serde(flatten)]
        input: ConsumerConfig<TestStage>,
        batch: u32,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                input: ConsumerConfig::default(),
                batch: 7,
            }
        }
    }

    #[test]
    fn flattened_keys_take_the_stage_defaults_and_unknown_keys_are_refused() {
        let s: Settings =
            toml::from_str("kafka_brokers = 'k:1'\n[consumer]\n'a.b' = 'c'\n").unwrap();
        assert_eq!(s.input.kafka_brokers, "k:1");
        assert_eq!(s.input.group_id, "test-group");
        assert_eq!(s.input.consumer["a.b"], "c");
        assert_eq!(s.batch, 7);
        s.input.validate().unwrap();
        let err = toml::from_str::<Settings>("group_idd = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("group_idd"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        type Case = (fn(&mut ConsumerConfig<TestStage>), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.kafka_brokers = "nohost".into(), "kafka_brokers"),
            (|c| c.group_id = " ".into(), "group_id"),
            (|c| c.topic_partitions = 0, "topic_partitions"),
            (|c| c.topic_replication = 0, "topic_replication"),
            (|c| c.session_timeout_ms = 10, "session_timeout_ms"),
            (
                |c| {
                    c.consumer.insert("group.id".into(), "g".into());
                },
                "consumer.group.id",
            ),
        ];
        for (mutate, key) in cases {
            let mut config = ConsumerConfig::default();
            mutate(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        let mut config = ConsumerConfig::<TestStage>::default();
        config
            .consumer
            .insert("enable.auto.commit".into(), "true".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("the test said so"), "{err}");
    }
}
