//! Redaction: attribute values whose key names a secret become `[REDACTED]` before anything
//! reaches Kafka.
//!
//! A key is sensitive when its last dot-separated segment, compared case-insensitively and with
//! `-` read as `_`, is one of [`SENSITIVE_KEYS`] (or of `redact_extra_keys`), or ends with one
//! after a word boundary: a `_` or `-`, or a lowercase letter or digit followed by the
//! capital that starts the name (camelCase). So `http.request.header.authorization`,
//! `db.password`, `http.request.header.x-api-key`, `user_password`, `X-Auth-Token` and
//! `clientSecret` are redacted, while `gen_ai.usage.input_tokens`, `token_count`,
//! `password.length`, `monkey`, `keyboard` and `tokenizer` are kept: a name only counts as a
//! whole word at the end of the segment (the rule is [`dlog_core::redact`], which the SDK's
//! `url.full` applies to query keys too). Resource, scope, span, span-event,
//! span-link and log attributes are covered, nested values included (a key inside a kvlist
//! inside an attribute value); log bodies only with `redact_log_bodies`.
//!
//! On the protobuf path the validator ([`crate::wire`]) notes which resources, scopes and items
//! hold a sensitive key while it checks them anyway, and only those are decoded, rewritten and
//! encoded again: a request without a sensitive key keeps the copy-once path.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

use dlog_core::redact::SecretNames;
pub use dlog_core::redact::{MAX_KEY_SEGMENT, SENSITIVE_KEYS};

/// Decides which attribute values are redacted, and rewrites them.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// The key rule (`dlog_core::redact`), shared with the SDK's `url.full`.
    names: SecretNames,
    bodies: bool,
}

impl Redactor {
    /// A redactor for [`SENSITIVE_KEYS`] and `extra` names (normalised here; validated by
    /// the config to be at most [`MAX_KEY_SEGMENT`] bytes); `bodies` extends it into log
    /// bodies.
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>, bodies: bool) -> Redactor {
        Redactor {
            names: SecretNames::new(extra),
            bodies,
        }
    }

    /// Whether log bodies are redacted too.
    pub fn bodies(&self) -> bool {
        self.bodies
    }

    /// Whether an attribute with this key is redacted.
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        self.names.matches(key)
    }

    fn any_match(&self, attributes: &[KeyValue]) -> bool {
        attributes.iter().any(|kv| {
            self.matches(kv.key.as_bytes())
                || kv.value.as_ref().is_some_and(|v| self.value_match(v))
        })
    }

    fn value_match(&self, value: &AnyValue) -> bool {
        match &value.value {
            Some(any_value::Value::KvlistValue(list)) => self.any_match(&list.values),
            Some(any_value::Value::ArrayValue(array)) => {
                array.values.iter().any(|v| self.value_match(v))
            }
            _ => false,
        }
    }

    /// Redacts sensitive values in `attributes`, nested ones included.
    pub fn attributes(&self, attributes: &mut [KeyValue]) {
        for kv in attributes {
            if self.matches(kv.key.as_bytes()) {
                kv.value = Some(AnyValue {
                    value: Some(any_value::Value::StringValue(REDACTED.to_string())),
                });
            } else if let Some(value) = &mut kv.value {
                self.value(value);
            }
        }
    }

    fn value(&self, value: &mut AnyValue) {
        match &mut value.value {
            Some(any_value::Value::KvlistValue(list)) => self.attributes(&mut list.values),
            Some(any_value::Value::ArrayValue(array)) => {
                for v in &mut array.values {
                    self.value(v);
                }
            }
            _ => {}
        }
    }

    /// Redacts a resource's attributes.
    pub fn resource(&self, resource: &mut Resource) {
        self.attributes(&mut resource.attributes);
    }

    /// Redacts a scope's attributes.
    pub fn scope(&self, scope: &mut InstrumentationScope) {
        self.attributes(&mut scope.attributes);
    }

    /// Redacts a span's attributes and those of its events and links.
    pub fn span(&self, span: &mut Span) {
        self.attributes(&mut span.attributes);
        for event in &mut span.events {
            self.attributes(&mut event.attributes);
        }
        for link in &mut span.links {
            self.attributes(&mut link.attributes);
        }
    }

    /// Redacts a log record's attributes, and its body with `redact_log_bodies`.
    pub fn log(&self, log: &mut LogRecord) {
        self.attributes(&mut log.attributes);
        if self.bodies {
            if let Some(body) = &mut log.body {
                self.value(body);
            }
        }
    }

    fn span_match(&self, span: &Span) -> bool {
        self.any_match(&span.attributes)
            || span.events.iter().any(|e| self.any_match(&e.attributes))
            || span.links.iter().any(|l| self.any_match(&l.attributes))
    }

    fn log_match(&self, log: &LogRecord) -> bool {
        self.any_match(&log.attributes)
            || (self.bodies && log.body.as_ref().is_some_and(|b| self.value_match(b)))
    }

    fn resource_match(&self, resource: Option<&Resource>) -> bool {
        resource.is_some_and(|r| self.any_match(&r.attributes))
    }

    fn scope_match(&self, scope: Option<&InstrumentationScope>) -> bool {
        scope.is_some_and(|s| self.any_match(&s.attributes))
    }

    /// Whether anything in the request would be redacted.
    pub fn traces_match(&self, request: &ExportTraceServiceRequest) -> bool {
        request.resource_spans.iter().any(|rs| {
            self.resource_match(rs.resource.as_ref())
                || rs.scope_spans.iter().any(|ss| {
                    self.scope_match(ss.scope.as_ref())
                        || ss.spans.iter().any(|s| self.span_match(s))
                })
        })
    }

    /// Whether anything in the request would be redacted.
    pub fn logs_match(&self, request: &ExportLogsServiceRequest) -> bool {
        request.resource_logs.iter().any(|rl| {
            self.resource_match(rl.resource.as_ref())
                || rl.scope_logs.iter().any(|sl| {
                    self.scope_match(sl.scope.as_ref())
                        || sl.log_records.iter().any(|l| self.log_match(l))
                })
        })
    }

    /// Redacts a whole trace request in place.
    pub fn traces(&self, request: &mut ExportTraceServiceRequest) {
        for rs in &mut request.resource_spans {
            if let Some(r) = &mut rs.resource {
                self.resource(r);
            }
            for ss in &mut rs.scope_spans {
                if let Some(s) = &mut ss.scope {
                    self.scope(s);
                }
                for span in &mut ss.spans {
                    self.span(span);
                }
            }
        }
    }

    /// Redacts a whole logs request in place.
    pub fn logs(&self, request: &mut ExportLogsServiceRequest) {
        for rl in &mut request.resource_logs {
            if let Some(r) = &mut rl.resource {
                self.resource(r);
            }
            for sl in &mut rl.scope_logs {
                if let Some(s) = &mut sl.scope {
                    self.scope(s);
                }
                for log in &mut sl.log_records {
                    self.log(log);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_segment_decides_case_insensitively_with_dashes_as_underscores() {
        let r = Redactor::new([], false);
        for key in [
            "http.request.header.authorization",
            "db.password",
            "Authorization",
            "http.request.header.set-cookie",
            "X.API-KEY",
            "oauth.refresh_token",
            "token",
            "aws.secret",
            "tls.private_key",
            "http.request.header.proxy-authorization",
        ] {
            assert!(r.matches(key.as_bytes()), "{key}");
        }
        for key in [
            "gen_ai.usage.input_tokens",
            "token_count",
            "password.length",
            "http.route",
            "tokens",
            "",
            ".",
            "secret.",
        ] {
            assert!(!r.matches(key.as_bytes()), "{key}");
        }
        let extra = Redactor::new(["ssn", "Credit-Card"], false);
        assert!(extra.matches(b"user.ssn") && extra.matches(b"payment.credit_card"));
        assert!(extra.matches(b"db.password"));
    }

    /// `x-api-key` and `http.request.header.x-api-key` were kept: only a whole last segment
    /// was compared. A name now also counts when it ends the segment as a whole word.
    #[test]
    fn regression_redaction_names_ending_a_key_after_a_word_boundary_are_redacted() {
        let r = Redactor::new([], false);
        for key in [
            "x-api-key",
            "http.request.header.x-api-key",
            "X-API-KEY",
            "api_key",
            "apiKey",
            "xApiKey",
            "http.request.header.x-auth-token",
            "http.request.header.x-amz-security-token",
            "user_password",
            "db.connection.user-password",
            "userPassword",
            "clientSecret",
            "oauth.accessToken",
            "csrf_token",
            "session2Token",
            "aws.secret_access_key",
            "aws_secret_key",
            "http.response.header.x-set-cookie",
        ] {
            assert!(r.matches(key.as_bytes()), "{key} is kept");
        }
        for key in [
            "monkey",
            "keyboard",
            "turkey.key",
            "tokenizer",
            "max_tokens",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "token_count",
            "token.count",
            "passwordless",
            "password_policy",
            "secretary",
            "api_key_id",
            "apikeys",
            "bypasstoken",
            "MYTOKEN",
            "x-api-key.length",
            "_",
            "-",
        ] {
            assert!(!r.matches(key.as_bytes()), "{key} is redacted");
        }
        let extra = Redactor::new(["ssn"], false);
        assert!(extra.matches(b"user.customer-ssn") && extra.matches(b"customerSsn"));
        assert!(!extra.matches(b"user.lessn") && !extra.matches(b"ssn.kind"));
    }
}
