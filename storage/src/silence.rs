//! Silences and acknowledgements of alerts, as Alertmanager users know them.
//!
//! A [`Silence`] mutes every alert of a service, or of a rule, or of a rule on one service,
//! until it ends: the alerter still evaluates and stores those alerts (the viewer shows them
//! as silenced) but does not send them to the terminal, webhook or Kafka outputs. An
//! [`AlertAck`] marks one alert acknowledged: the viewer shows who took it, and the alerter
//! stops sending `updated` events for it until it resolves and fires again.
//!
//! Both live next to the alerts: a small `silences.db` SQLite file in the embedded store's
//! directory ([`sqlite`]), or the `{prefix}-dlog-silences` index in Elasticsearch.

use serde::{Deserialize, Serialize};

pub mod sqlite;

/// Most silences and acks a store keeps and lists; the oldest expired ones go first.
pub const MAX_SILENCES: usize = 10_000;

/// Expired silences are kept (and listed) this long after they end, then pruned.
pub const EXPIRED_KEPT_NANOS: u64 = 7 * 24 * 3600 * 1_000_000_000;

/// A silence: alerts it matches are not sent to notifying outputs while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Unique id (chosen by whoever creates it).
    pub id: String,
    /// Matches alerts of this service (every rule when `rule` is `None`).
    #[serde(default)]
    pub service: Option<String>,
    /// Matches alerts of this rule (every service when `service` is `None`).
    #[serde(default)]
    pub rule: Option<String>,
    /// When it starts, ns since the Unix epoch.
    pub starts_unix_nano: u64,
    /// When it ends, ns since the Unix epoch.
    pub ends_unix_nano: u64,
    /// Who created it.
    #[serde(default)]
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

impl Silence {
    /// True while `now` is within `[starts, ends)`.
    pub fn active_at(&self, now_unix_nano: u64) -> bool {
        self.starts_unix_nano <= now_unix_nano && now_unix_nano < self.ends_unix_nano
    }

    /// True when it names an alert of this service and rule (a silence with neither matches
    /// nothing).
    pub fn matches(&self, service: &str, rule: &str) -> bool {
        if self.service.is_none() && self.rule.is_none() {
            return false;
        }
        self.service.as_deref().is_none_or(|s| s == service)
            && self.rule.as_deref().is_none_or(|r| r == rule)
    }
}

/// An acknowledgement of one alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAck {
    /// The alert's id.
    pub alert_id: String,
    /// When it was acknowledged, ns since the Unix epoch. It covers the alert's episode that
    /// was firing then: an alert that resolves and fires again later is not acknowledged.
    pub acked_unix_nano: u64,
    /// Who acknowledged it.
    #[serde(default)]
    pub by: String,
    /// Why / what is being done.
    #[serde(default)]
    pub comment: String,
}

impl AlertAck {
    /// True when it covers the episode of the alert that started at `first_seen_unix_nano`.
    pub fn covers(&self, first_seen_unix_nano: u64) -> bool {
        first_seen_unix_nano <= self.acked_unix_nano
    }
}

/// Silences first by end (latest first), then id; acks newest first.
pub fn sort_silences(silences: &mut [Silence]) {
    silences.sort_by(|a, b| {
        b.ends_unix_nano
            .cmp(&a.ends_unix_nano)
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// Acks newest first, then by alert id.
pub fn sort_acks(acks: &mut [AlertAck]) {
    acks.sort_by(|a, b| {
        b.acked_unix_nano
            .cmp(&a.acked_unix_nano)
            .then_with(|| a.alert_id.cmp(&b.alert_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence(service: Option<&str>, rule: Option<&str>) -> Silence {
        Silence {
            id: "s".into(),
            service: service.map(Into::into),
            rule: rule.map(Into::into),
            starts_unix_nano: 10,
            ends_unix_nano: 20,
            created_by: String::new(),
            comment: String::new(),
        }
    }

    #[test]
    fn a_silence_matches_its_service_or_rule_while_it_lasts() {
        let s = silence(Some("db"), None);
        assert!(s.matches("db", "error_rate") && !s.matches("web", "error_rate"));
        let r = silence(None, Some("error_rate"));
        assert!(r.matches("web", "error_rate") && !r.matches("web", "log_error"));
        let both = silence(Some("db"), Some("error_rate"));
        assert!(both.matches("db", "error_rate") && !both.matches("db", "log_error"));
        assert!(!silence(None, None).matches("db", "error_rate"));
        assert!(!s.active_at(9) && s.active_at(10) && s.active_at(19) && !s.active_at(20));
    }
}
