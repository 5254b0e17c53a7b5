//! Index names and the composable index templates installed at start.
//!
//! Every mapping is `dynamic: false`: a field that is not in the template is stored in
//! `_source` but never creates a mapping, so arbitrary attributes cannot explode the mapping.
//! Attributes are indexed as nested key/value pairs (Jaeger's `tags`, the logs' `labels`),
//! at most `max_indexed_attributes` per document.

use serde_json::{json, Value};

use super::model::date_of_nanos;

/// Index and template names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexNames {
    /// `<prefix>-`, or empty.
    head: String,
}

impl IndexNames {
    /// Names under `prefix` (joined with `-` as Jaeger's `es.index-prefix` does).
    pub fn new(prefix: &str) -> Self {
        IndexNames {
            head: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}-")
            },
        }
    }

    /// `jaeger-span-YYYY-MM-DD` of a time in ns.
    pub fn span(&self, ns: u64) -> String {
        format!("{}jaeger-span-{}", self.head, date_of_nanos(ns))
    }

    /// `jaeger-service-YYYY-MM-DD`.
    pub fn service(&self, ns: u64) -> String {
        format!("{}jaeger-service-{}", self.head, date_of_nanos(ns))
    }

    /// `service-logs-YYYY-MM-DD`.
    pub fn logs(&self, ns: u64) -> String {
        format!("{}service-logs-{}", self.head, date_of_nanos(ns))
    }

    /// `service-heartbeats-YYYY-MM-DD`.
    pub fn heartbeats(&self, ns: u64) -> String {
        format!("{}service-heartbeats-{}", self.head, date_of_nanos(ns))
    }

    /// `dlog-trace-summaries-YYYY-MM-DD`: one document per trace, in the index of the day the
    /// indexer first saw it.
    pub fn summaries(&self, ns: u64) -> String {
        format!("{}dlog-trace-summaries-{}", self.head, date_of_nanos(ns))
    }

    /// `dlog-dependencies-YYYY-MM-DD`: one document per trace, call edge and day of the
    /// child spans.
    pub fn dependencies(&self, ns: u64) -> String {
        format!("{}dlog-dependencies-{}", self.head, date_of_nanos(ns))
    }

    /// `service-registry`: one document per service instance.
    pub fn registry(&self) -> String {
        format!("{}service-registry", self.head)
    }

    /// `dlog-alerts`: one document per alert.
    pub fn alerts(&self) -> String {
        format!("{}dlog-alerts", self.head)
    }

    /// Every span index.
    pub fn span_pattern(&self) -> String {
        format!("{}jaeger-span-*", self.head)
    }

    /// Every service index.
    pub fn service_pattern(&self) -> String {
        format!("{}jaeger-service-*", self.head)
    }

    /// Every log index.
    pub fn logs_pattern(&self) -> String {
        format!("{}service-logs-*", self.head)
    }

    /// Every trace-summary index.
    pub fn summaries_pattern(&self) -> String {
        format!("{}dlog-trace-summaries-*", self.head)
    }

    /// Every dependency index.
    pub fn dependencies_pattern(&self) -> String {
        format!("{}dlog-dependencies-*", self.head)
    }

    /// Every daily index (the ones retention drops by day).
    pub fn daily_patterns(&self) -> Vec<String> {
        vec![
            self.span_pattern(),
            self.service_pattern(),
            self.logs_pattern(),
            self.heartbeats_pattern(),
            self.summaries_pattern(),
            self.dependencies_pattern(),
        ]
    }

    /// Every heartbeat index.
    pub fn heartbeats_pattern(&self) -> String {
        format!("{}service-heartbeats-*", self.head)
    }

    /// Every index this store writes, comma-separated (for `_refresh`).
    pub fn all(&self) -> String {
        let mut all = self.daily_patterns();
        all.push(self.registry());
        all.push(self.alerts());
        all.join(",")
    }

    fn template_name(&self, what: &str) -> String {
        format!("{}dlog-{what}", self.head)
    }
}

fn keyword() -> Value {
    json!({"type": "keyword", "ignore_above": 256})
}

fn kv_nested() -> Value {
    // Jaeger's own key/value mapping (it maps `tagType`, while documents carry `type`).
    json!({
        "type": "nested",
        "dynamic": false,
        "properties": {"key": keyword(), "value": keyword(), "tagType": keyword()}
    })
}

fn service_fields() -> Value {
    json!({
        "properties": {
            "name": keyword(),
            "version": keyword(),
            "instance": {"properties": {"id": keyword()}}
        }
    })
}

/// `(template name, body)` of every template, for `PUT _index_template/<name>`.
pub fn templates(names: &IndexNames, shards: u32, replicas: u32) -> Vec<(String, Value)> {
    let settings = json!({
        "index": {"number_of_shards": shards, "number_of_replicas": replicas}
    });
    let template = |patterns: Vec<String>, mappings: Value| {
        json!({
            "index_patterns": patterns,
            // Above the built-in templates (priority 100 for logs-*-*), so ours win.
            "priority": 500,
            "template": {"settings": settings, "mappings": mappings},
            "_meta": {"managed_by": "dlog-storage"}
        })
    };
    let span = json!({
        "dynamic": false,
        "properties": {
            "traceID": keyword(),
            "spanID": keyword(),
            "parentSpanID": keyword(),
            "operationName": keyword(),
            "flags": {"type": "integer"},
            "startTime": {"type": "long"},
            "startTimeMillis": {"type": "date", "format": "epoch_millis"},
            "duration": {"type": "long"},
            "references": {
                "type": "nested",
                "dynamic": false,
                "properties": {"refType": keyword(), "traceID": keyword(), "spanID": keyword()}
            },
            "tags": kv_nested(),
            "logs": {
                "type": "nested",
                "dynamic": false,
                "properties": {"timestamp": {"type": "long"}, "fields": kv_nested()}
            },
            "process": {
                "properties": {"serviceName": keyword(), "tags": kv_nested()}
            },
            "dlog": {"type": "object", "enabled": false}
        }
    });
    let service = json!({
        "dynamic": false,
        "properties": {
            "serviceName": keyword(),
            "operationName": keyword(),
            "spanKind": keyword()
        }
    });
    let logs = json!({
        "dynamic": false,
        "properties": {
            "@timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
            "time_unix_nano": {"type": "long"},
            "doc_id": keyword(),
            "service": service_fields(),
            "level": keyword(),
            "severity_number": {"type": "integer"},
            "message": {"type": "text"},
            "trace": {"properties": {"id": keyword()}},
            "span": {"properties": {"id": keyword()}},
            "event": {"properties": {"name": keyword()}},
            "error": {"properties": {"code": keyword(), "message": {"type": "text"}}},
            "response_time_ms": {"type": "double"},
            "threshold_limit_ms": {"type": "double"},
            "dependent_service": keyword(),
            "labels": {
                "type": "nested",
                "dynamic": false,
                "properties": {"key": keyword(), "value": keyword()}
            },
            "attributes": {"type": "object", "enabled": false},
            "resource": {"type": "object", "enabled": false}
        }
    });
    let heartbeats = json!({
        "dynamic": false,
        "properties": {
            "@timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
            "time_unix_nano": {"type": "long"},
            "kind": keyword(),
            "status": keyword(),
            "service": service_fields(),
            "interval_ms": {"type": "long"},
            "dependencies": keyword()
        }
    });
    let registry = json!({
        "dynamic": false,
        "properties": {
            "@timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
            "service": keyword(),
            "instance_id": keyword(),
            "version": keyword(),
            "reported": keyword(),
            "last_heartbeat_unix_nano": {"type": "long"},
            "interval_ms": {"type": "long"},
            "dependencies": keyword()
        }
    });
    let alerts = json!({
        "dynamic": false,
        "properties": {
            "id": keyword(),
            "rule": keyword(),
            "severity": keyword(),
            "state": keyword(),
            "service": keyword(),
            "instance": keyword(),
            "summary": {"type": "text"},
            "first_seen_unix_nano": {"type": "long"},
            "last_seen_unix_nano": {"type": "long"},
            "occurrences": {"type": "long"},
            "example_trace_ids": keyword(),
            "root_cause": keyword(),
            "incident_id": keyword(),
            "labels": {"type": "object", "enabled": false}
        }
    });
    // The per-span contributions (`spans`) and the root candidate are read back by the
    // indexer to merge replays and late spans; they are stored, not indexed.
    let summaries = json!({
        "dynamic": false,
        "properties": {
            "trace_id": keyword(),
            "start_ns": {"type": "long"},
            "end_ns": {"type": "long"},
            "duration_ns": {"type": "long"},
            "root_service": keyword(),
            "root_operation": keyword(),
            "span_count": {"type": "long"},
            "error_count": {"type": "long"},
            "services": keyword(),
            "operations": keyword(),
            "service_operations": keyword(),
            "root": {"type": "object", "enabled": false},
            "spans": {"type": "object", "enabled": false}
        }
    });
    let dependencies = json!({
        "dynamic": false,
        "properties": {
            "trace_id": keyword(),
            "caller": keyword(),
            "callee": keyword(),
            "calls": {"type": "long"},
            "errors": {"type": "long"},
            "start_ns": {"type": "long"}
        }
    });
    vec![
        (
            names.template_name("trace-summaries"),
            template(vec![names.summaries_pattern()], summaries),
        ),
        (
            names.template_name("dependencies"),
            template(vec![names.dependencies_pattern()], dependencies),
        ),
        (
            names.template_name("jaeger-span"),
            template(vec![names.span_pattern()], span),
        ),
        (
            names.template_name("jaeger-service"),
            template(vec![names.service_pattern()], service),
        ),
        (
            names.template_name("service-logs"),
            template(vec![names.logs_pattern()], logs),
        ),
        (
            names.template_name("service-heartbeats"),
            template(vec![names.heartbeats_pattern()], heartbeats),
        ),
        (
            names.template_name("service-registry"),
            template(vec![names.registry()], registry),
        ),
        (
            names.template_name("alerts"),
            template(vec![names.alerts()], alerts),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_jaeger_and_the_prefix() {
        let n = IndexNames::new("t1");
        assert_eq!(
            n.span(1_736_935_200_000_000_000),
            "t1-jaeger-span-2025-01-15"
        );
        assert_eq!(n.service(0), "t1-jaeger-service-1970-01-01");
        assert_eq!(IndexNames::new("").logs(0), "service-logs-1970-01-01");
        assert_eq!(n.registry(), "t1-service-registry");
    }

    #[test]
    fn every_template_is_non_dynamic() {
        for (name, body) in templates(&IndexNames::new("x"), 1, 0) {
            assert!(name.starts_with("x-dlog-"), "{name}");
            assert_eq!(
                body["template"]["mappings"]["dynamic"],
                json!(false),
                "{name}"
            );
        }
    }
}
