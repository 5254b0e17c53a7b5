//! A zero-copy reader for OTLP protobuf export requests.
//!
//! Decoding a request into `opentelemetry-proto` structs allocates every attribute key and
//! value, only for the bridge to encode them again into per-trace records: that was over half
//! of the bridge's CPU. The bridge needs far less: where each resource, scope and span (or
//! log record) starts and ends, each span's trace id, each log's trace id and event name, and
//! the service instance of each resource. This module finds exactly that, borrowing slices of
//! the request, and validates everything else against the OTLP schema as prost would (wire
//! types, lengths, UTF-8 strings, nesting) without building it, so malformed input is still
//! refused with `INVALID_ARGUMENT` and never reaches Kafka.
//!
//! Inputs the slice representation cannot express exactly (a `resource` or `scope` field
//! repeated in one entry, which protobuf merges) are reported as [`Parsed::NeedsFullDecode`]
//! and take the prost path instead.

use std::fmt;

use dlog_core::encoding::Signal;
use dlog_core::names;

use crate::redact::Redactor;

/// prost's recursion limit: messages may nest this many levels below the request (the
/// request is depth 0, so a message at depth 100 is accepted and one at 101 is not). prost
/// also refuses, at depth 100, any field it has to skip (an unknown field), and inside a
/// group skipped at depth `d` any field once `d + 1` reaches the limit; [`validate`] and
/// [`read_raw`] follow the same rules.
const RECURSION_LIMIT: usize = 100;

/// The request is not valid protobuf for its OTLP message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl WireError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        WireError(message.into())
    }

    fn within(self, message: &str, field: &str) -> Self {
        WireError(format!("{message}.{field}: {}", self.0))
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint,
    Fixed64,
    Len(&'a [u8]),
    Fixed32,
    /// A (deprecated) group, already skipped.
    Group,
}

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    // Keys and most lengths fit one byte.
    if let Some(&byte) = buf.first() {
        if byte < 0x80 {
            *buf = &buf[1..];
            return Ok(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(i) else {
            return Err(WireError::new("truncated varint"));
        };
        if i == 9 && byte > 1 {
            return Err(WireError::new("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(WireError::new("varint longer than 10 bytes"))
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::new(format!(
            "field needs {n} bytes, {} left",
            buf.len()
        )));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

enum Raw<'a> {
    Field(u32, Value<'a>),
    EndGroup(u32),
}

#[inline]
fn read_raw<'a>(buf: &mut &'a [u8], depth: usize) -> Result<Raw<'a>, WireError> {
    let key = varint(buf)?;
    let key = u32::try_from(key).map_err(|_| WireError::new(format!("invalid key {key}")))?;
    let tag = key >> 3;
    if tag == 0 {
        return Err(WireError::new("invalid field number 0"));
    }
    let value = match key & 7 {
        0 => {
            varint(buf)?;
            Value::Varint
        }
        1 => {
            take(buf, 8)?;
            Value::Fixed64
        }
        2 => {
            let len = varint(buf)?;
            let len = usize::try_from(len).map_err(|_| WireError::new("length too large"))?;
            Value::Len(take(buf, len)?)
        }
        3 => {
            loop {
                // Every field inside the group is read one level deeper, which prost refuses
                // once that level reaches the limit; only an end-group may stand there. The
                // key is checked before descending, so nesting costs no stack past the limit
                // (1 MB of start-group bytes used to overflow the worker's stack).
                if depth + 1 >= RECURSION_LIMIT {
                    let mut peek = *buf;
                    if varint(&mut peek)? & 7 != 4 {
                        return Err(WireError::new("recursion limit reached"));
                    }
                }
                match read_raw(buf, depth + 1)? {
                    Raw::EndGroup(end) if end == tag => break,
                    Raw::EndGroup(end) => {
                        return Err(WireError::new(format!(
                            "group {tag} closed by end-group {end}"
                        )))
                    }
                    Raw::Field(..) => {}
                }
            }
            Value::Group
        }
        4 => return Ok(Raw::EndGroup(tag)),
        5 => {
            take(buf, 4)?;
            Value::Fixed32
        }
        other => return Err(WireError::new(format!("invalid wire type {other}"))),
    };
    Ok(Raw::Field(tag, value))
}

/// Iterates the fields of one message.
struct Fields<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], depth: usize) -> Self {
        Fields { rest: bytes, depth }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = match read_raw(&mut self.rest, self.depth) {
            Ok(Raw::Field(tag, value)) => Ok((tag, value)),
            Ok(Raw::EndGroup(tag)) => Err(WireError::new(format!("unexpected end-group {tag}"))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.rest = &[];
        }
        Some(result)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Str,
    Bytes,
    Msg(&'static Schema),
}

impl Kind {
    /// The wire encoding this field must use (no `Debug`: schemas are cyclic).
    fn wire(self) -> &'static str {
        match self {
            Kind::Varint => "varint",
            Kind::Fixed64 => "64-bit",
            Kind::Fixed32 => "32-bit",
            Kind::Str | Kind::Bytes | Kind::Msg(_) => "length-delimited",
        }
    }
}

/// The fields of one OTLP message type that prost checks: number, name and type. Fields not
/// listed are unknown fields, which protobuf skips.
struct Schema {
    name: &'static str,
    fields: &'static [(u32, &'static str, Kind)],
}

impl Schema {
    fn field(&self, tag: u32) -> Option<(&'static str, Kind)> {
        self.fields
            .iter()
            .find(|(t, _, _)| *t == tag)
            .map(|(_, name, kind)| (*name, *kind))
    }
}

// The OTLP schema as opentelemetry-proto 0.33 compiles it.
static ANY_VALUE: Schema = Schema {
    name: "AnyValue",
    fields: &[
        (1, "string_value", Kind::Str),
        (2, "bool_value", Kind::Varint),
        (3, "int_value", Kind::Varint),
        (4, "double_value", Kind::Fixed64),
        (5, "array_value", Kind::Msg(&ARRAY_VALUE)),
        (6, "kvlist_value", Kind::Msg(&KEY_VALUE_LIST)),
        (7, "bytes_value", Kind::Bytes),
        (8, "string_value_strindex", Kind::Varint),
    ],
};
static ARRAY_VALUE: Schema = Schema {
    name: "ArrayValue",
    fields: &[(1, "values", Kind::Msg(&ANY_VALUE))],
};
static KEY_VALUE_LIST: Schema = Schema {
    name: "KeyValueList",
    fields: &[(1, "values", Kind::Msg(&KEY_VALUE))],
};
static KEY_VALUE: Schema = Schema {
    name: "KeyValue",
    fields: &[
        (1, "key", Kind::Str),
        (2, "value", Kind::Msg(&ANY_VALUE)),
        (3, "key_strindex", Kind::Varint),
    ],
};
static SCOPE: Schema = Schema {
    name: "InstrumentationScope",
    fields: &[
        (1, "name", Kind::Str),
        (2, "version", Kind::Str),
        (3, "attributes", Kind::Msg(&KEY_VALUE)),
        (4, "dropped_attributes_count", Kind::Varint),
    ],
};
static ENTITY_REF: Schema = Schema {
    name: "EntityRef",
    fields: &[
        (1, "schema_url", Kind::Str),
        (2, "type", Kind::Str),
        (3, "id_keys", Kind::Str),
        (4, "description_keys", Kind::Str),
    ],
};
static RESOURCE: Schema = Schema {
    name: "Resource",
    fields: &[
        (1, "attributes", Kind::Msg(&KEY_VALUE)),
        (2, "dropped_attributes_count", Kind::Varint),
        (3, "entity_refs", Kind::Msg(&ENTITY_REF)),
    ],
};
static EVENT: Schema = Schema {
    name: "Span.Event",
    fields: &[
        (1, "time_unix_nano", Kind::Fixed64),
        (2, "name", Kind::Str),
        (3, "attributes", Kind::Msg(&KEY_VALUE)),
        (4, "dropped_attributes_count", Kind::Varint),
    ],
};
static LINK: Schema = Schema {
    name: "Span.Link",
    fields: &[
        (1, "trace_id", Kind::Bytes),
        (2, "span_id", Kind::Bytes),
        (3, "trace_state", Kind::Str),
        (4, "attributes", Kind::Msg(&KEY_VALUE)),
        (5, "dropped_attributes_count", Kind::Varint),
        (6, "flags", Kind::Fixed32),
    ],
};
static STATUS: Schema = Schema {
    name: "Status",
    fields: &[(2, "message", Kind::Str), (3, "code", Kind::Varint)],
};
static SPAN: Schema = Schema {
    name: "Span",
    fields: &[
        (1, "trace_id", Kind::Bytes),
        (2, "span_id", Kind::Bytes),
        (3, "trace_state", Kind::Str),
        (4, "parent_span_id", Kind::Bytes),
        (5, "name", Kind::Str),
        (6, "kind", Kind::Varint),
        (7, "start_time_unix_nano", Kind::Fixed64),
        (8, "end_time_unix_nano", Kind::Fixed64),
        (9, "attributes", Kind::Msg(&KEY_VALUE)),
        (10, "dropped_attributes_count", Kind::Varint),
        (11, "events", Kind::Msg(&EVENT)),
        (12, "dropped_events_count", Kind::Varint),
        (13, "links", Kind::Msg(&LINK)),
        (14, "dropped_links_count", Kind::Varint),
        (15, "status", Kind::Msg(&STATUS)),
        (16, "flags", Kind::Fixed32),
    ],
};
static LOG_RECORD: Schema = Schema {
    name: "LogRecord",
    fields: &[
        (1, "time_unix_nano", Kind::Fixed64),
        (2, "severity_number", Kind::Varint),
        (3, "severity_text", Kind::Str),
        (5, "body", Kind::Msg(&ANY_VALUE)),
        (6, "attributes", Kind::Msg(&KEY_VALUE)),
        (7, "dropped_attributes_count", Kind::Varint),
        (8, "flags", Kind::Fixed32),
        (9, "trace_id", Kind::Bytes),
        (10, "span_id", Kind::Bytes),
        (11, "observed_time_unix_nano", Kind::Fixed64),
        (12, "event_name", Kind::Str),
    ],
};

/// What validation looks for besides validity: attribute keys the redactor names.
pub(crate) struct Scan<'r> {
    redactor: Option<&'r Redactor>,
    /// A key the redactor names was seen.
    hit: bool,
    /// Messages validated (each one a struct when decoded).
    messages: usize,
    /// A `resource` or `scope` field was repeated in one entry: valid, but only prost's
    /// merge expresses it.
    merged: bool,
}

impl<'r> Scan<'r> {
    fn new(redactor: Option<&'r Redactor>) -> Self {
        Scan {
            redactor,
            hit: false,
            messages: 0,
            merged: false,
        }
    }

    /// Whether the part just validated needs redacting; resets for the next part.
    fn take(&mut self) -> bool {
        std::mem::take(&mut self.hit)
    }
}

/// Validates `bytes` as a `schema` message; returns the last value of each field in
/// `capture` (protobuf's rule for a repeated scalar field: the last one wins). Keys of
/// `KeyValue`s that `scan`'s redactor names set `scan.hit`.
fn validate<'a, const N: usize>(
    bytes: &'a [u8],
    schema: &'static Schema,
    depth: usize,
    capture: [u32; N],
    scan: &mut Scan<'_>,
) -> Result<[Option<&'a [u8]>; N], WireError> {
    if depth > RECURSION_LIMIT {
        return Err(WireError::new(format!(
            "{}: recursion limit reached",
            schema.name
        )));
    }
    scan.messages += 1;
    let mut captured = [None; N];
    for field in Fields::new(bytes, depth) {
        let (tag, value) = field.map_err(|e| WireError(format!("{}: {}", schema.name, e.0)))?;
        let Some((name, kind)) = schema.field(tag) else {
            // prost refuses to skip a field at the deepest level it accepts.
            if depth >= RECURSION_LIMIT {
                return Err(WireError::new(format!(
                    "{}: recursion limit reached",
                    schema.name
                )));
            }
            continue;
        };
        match (kind, value) {
            (Kind::Varint, Value::Varint)
            | (Kind::Fixed64, Value::Fixed64)
            | (Kind::Fixed32, Value::Fixed32) => {}
            (Kind::Bytes, Value::Len(b)) => {
                if let Some(slot) = capture.iter().position(|c| *c == tag) {
                    captured[slot] = Some(b);
                }
            }
            (Kind::Str, Value::Len(b)) => {
                if std::str::from_utf8(b).is_err() {
                    return Err(
                        WireError::new("string is not valid UTF-8").within(schema.name, name)
                    );
                }
                if let Some(slot) = capture.iter().position(|c| *c == tag) {
                    captured[slot] = Some(b);
                }
                // A repeated string (an entity's key names) becomes a `String` in a vector
                // even when empty (2 bytes on the wire): counted as a message, so that the
                // decoded-size bound covers it.
                if matches!(tag, 3 | 4) && std::ptr::eq(schema, &ENTITY_REF) {
                    scan.messages += 1;
                }
                if tag == 1 && std::ptr::eq(schema, &KEY_VALUE) {
                    if let Some(redactor) = scan.redactor {
                        scan.hit |= redactor.matches(b);
                    }
                }
            }
            (Kind::Msg(inner), Value::Len(b)) => {
                // Keys inside a log body count only when bodies are redacted too.
                let body_off = tag == 5
                    && std::ptr::eq(schema, &LOG_RECORD)
                    && !scan.redactor.is_some_and(Redactor::bodies);
                let result = if body_off {
                    let mut off = Scan::new(None);
                    let result = validate(b, inner, depth + 1, [], &mut off);
                    scan.messages += off.messages;
                    result
                } else {
                    validate(b, inner, depth + 1, [], scan)
                };
                result.map_err(|e| e.within(schema.name, name))?;
            }
            (expected, _) => {
                return Err(WireError::new(format!(
                    "wrong wire type, expected {}",
                    expected.wire()
                ))
                .within(schema.name, name))
            }
        }
    }
    Ok(captured)
}

/// A span or log record inside the request, with what routing needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawItem<'a> {
    /// The encoded message (without its tag and length).
    pub bytes: &'a [u8],
    /// `trace_id` (empty when absent).
    pub trace_id: &'a [u8],
    /// `span_id` (empty when absent).
    pub span_id: &'a [u8],
    /// A log record whose `event_name` is a registration or heartbeat event.
    pub heartbeat: bool,
    /// Holds an attribute the redactor names.
    pub redact: bool,
}

/// One scope entry: the encoded scope and its items.
#[derive(Debug, Clone)]
pub(crate) struct RawScope<'a> {
    pub scope: Option<&'a [u8]>,
    /// The scope holds an attribute the redactor names.
    pub redact: bool,
    pub schema_url: &'a str,
    pub items: Vec<RawItem<'a>>,
}

/// One resource entry: the encoded resource and its scopes.
#[derive(Debug, Clone)]
pub(crate) struct RawResource<'a> {
    pub resource: Option<&'a [u8]>,
    /// The resource holds an attribute the redactor names.
    pub redact: bool,
    pub schema_url: &'a str,
    pub scopes: Vec<RawScope<'a>>,
}

/// A parsed request.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// Every resource, scope and item, as slices of the request.
    Slices {
        resources: Vec<RawResource<'a>>,
        /// How many of those parts hold an attribute the redactor names.
        flagged: usize,
        /// Messages in the request (as for `NeedsFullDecode`).
        messages: usize,
    },
    /// Valid, but with a repeated singular message field (protobuf merges those); decode it
    /// with prost instead. `messages` counts the messages in the request (each becomes a
    /// struct when decoded), so that the decoded size can be bounded before decoding.
    NeedsFullDecode { messages: usize },
}

/// How many items (spans or log records) a request holds, counted from its framing alone
/// without validating anything; `None` when the framing is broken (validation says where).
/// Cheap enough to run before anything is allocated per item.
pub(crate) fn count_items(bytes: &[u8]) -> Option<usize> {
    let mut items = 0usize;
    for field in Fields::new(bytes, 0) {
        let (1, Value::Len(entry)) = field.ok()? else {
            continue;
        };
        for field in Fields::new(entry, 1) {
            let (2, Value::Len(scope)) = field.ok()? else {
                continue;
            };
            for field in Fields::new(scope, 2) {
                if let (2, Value::Len(_)) = field.ok()? {
                    items += 1;
                }
            }
        }
    }
    Some(items)
}

/// Validates and slices an `ExportTraceServiceRequest` or `ExportLogsServiceRequest`.
#[cfg(test)]
pub(crate) fn parse(bytes: &[u8], signal: Signal) -> Result<Parsed<'_>, WireError> {
    parse_with(bytes, signal, None)
}

/// [`parse`], flagging the parts that hold an attribute `redactor` names.
pub(crate) fn parse_with<'a>(
    bytes: &'a [u8],
    signal: Signal,
    redactor: Option<&Redactor>,
) -> Result<Parsed<'a>, WireError> {
    let mut scan = Scan::new(redactor);
    let mut flagged = 0usize;
    let (request, resource_entry, scope_entry, item_field, item_schema) = match signal {
        Signal::Traces => (
            "ExportTraceServiceRequest",
            "ResourceSpans",
            "ScopeSpans",
            "spans",
            &SPAN,
        ),
        Signal::Logs => (
            "ExportLogsServiceRequest",
            "ResourceLogs",
            "ScopeLogs",
            "log_records",
            &LOG_RECORD,
        ),
    };
    let mut resources = Vec::new();
    for field in Fields::new(bytes, 0) {
        let (tag, value) = field.map_err(|e| WireError(format!("{request}: {}", e.0)))?;
        if tag != 1 {
            continue;
        }
        let Value::Len(entry) = value else {
            return Err(WireError::new("wrong wire type").within(request, "resource"));
        };
        let mut out = RawResource {
            resource: None,
            redact: false,
            schema_url: "",
            scopes: Vec::new(),
        };
        scan.messages += 1;
        for field in Fields::new(entry, 1) {
            let (tag, value) =
                field.map_err(|e| WireError(format!("{resource_entry}: {}", e.0)))?;
            match (tag, value) {
                (1, Value::Len(b)) => {
                    scan.merged |= out.resource.is_some();
                    validate(b, &RESOURCE, 2, [], &mut scan)
                        .map_err(|e| e.within(resource_entry, "resource"))?;
                    out.resource = Some(b);
                    out.redact = scan.take();
                    flagged += usize::from(out.redact);
                }
                (2, Value::Len(b)) => {
                    let scope = parse_scope(
                        b,
                        scope_entry,
                        item_field,
                        item_schema,
                        signal,
                        &mut scan,
                        &mut flagged,
                    )
                    .map_err(|e| e.within(resource_entry, "scope entry"))?;
                    out.scopes.push(scope);
                }
                (3, Value::Len(b)) => {
                    out.schema_url = std::str::from_utf8(b).map_err(|_| {
                        WireError::new("string is not valid UTF-8")
                            .within(resource_entry, "schema_url")
                    })?;
                }
                (1..=3, _) => {
                    return Err(WireError::new("wrong wire type").within(resource_entry, "field"))
                }
                _ => {}
            }
        }
        resources.push(out);
    }
    if scan.merged {
        return Ok(Parsed::NeedsFullDecode {
            messages: scan.messages,
        });
    }
    Ok(Parsed::Slices {
        resources,
        flagged,
        messages: scan.messages,
    })
}

fn parse_scope<'a>(
    bytes: &'a [u8],
    scope_entry: &'static str,
    item_field: &'static str,
    item_schema: &'static Schema,
    signal: Signal,
    scan: &mut Scan<'_>,
    flagged: &mut usize,
) -> Result<RawScope<'a>, WireError> {
    scan.messages += 1;
    let mut out = RawScope {
        scope: None,
        redact: false,
        schema_url: "",
        items: Vec::new(),
    };
    for field in Fields::new(bytes, 2) {
        let (tag, value) = field.map_err(|e| WireError(format!("{scope_entry}: {}", e.0)))?;
        match (tag, value) {
            (1, Value::Len(b)) => {
                scan.merged |= out.scope.is_some();
                validate(b, &SCOPE, 3, [], scan).map_err(|e| e.within(scope_entry, "scope"))?;
                out.scope = Some(b);
                out.redact = scan.take();
                *flagged += usize::from(out.redact);
            }
            (2, Value::Len(b)) => {
                let item = match signal {
                    Signal::Traces => {
                        let [trace_id, span_id] = validate(b, item_schema, 3, [1, 2], scan)
                            .map_err(|e| e.within(scope_entry, item_field))?;
                        RawItem {
                            bytes: b,
                            trace_id: trace_id.unwrap_or_default(),
                            span_id: span_id.unwrap_or_default(),
                            heartbeat: false,
                            redact: scan.take(),
                        }
                    }
                    Signal::Logs => {
                        let [trace_id, span_id, event] =
                            validate(b, item_schema, 3, [9, 10, 12], scan)
                                .map_err(|e| e.within(scope_entry, item_field))?;
                        let event = event.unwrap_or_default();
                        RawItem {
                            bytes: b,
                            trace_id: trace_id.unwrap_or_default(),
                            span_id: span_id.unwrap_or_default(),
                            heartbeat: event == names::REGISTRATION_EVENT.as_bytes()
                                || event == names::HEARTBEAT_EVENT.as_bytes(),
                            redact: scan.take(),
                        }
                    }
                };
                *flagged += usize::from(item.redact);
                out.items.push(item);
            }
            (3, Value::Len(b)) => {
                out.schema_url = std::str::from_utf8(b).map_err(|_| {
                    WireError::new("string is not valid UTF-8").within(scope_entry, "schema_url")
                })?;
            }
            (1..=3, _) => {
                return Err(WireError::new("wrong wire type").within(scope_entry, "field"))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The instance key of an encoded resource, with the same rule as
/// [`dlog_core::model::resource_instance_key`]: the first `service.instance.id` string, else
/// the last `service.name`, else `unknown_service`. The bytes were validated already.
pub(crate) fn instance_key(resource: Option<&[u8]>) -> String {
    let mut name: Option<String> = None;
    if let Some(resource) = resource {
        for (tag, value) in Fields::new(resource, 0).flatten() {
            let (1, Value::Len(kv)) = (tag, value) else {
                continue;
            };
            let mut key: &[u8] = b"";
            let mut string: Option<&[u8]> = None;
            for (tag, value) in Fields::new(kv, 0).flatten() {
                match (tag, value) {
                    (1, Value::Len(k)) => key = k,
                    (2, Value::Len(any)) => {
                        // Protobuf merges repeated `value` messages; a later oneof member
                        // replaces an earlier one.
                        for (tag, value) in Fields::new(any, 0).flatten() {
                            match (tag, value) {
                                (1, Value::Len(s)) => string = Some(s),
                                (2..=8, _) => string = None,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            let text = string.and_then(|s| std::str::from_utf8(s).ok());
            if key == names::SERVICE_INSTANCE_ID.as_bytes() {
                if let Some(id) = text {
                    return id.to_string();
                }
            } else if key == names::SERVICE_NAME.as_bytes() {
                name = text.map(str::to_string);
            }
        }
    }
    name.unwrap_or_else(|| "unknown_service".to_string())
}

#[cfg(test)]
mod tests {
    use dlog_core::model::resource_instance_key;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn rich_traces() -> ExportTraceServiceRequest {
        let nested = any_value::Value::KvlistValue(KeyValueList {
            values: vec![
                kv(
                    "list",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(any_value::Value::IntValue(-3)),
                            },
                            AnyValue {
                                value: Some(any_value::Value::DoubleValue(2.5)),
                            },
                            AnyValue {
                                value: Some(any_value::Value::BoolValue(true)),
                            },
                            AnyValue {
                                value: Some(any_value::Value::BytesValue(vec![0, 255])),
                            },
                        ],
                    }),
                ),
                kv("ü", s("ünïcode")),
            ],
        });
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("svc")), kv("deep", nested.clone())],
                    dropped_attributes_count: 2,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "scope".into(),
                        version: "1".into(),
                        attributes: vec![kv("a", s("b"))],
                        dropped_attributes_count: 1,
                    }),
                    spans: (0..3u8)
                        .map(|i| Span {
                            trace_id: vec![i + 1; 16],
                            span_id: vec![i; 8],
                            parent_span_id: vec![9; 8],
                            trace_state: "k=v".into(),
                            flags: 257,
                            name: format!("span {i}"),
                            kind: span::SpanKind::Server as i32,
                            start_time_unix_nano: 1,
                            end_time_unix_nano: 2,
                            attributes: vec![kv("x", nested.clone())],
                            dropped_attributes_count: 1,
                            events: vec![span::Event {
                                time_unix_nano: 5,
                                name: "ev".into(),
                                attributes: vec![kv("e", s("f"))],
                                dropped_attributes_count: 0,
                            }],
                            dropped_events_count: 3,
                            links: vec![span::Link {
                                trace_id: vec![7; 16],
                                span_id: vec![8; 8],
                                trace_state: "t".into(),
                                attributes: vec![kv("l", s("m"))],
                                dropped_attributes_count: 0,
                                flags: 1,
                            }],
                            dropped_links_count: 4,
                            status: Some(Status {
                                message: "bad".into(),
                                code: status::StatusCode::Error as i32,
                            }),
                        })
                        .collect(),
                    schema_url: "scope-schema".into(),
                }],
                schema_url: "resource-schema".into(),
            }],
        }
    }

    fn rich_logs() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s("svc")),
                        kv("service.instance.id", s("svc-1")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: 1,
                            observed_time_unix_nano: 2,
                            severity_number: 9,
                            severity_text: "INFO".into(),
                            body: Some(AnyValue {
                                value: Some(s("hello")),
                            }),
                            attributes: vec![kv("k", s("v"))],
                            dropped_attributes_count: 0,
                            flags: 1,
                            trace_id: vec![3; 16],
                            span_id: vec![4; 8],
                            event_name: String::new(),
                        },
                        LogRecord {
                            event_name: names::HEARTBEAT_EVENT.into(),
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn slices(bytes: &[u8], signal: Signal) -> Vec<RawResource<'_>> {
        match parse(bytes, signal).unwrap() {
            Parsed::Slices { resources, .. } => resources,
            Parsed::NeedsFullDecode { .. } => panic!("unexpected fallback"),
        }
    }

    #[test]
    fn slices_are_the_encoded_messages() {
        let request = rich_traces();
        let bytes = request.encode_to_vec();
        let parsed = slices(&bytes, Signal::Traces);
        let rs = &request.resource_spans[0];
        assert_eq!(
            parsed[0].resource,
            Some(&rs.resource.as_ref().unwrap().encode_to_vec()[..])
        );
        assert_eq!(parsed[0].schema_url, "resource-schema");
        let ss = &rs.scope_spans[0];
        assert_eq!(
            parsed[0].scopes[0].scope,
            Some(&ss.scope.as_ref().unwrap().encode_to_vec()[..])
        );
        assert_eq!(parsed[0].scopes[0].schema_url, "scope-schema");
        for (item, span) in parsed[0].scopes[0].items.iter().zip(&ss.spans) {
            assert_eq!(item.bytes, &span.encode_to_vec()[..]);
            assert_eq!(item.trace_id, &span.trace_id[..]);
            assert_eq!(item.span_id, &span.span_id[..]);
        }

        let request = rich_logs();
        let bytes = request.encode_to_vec();
        let parsed = slices(&bytes, Signal::Logs);
        let items = &parsed[0].scopes[0].items;
        assert_eq!(items[0].trace_id, &[3; 16]);
        assert_eq!(items[0].span_id, &[4; 8]);
        assert!(!items[0].heartbeat);
        assert!(items[1].heartbeat);
        assert!(items[1].trace_id.is_empty());
        assert_eq!(instance_key(parsed[0].resource), "svc-1");
    }

    #[test]
    fn instance_key_matches_core() {
        let cases = vec![
            None,
            Some(Resource::default()),
            Some(Resource {
                attributes: vec![kv("service.name", s("a")), kv("service.name", s("b"))],
                ..Default::default()
            }),
            Some(Resource {
                attributes: vec![
                    kv("service.instance.id", any_value::Value::IntValue(3)),
                    kv("service.name", s("n")),
                    kv("service.instance.id", s("i-2")),
                    kv("service.instance.id", s("i-3")),
                ],
                ..Default::default()
            }),
            Some(Resource {
                attributes: vec![
                    kv("service.name", s("x")),
                    kv("service.name", any_value::Value::BoolValue(true)),
                ],
                ..Default::default()
            }),
        ];
        for resource in cases {
            let bytes = resource.as_ref().map(Message::encode_to_vec);
            assert_eq!(
                instance_key(bytes.as_deref()),
                resource_instance_key(resource.as_ref()),
                "{resource:?}"
            );
        }
    }

    #[test]
    fn repeated_resource_asks_for_the_full_decode() {
        let request = rich_traces();
        let mut bytes = request.encode_to_vec();
        // Append a second resource_spans entry holding `resource` twice.
        let resource = Resource::default().encode_to_vec();
        let mut entry = Vec::new();
        for _ in 0..2 {
            entry.push(0x0a);
            entry.push(resource.len() as u8);
            entry.extend_from_slice(&resource);
        }
        bytes.push(0x0a);
        bytes.push(entry.len() as u8);
        bytes.extend_from_slice(&entry);
        assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_ok());
        assert!(matches!(
            parse(&bytes, Signal::Traces).unwrap(),
            Parsed::NeedsFullDecode { .. }
        ));
    }

    /// Deterministic xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The validator must agree with prost on what is valid: mutate valid requests at
    /// random (flip, insert, delete, truncate bytes) and compare the verdicts.
    #[test]
    fn accepts_exactly_what_prost_accepts() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let traces = rich_traces().encode_to_vec();
        let logs = rich_logs().encode_to_vec();
        let mut disagreements = Vec::new();
        for round in 0..20_000 {
            let (base, signal) = if round % 2 == 0 {
                (&traces, Signal::Traces)
            } else {
                (&logs, Signal::Logs)
            };
            let mut bytes = base.clone();
            for _ in 0..=rng.below(3) {
                match rng.below(4) {
                    0 => {
                        let i = rng.below(bytes.len());
                        bytes[i] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next() as u8;
                    }
                    2 => {
                        let i = rng.below(bytes.len());
                        bytes.remove(i);
                    }
                    _ => {
                        let i = rng.below(bytes.len() + 1);
                        bytes.truncate(i);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let prost = match signal {
                Signal::Traces => ExportTraceServiceRequest::decode(bytes.as_slice()).is_ok(),
                Signal::Logs => ExportLogsServiceRequest::decode(bytes.as_slice()).is_ok(),
            };
            let ours = match parse(&bytes, signal) {
                Ok(Parsed::Slices { .. }) => true,
                // The router hands these to prost, whose verdict is then the answer.
                Ok(Parsed::NeedsFullDecode { .. }) => prost,
                Err(_) => false,
            };
            if ours != prost {
                let prost_err = match signal {
                    Signal::Traces => ExportTraceServiceRequest::decode(bytes.as_slice()).err(),
                    Signal::Logs => ExportLogsServiceRequest::decode(bytes.as_slice()).err(),
                };
                disagreements.push((round, ours, prost, parse(&bytes, signal).err(), prost_err));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements, first: {:?}",
            disagreements.len(),
            &disagreements[..disagreements.len().min(5)]
        );
    }

    fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for mut v in [u64::from(tag << 3 | 2), body.len() as u64] {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        out.extend_from_slice(body);
        out
    }

    /// A trace request whose one span has an attribute value nested (AnyValue / ArrayValue
    /// alternating) so that the innermost message sits at `depth` (the request is depth 0,
    /// the span 3, its KeyValue 4) and holds `leaf`.
    fn nested_request(depth: usize, leaf: &[u8]) -> Vec<u8> {
        assert!(depth >= 5);
        let mut body = leaf.to_vec();
        let mut d = depth;
        while d > 4 {
            body = if d % 2 == 1 {
                // An AnyValue at `d`, in an ArrayValue's `values`, or in the KeyValue's `value`.
                len_field(if d == 5 { 2 } else { 1 }, &body)
            } else {
                // An ArrayValue at `d`, in an AnyValue's `array_value`.
                len_field(5, &body)
            };
            d -= 1;
        }
        let key_value = [len_field(1, b"k"), body].concat();
        let span = [
            len_field(1, &[1; 16]),
            len_field(2, &[2; 8]),
            len_field(9, &key_value),
        ]
        .concat();
        len_field(1, &len_field(2, &len_field(2, &span)))
    }

    #[test]
    fn regression_recursion_limit_off_by_one_matches_prost_at_100_and_101_levels() {
        let decodes = |bytes: &[u8]| ExportTraceServiceRequest::decode(bytes).is_ok();
        let ours = |bytes: &[u8]| match parse(bytes, Signal::Traces) {
            Ok(Parsed::Slices { .. }) => true,
            Ok(Parsed::NeedsFullDecode { .. }) => decodes(bytes),
            Err(_) => false,
        };
        // The limit itself: 100 levels decode, 101 do not, in prost and here.
        let at_100 = nested_request(100, &[]);
        let at_101 = nested_request(101, &[]);
        assert!(decodes(&at_100) && ours(&at_100));
        assert!(!decodes(&at_101) && !ours(&at_101));
        // Around it, with what prost treats specially at depth: unknown fields, and groups
        // (empty, holding a field, nested) that are skipped one level deeper.
        let leaves: [&[u8]; 6] = [
            &[],
            &[0x78, 0x01],                         // field 15, varint
            &[0x7b, 0x7c],                         // empty group 15
            &[0x7b, 0x08, 0x00, 0x7c],             // group 15 holding a varint
            &[0x7b, 0x73, 0x08, 0x00, 0x74, 0x7c], // group 15 holding group 14
            &[0x7b, 0x73, 0x74, 0x7c],             // group 15 holding an empty group 14
        ];
        for depth in 95..=103 {
            for leaf in leaves {
                let bytes = nested_request(depth, leaf);
                assert_eq!(
                    ours(&bytes),
                    decodes(&bytes),
                    "depth {depth}, leaf {leaf:02x?}: {:?}",
                    parse(&bytes, Signal::Traces).err()
                );
            }
        }
    }

    #[test]
    fn regression_remote_crash_nested_groups_are_refused_within_a_small_stack() {
        // 1 MB of start-group bytes (field 1, wire type 3) nests groups a million deep: the
        // reader used to recurse once per byte before checking the depth. It must refuse the
        // input like prost does, within a stack far smaller than a Tokio worker's 2 MiB.
        let bombs: [Vec<u8>; 3] = [
            vec![0x0b; 1 << 20],
            // Inside a span attribute's value, behind a valid prefix.
            nested_request(5, &vec![0x7b; 1 << 20]),
            // Groups of other numbers, alternating with fields inside them.
            [0x0b, 0x08, 0x01].repeat(300_000),
        ];
        for bytes in bombs {
            let outcome = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let prost = ExportTraceServiceRequest::decode(bytes.as_slice()).is_ok();
                    let ours = parse(&bytes, Signal::Traces).map(|_| ()).map_err(|e| e.0);
                    (prost, ours)
                })
                .unwrap()
                .join()
                .expect("parsing nested groups overflowed the stack");
            assert!(!outcome.0, "prost accepted the bomb");
            let reason = outcome.1.unwrap_err();
            assert!(reason.contains("recursion limit reached"), "{reason}");
        }
    }

    #[test]
    fn errors_name_where_the_problem_is() {
        let mut request = rich_traces();
        request.resource_spans[0].scope_spans[0].spans[1].name = "ok".into();
        let mut bytes = request.encode_to_vec();
        // Make the first span's name invalid UTF-8 ("span 0" -> 0xff at the 's').
        let at = bytes.windows(6).position(|w| w == b"span 0").unwrap();
        bytes[at] = 0xff;
        let err = parse(&bytes, Signal::Traces).unwrap_err().to_string();
        assert!(err.contains("Span.name") && err.contains("UTF-8"), "{err}");
        assert!(ExportTraceServiceRequest::decode(bytes.as_slice()).is_err());
    }
}
