//! Query-string parsing with bounds: every request's parameters are length-capped, limits are
//! clamped, and a bad value is answered 400 with a message naming the parameter.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Longest query string accepted, bytes.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Longest single parameter value accepted, bytes.
pub const MAX_PARAM_BYTES: usize = 2048;
/// Most attribute filters in one search.
pub const MAX_TAGS: usize = 32;

/// An API error: the status and a message for the user. Rendered in Jaeger's error shape
/// (`{"data":null,...,"errors":[{"code":400,"msg":"..."}]}`) on every API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// 400 naming the parameter.
    pub fn bad_param(name: &str, reason: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("unable to parse param '{name}': {reason}"),
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<dlog_storage::StoreError> for ApiError {
    fn from(e: dlog_storage::StoreError) -> Self {
        let status = match &e {
            dlog_storage::StoreError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status != StatusCode::BAD_REQUEST {
            tracing::warn!(error = %e, "store query failed");
        }
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "data": null,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"code": self.status.as_u16(), "msg": self.message}],
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The parameters of one request, in order, repeated keys kept.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string, refusing one longer than [`MAX_QUERY_BYTES`] or holding a
    /// value longer than [`MAX_PARAM_BYTES`].
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_BYTES {
            return Err(ApiError::bad_request(format!(
                "the query string is longer than {MAX_QUERY_BYTES} bytes"
            )));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
        if let Some((k, _)) = pairs.iter().find(|(_, v)| v.len() > MAX_PARAM_BYTES) {
            return Err(ApiError::bad_param(
                k,
                format!("longer than {MAX_PARAM_BYTES} bytes"),
            ));
        }
        Ok(Params(pairs))
    }

    /// The first non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `name` as an owned string.
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    /// `name` as an unsigned integer.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|e| ApiError::bad_param(name, e))
            })
            .transpose()
    }

    /// `name` as a limit: `default` when absent, at most `max`, and at least 1.
    pub fn limit(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        Ok(match self.u64(name)? {
            None | Some(0) => default,
            Some(n) => (n as usize).min(max),
        })
    }

    /// `name` as a Go-style duration (`1.5s`, `250ms`, `100us`, `2m`, `1h`), as Jaeger's
    /// `minDuration` / `maxDuration` are; a bare number is taken in `bare_unit`.
    pub fn duration(&self, name: &str, bare_unit: Duration) -> Result<Option<Duration>, ApiError> {
        self.get(name)
            .map(|v| parse_duration(v, bare_unit).map_err(|e| ApiError::bad_param(name, e)))
            .transpose()
    }

    /// A time in µs since the epoch (Jaeger's `start` / `end`), returned in ns.
    pub fn micros_as_nanos(&self, name: &str) -> Result<Option<u64>, ApiError> {
        Ok(self.u64(name)?.map(|us| us.saturating_mul(1000)))
    }
}

/// Parses a Go-style duration (`1h2m3.5s`, `250ms`, `10us`, `10µs`, `5ns`); a bare number is
/// taken in `bare_unit`.
pub fn parse_duration(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = text.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return Err(format!("`{text}` is not a duration"));
        }
        return Ok(Duration::from_secs_f64(
            (n * bare_unit.as_secs_f64()).min(1e12),
        ));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: a number needs a unit (ns, us, ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(format!("`{text}` is not a duration (e.g. 250ms, 1.5s)"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{text}` is not a duration"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            // Jaeger UI's lookbacks: `2d`, `7d`, `2w`.
            "d" => 86_400.0,
            "w" => 604_800.0,
            other => return Err(format!("`{text}`: unknown unit `{other}`")),
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    Ok(Duration::from_secs_f64(total.min(1e12)))
}

/// Parses attribute filters: Jaeger's JSON `tags={"k":"v"}`, the logfmt form (`k=v k2="a b"`),
/// and Jaeger's repeated `tag=k:v`.
pub fn parse_tags(params: &Params) -> Result<BTreeMap<String, String>, ApiError> {
    let mut tags = BTreeMap::new();
    for tag in params.all("tag") {
        let (k, v) = tag.split_once(':').ok_or_else(|| {
            ApiError::bad_param("tag", format!("expecting key:value, received: {tag}"))
        })?;
        tags.insert(k.to_string(), v.to_string());
    }
    for text in params.all("tags") {
        let text = text.trim();
        if text.starts_with('{') {
            let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| ApiError::bad_param("tags", format!("cannot unmarshal JSON: {e}")))?;
            for (k, v) in map {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                tags.insert(k, v);
            }
        } else {
            for (k, v) in parse_logfmt(text).map_err(|e| ApiError::bad_param("tags", e))? {
                tags.insert(k, v);
            }
        }
    }
    for text in params.all("attr") {
        let (k, v) = text.split_once('=').ok_or_else(|| {
            ApiError::bad_param("attr", format!("expecting key=value, received: {text}"))
        })?;
        tags.insert(k.trim().to_string(), v.trim().to_string());
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::bad_param(
            "tags",
            format!("more than {MAX_TAGS} attribute filters"),
        ));
    }
    if tags.keys().any(|k| k.is_empty()) {
        return Err(ApiError::bad_param("tags", "an attribute key is empty"));
    }
    Ok(tags)
}

/// `k=v k2="a b" flag` pairs (a bare key means `true`, as logfmt has it).
pub fn parse_logfmt(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            out.push((key, "true".to_string()));
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated quote in `{text}`"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// A trace id as the store keeps it: lowercase hex, left-padded to 32 digits (Jaeger accepts
/// the short 64-bit form too).
pub fn trace_id(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_param(
            "traceID",
            "a trace id is 1 to 32 hex digits",
        ));
    }
    Ok(format!("{:0>32}", text.to_ascii_lowercase()))
}

/// A span id: lowercase hex, left-padded to 16 digits.
pub fn span_id(name: &str, text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_param(name, "a span id is 1 to 16 hex digits"));
    }
    Ok(format!("{:0>16}", text.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_jaeger_sends_them() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            parse_duration("250ms", ms).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("1.5s", ms).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("1m30s", ms).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("100us", ms).unwrap(),
            Duration::from_micros(100)
        );
        assert_eq!(parse_duration("7", ms).unwrap(), Duration::from_millis(7));
        // Jaeger UI's search lookbacks.
        assert_eq!(
            parse_duration("2d", ms).unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            parse_duration("2w", ms).unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("ms", ms).is_err());
        assert!(parse_duration("5 parsecs", ms).is_err());
        assert!(parse_duration("-3", ms).is_err());
    }

    #[test]
    fn tags_come_as_json_logfmt_or_key_colon_value() {
        let p = Params::parse(Some(
            "tags=%7B%22http.status_code%22%3A%22500%22%2C%22retry%22%3Atrue%7D&tag=a:b:c",
        ))
        .unwrap();
        let tags = parse_tags(&p).unwrap();
        assert_eq!(tags["http.status_code"], "500");
        assert_eq!(tags["retry"], "true");
        assert_eq!(tags["a"], "b:c");
        let p = Params::parse(Some("tags=error%3Dtrue+user%3D%22a+b%22")).unwrap();
        let tags = parse_tags(&p).unwrap();
        assert_eq!(tags["error"], "true");
        assert_eq!(tags["user"], "a b");
        let err = parse_tags(&Params::parse(Some("tags=%7Bnope")).unwrap()).unwrap_err();
        assert!(err.message.contains("'tags'"), "{}", err.message);
    }

    #[test]
    fn ids_are_checked_and_padded() {
        assert_eq!(trace_id("ABC").unwrap(), format!("{:0>32}", "abc"));
        assert!(trace_id("xyz").is_err());
        assert!(trace_id(&"a".repeat(33)).is_err());
    }

    #[test]
    fn oversized_queries_are_refused_naming_the_parameter() {
        let long = format!("service={}", "a".repeat(MAX_PARAM_BYTES + 1));
        assert!(Params::parse(Some(&long))
            .unwrap_err()
            .message
            .contains("'service'"));
        let huge = "a=b&".repeat(MAX_QUERY_BYTES);
        assert!(Params::parse(Some(&huge)).is_err());
        let p = Params::parse(Some("limit=999999")).unwrap();
        assert_eq!(p.limit("limit", 20, 1000).unwrap(), 1000);
        assert!(Params::parse(Some("limit=x"))
            .unwrap()
            .limit("limit", 20, 100)
            .unwrap_err()
            .message
            .contains("'limit'"));
    }
}
