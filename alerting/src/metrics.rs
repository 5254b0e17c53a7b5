//! The alerter's Prometheus metrics, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::alert::Transition;
use crate::engine::EngineStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransitionLabels {
    pub rule: String,
    pub event: String,
    pub severity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutputLabels {
    pub output: String,
}

pub(crate) struct Metrics {
    pub records: Family<TopicLabels, Counter>,
    pub replayed: Counter,
    pub decode_errors: Counter,
    pub transitions: Family<TransitionLabels, Counter>,
    pub output_sent: Family<OutputLabels, Counter>,
    pub output_errors: Family<OutputLabels, Counter>,
    pub output_dropped: Family<OutputLabels, Counter>,
    pub output_rejected: Family<OutputLabels, Counter>,
    pub output_silenced: Family<OutputLabels, Counter>,
    pub silence_refresh_errors: Counter,
    pub input_errors: Counter,
    pub state_save_errors: Counter,
    pub firing: Gauge,
    pub outbox: Gauge,
    pub state_bytes: Gauge,
    pub state_topic_bytes: Gauge,
    pub standby: Gauge,
    pub alerts_dropped: Gauge,
    pub keys_dropped: Gauge,
    pub stale_heartbeats: Gauge,
    pub checkpoint_seconds: Histogram,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            records: Family::default(),
            replayed: Counter::default(),
            decode_errors: Counter::default(),
            transitions: Family::default(),
            output_sent: Family::default(),
            output_errors: Family::default(),
            output_dropped: Family::default(),
            output_rejected: Family::default(),
            output_silenced: Family::default(),
            silence_refresh_errors: Counter::default(),
            input_errors: Counter::default(),
            state_save_errors: Counter::default(),
            firing: Gauge::default(),
            outbox: Gauge::default(),
            state_bytes: Gauge::default(),
            state_topic_bytes: Gauge::default(),
            standby: Gauge::default(),
            alerts_dropped: Gauge::default(),
            keys_dropped: Gauge::default(),
            stale_heartbeats: Gauge::default(),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        let r = registry.sub_registry_with_prefix("dlog_alerter");
        r.register(
            "output_silenced",
            "Alert events an output did not get because a silence matched the alert, or it was an update of an acknowledged alert",
            m.output_silenced.clone(),
        );
        r.register(
            "silence_refresh_errors",
            "Failed reads of silences and acknowledgements from the store (the last ones read stay in force)",
            m.silence_refresh_errors.clone(),
        );
        r.register(
            "records",
            "Records evaluated, by input topic",
            m.records.clone(),
        );
        r.register(
            "records_replayed",
            "Records skipped because the saved state already reflects them (a replay after a crash)",
            m.replayed.clone(),
        );
        r.register(
            "decode_errors",
            "Records that could not be decoded and were skipped",
            m.decode_errors.clone(),
        );
        r.register(
            "transitions",
            "Alert state changes, by rule, event and severity",
            m.transitions.clone(),
        );
        r.register(
            "output_sent",
            "Alert events an output accepted",
            m.output_sent.clone(),
        );
        r.register(
            "output_errors",
            "Failed deliveries to an output (each retry counts)",
            m.output_errors.clone(),
        );
        r.register(
            "output_dropped",
            "Alert events a best-effort output dropped (queue full, or refused after every attempt)",
            m.output_dropped.clone(),
        );
        r.register(
            "output_rejected",
            "Alert events an output refused for good (a 4xx other than 408/429 from the webhook): dropped, not retried",
            m.output_rejected.clone(),
        );
        r.register(
            "input_errors",
            "Failed offset commits, pauses or resumes of the input (the stage carries on; the next checkpoint commits again)",
            m.input_errors.clone(),
        );
        r.register(
            "state_save_errors",
            "Failed saves of the state file (full disk, EIO); each is retried with backoff while the input is paused",
            m.state_save_errors.clone(),
        );
        r.register(
            "alerts_firing",
            "Alerts firing now, folded ones included",
            m.firing.clone(),
        );
        r.register(
            "outbox",
            "Alert events waiting for a required output",
            m.outbox.clone(),
        );
        r.register(
            "state_bytes",
            "Size of the last saved state file",
            m.state_bytes.clone(),
        );
        r.register(
            "state_topic_bytes",
            "Compressed size of the last state checkpointed to the state topic (with standby)",
            m.state_topic_bytes.clone(),
        );
        r.register(
            "standby",
            "1 while the alerter stands by for its group's lease, 0 once it holds it and evaluates",
            m.standby.clone(),
        );
        r.register(
            "alerts_dropped",
            "New alerts not raised because max_active_alerts were firing (since start)",
            m.alerts_dropped.clone(),
        );
        r.register(
            "keys_dropped",
            "Windows, instances or edges not tracked because their bound was reached (since start)",
            m.keys_dropped.clone(),
        );
        r.register(
            "stale_heartbeats",
            "Heartbeats of untracked instances ignored as too old (since start)",
            m.stale_heartbeats.clone(),
        );
        r.register(
            "checkpoint_seconds",
            "Time to save state, deliver alerts to required outputs and acknowledge input",
            m.checkpoint_seconds.clone(),
        );
        m
    }

    pub(crate) fn count_transitions(&self, transitions: &[Transition]) {
        for t in transitions {
            self.transitions
                .get_or_create(&TransitionLabels {
                    rule: t.alert.rule.clone(),
                    event: t.kind.as_str().to_string(),
                    severity: t.alert.severity.as_str().to_string(),
                })
                .inc();
        }
    }

    pub(crate) fn engine(&self, stats: EngineStats, firing: usize) {
        self.firing.set(firing as i64);
        self.alerts_dropped.set(stats.alerts_dropped as i64);
        self.keys_dropped.set(stats.keys_dropped as i64);
        self.stale_heartbeats.set(stats.stale_heartbeats as i64);
    }

    pub(crate) fn output(&self, family: &Family<OutputLabels, Counter>, output: &str, n: u64) {
        family
            .get_or_create(&OutputLabels {
                output: output.to_string(),
            })
            .inc_by(n);
    }
}
