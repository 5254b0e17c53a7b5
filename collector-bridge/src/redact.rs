//! Redaction: attribute values whose key names a secret become `[REDACTED]` before anything
//! reaches Kafka.
//!
//! A key is sensitive when its last dot-separated segment, compared case-insensitively and with
//! `-` read as `_`, is one of [`SENSITIVE_KEYS`] (or of `redact_extra_keys`). So
//! `http.request.header.authorization` and `db.password` are redacted, while
//! `gen_ai.usage.input_tokens` and `token_count` are kept. Resource, scope, span, span-event,
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

/// Last key segments whose values are redacted by default (lowercase, `_` for `-`).
pub const SENSITIVE_KEYS: &[&str] = &[
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "private_key",
];

/// The longest key segment `redact_extra_keys` may name.
pub const MAX_KEY_SEGMENT: usize = 64;

/// 64-bit words in a normalised key segment of at most [`MAX_KEY_SEGMENT`] bytes.
const WORDS: usize = MAX_KEY_SEGMENT / 8;

/// A normalised key segment as little-endian words, zero-padded: comparing two is comparing
/// `len.div_ceil(8)` integers, with no call into `memcmp`. This runs for every attribute key.
type Words = [u64; WORDS];

/// Decides which attribute values are redacted, and rewrites them.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// The normalised segments, by their length in bytes (index 0 to `MAX_KEY_SEGMENT`).
    by_len: Vec<Vec<Words>>,
    /// By length, the set of the segments' normalised last bytes: most keys are ruled out by
    /// length and last byte before anything is normalised.
    last_bytes: Vec<[u64; 4]>,
    /// The union of `last_bytes`: checked first, before the key is searched for its last dot.
    any_last_byte: [u64; 4],
    bodies: bool,
}

impl Redactor {
    /// A redactor for [`SENSITIVE_KEYS`] and `extra` segments (normalised here; validated by
    /// the config to be at most [`MAX_KEY_SEGMENT`] bytes); `bodies` extends it into log
    /// bodies.
    pub fn new<'a>(extra: impl IntoIterator<Item = &'a str>, bodies: bool) -> Redactor {
        let mut by_len: Vec<Vec<Words>> = vec![Vec::new(); MAX_KEY_SEGMENT + 1];
        let mut last_bytes = vec![[0u64; 4]; MAX_KEY_SEGMENT + 1];
        for segment in SENSITIVE_KEYS.iter().copied().chain(extra) {
            let bytes = segment.as_bytes();
            let Some(&last) = bytes.last().filter(|_| bytes.len() <= MAX_KEY_SEGMENT) else {
                continue;
            };
            let last = normalise(last);
            last_bytes[bytes.len()][usize::from(last >> 6)] |= 1 << (last & 63);
            let words = normalised(bytes);
            let same = &mut by_len[bytes.len()];
            if !same.contains(&words) {
                same.push(words);
            }
        }
        let mut any_last_byte = [0u64; 4];
        for set in &last_bytes {
            for (any, word) in any_last_byte.iter_mut().zip(set) {
                *any |= word;
            }
        }
        Redactor {
            by_len,
            last_bytes,
            any_last_byte,
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
        match key.last() {
            Some(&last) if contains(&self.any_last_byte, normalise(last)) => {}
            _ => return false,
        }
        let segment = match key.iter().rposition(|b| *b == b'.') {
            Some(dot) => &key[dot + 1..],
            None => key,
        };
        let (Some(&last), Some(lasts)) = (segment.last(), self.last_bytes.get(segment.len()))
        else {
            return false;
        };
        if !contains(lasts, normalise(last)) {
            return false;
        }
        let candidates = &self.by_len[segment.len()];
        let words = normalised(segment);
        let used = segment.len().div_ceil(8);
        candidates
            .iter()
            .any(|c| c[..used].iter().zip(&words[..used]).all(|(a, b)| a == b))
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

/// Whether the 256-bit set holds `byte`.
#[inline]
fn contains(set: &[u64; 4], byte: u8) -> bool {
    set[usize::from(byte >> 6)] & (1 << (byte & 63)) != 0
}

/// `segment` (at most [`MAX_KEY_SEGMENT`] bytes) lowercased, `-` as `_`, as words.
#[inline]
fn normalised(segment: &[u8]) -> Words {
    let mut words = [0u64; WORDS];
    for (word, chunk) in words.iter_mut().zip(segment.chunks(8)) {
        let mut bytes = [0u8; 8];
        for (to, from) in bytes.iter_mut().zip(chunk) {
            *to = normalise(*from);
        }
        *word = u64::from_le_bytes(bytes);
    }
    words
}

#[inline]
fn normalise(b: u8) -> u8 {
    if b == b'-' {
        b'_'
    } else {
        b.to_ascii_lowercase()
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
}
