//! Shared checks of the fuzz targets: the oracles (what must hold for any input), a counting
//! allocator to check the memory bounds the receivers reserve, and `arbitrary` descriptions
//! of export requests for the structure-aware targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use collector_bridge::fuzzing::{self, Verdict};
use collector_bridge::{Config, Router};
use dlog_core::encoding::Encoding;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

// ---------------------------------------------------------------------------------------------
// Counting allocator: live bytes and their peak, so a target can check that decoding stays
// within what the receiver reserved for it.

/// The system allocator, counting live bytes and their peak.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Whether the memory-bound oracles are on: unless `DLOG_FUZZ_SKIP_MEMORY_BOUNDS` is set (for
/// an offline run that looks for other failures while a bound is known to be open).
pub fn memory_bounds() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("DLOG_FUZZ_SKIP_MEMORY_BOUNDS").is_none())
}

/// Runs `f` and returns its result with the most bytes it had allocated at once (what it
/// still holds on return included). Exact only with [`Counting`] as the global allocator.
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(start))
}

// ---------------------------------------------------------------------------------------------
// Oracles.

/// Writes the bytes a structure-aware target made to the file `DLOG_FUZZ_DUMP` names, if set,
/// so that a failing input can be looked at as the decoder saw it.
pub fn dump(bytes: &[u8]) {
    if let Some(path) = std::env::var_os("DLOG_FUZZ_DUMP") {
        let _ = std::fs::write(path, bytes);
    }
}

/// The record size limit of the fuzzed routers: the smallest the bridge's configuration
/// accepts, so that splitting and oversized items are reached with small requests.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The largest request body the structure-aware targets build (protobuf or JSON, after the
/// mutations); a larger one is skipped. 8 times the record limit, so splitting, oversized
/// items, repeated resource entries and thousands of entity key names all fit, while the
/// checks (prost, the validator, both routers, each several passes over the body) stay at
/// about a millisecond per input. Every check costs in proportion to the body, and the
/// decoded-size bounds are ratios to it, so a larger body reaches nothing a smaller one
/// cannot.
pub const MAX_BODY: usize = 8 * 1024;

/// Routers the protobuf and JSON checks run: the in-place path with redaction (the default),
/// and the decoding path (`otlp_json` output), both with a small record limit so that
/// splitting and rejection are reached.
pub fn routers() -> &'static [Router; 2] {
    static ROUTERS: std::sync::OnceLock<[Router; 2]> = std::sync::OnceLock::new();
    ROUTERS.get_or_init(|| {
        let proto = Config {
            max_message_bytes: MAX_MESSAGE_BYTES,
            ..Config::default()
        };
        let json = Config {
            encoding: Encoding::OtlpJson,
            max_message_bytes: MAX_MESSAGE_BYTES,
            redact_log_bodies: true,
            ..Config::default()
        };
        [Router::new(&proto), Router::new(&json)]
    })
}

/// What prost makes of a request: per resource entry, per scope entry, the items' ids.
type Shape = Vec<Vec<Vec<(Vec<u8>, Vec<u8>, bool)>>>;

fn trace_shape(request: &ExportTraceServiceRequest) -> Shape {
    request
        .resource_spans
        .iter()
        .map(|rs| {
            rs.scope_spans
                .iter()
                .map(|ss| {
                    ss.spans
                        .iter()
                        .map(|s| (s.trace_id.clone(), s.span_id.clone(), false))
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn log_shape(request: &ExportLogsServiceRequest) -> Shape {
    request
        .resource_logs
        .iter()
        .map(|rl| {
            rl.scope_logs
                .iter()
                .map(|sl| {
                    sl.log_records
                        .iter()
                        .map(|l| {
                            (
                                l.trace_id.clone(),
                                l.span_id.clone(),
                                dlog_core::model::is_heartbeat_record(l),
                            )
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The protobuf oracle. For an `ExportTraceServiceRequest` (or, with `logs`, an
/// `ExportLogsServiceRequest`) body:
/// * the bridge's validator accepts exactly what prost accepts (`NeedsFullDecode` defers to
///   prost, as the router does), and slices the same resources, scopes and item ids;
/// * the item count from the framing matches;
/// * prost's decoded request fits the decoded-size bound the router reserves;
/// * both routers answer `Ok` exactly when prost accepts, account for every item, and never
///   make a record over the size limit.
pub fn check_protobuf(bytes: &[u8], logs: bool) {
    let (decoded, peak) = peak_of(|| {
        if logs {
            ExportLogsServiceRequest::decode(bytes)
                .ok()
                .map(|r| log_shape(&r))
        } else {
            ExportTraceServiceRequest::decode(bytes)
                .ok()
                .map(|r| trace_shape(&r))
        }
    });
    let verdict = fuzzing::parse(bytes, logs);
    match (&verdict, &decoded) {
        (Verdict::Invalid(reason), Some(_)) => {
            panic!("prost accepts what the validator refuses: {reason}")
        }
        (Verdict::Slices { .. } | Verdict::NeedsFullDecode { .. }, None) => {
            panic!("the validator accepts what prost refuses: {verdict:?}")
        }
        (Verdict::Slices { resources, .. }, Some(shape)) => {
            let sliced: Shape = resources
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|s| {
                            s.iter()
                                .map(|i| (i.trace_id.clone(), i.span_id.clone(), i.heartbeat))
                                .collect()
                        })
                        .collect()
                })
                .collect();
            assert_eq!(&sliced, shape, "the slices differ from prost's decode");
            let items: usize = shape.iter().flatten().map(Vec::len).sum();
            assert_eq!(fuzzing::count_items(bytes), Some(items), "framing count");
        }
        _ => {}
    }
    if let (Verdict::Slices { messages, .. } | Verdict::NeedsFullDecode { messages }, Some(_)) =
        (&verdict, &decoded)
    {
        let bound = fuzzing::decoded_size(bytes.len(), *messages);
        assert!(
            peak <= bound || !memory_bounds(),
            "prost's decode took {peak} bytes, over the reserved bound {bound} ({messages} messages, {} body bytes)",
            bytes.len()
        );
    }
    let items = decoded
        .as_ref()
        .map(|shape| shape.iter().flatten().map(Vec::len).sum::<usize>());
    for router in routers() {
        let routed = if logs {
            router.logs_protobuf(bytes)
        } else {
            router.traces_protobuf(bytes)
        };
        match (routed, items) {
            (Ok(routed), Some(items)) => check_routed(&routed, items),
            (Err(_), None) => {}
            (Ok(_), None) => panic!("the router accepted what prost refuses"),
            (Err(e), Some(_)) => panic!("the router refused what prost accepts: {e}"),
        }
    }
}

/// What holds for any routed request of `items` items.
pub fn check_routed(routed: &collector_bridge::Routed, items: usize) {
    assert_eq!(routed.received, items as u64, "received count");
    assert!(
        routed.rejected <= routed.received,
        "rejected more than received"
    );
    assert_eq!(
        routed.rejected == 0,
        routed.error_message.is_empty(),
        "a rejection without a reason, or a reason without one"
    );
    let bytes: usize = routed
        .records
        .iter()
        .map(|r| r.value.len() + r.key.len())
        .sum();
    assert!(bytes <= routed.bytes, "records larger than accounted");
    for record in &routed.records {
        assert!(
            record.value.len() + record.key.len() <= MAX_MESSAGE_BYTES,
            "a record of {} bytes, over the limit {MAX_MESSAGE_BYTES}",
            record.value.len() + record.key.len()
        );
    }
}

/// The OTLP/JSON oracle: decoding never panics, stays within the bound the HTTP receiver
/// reserves (the body and [`fuzzing::json_decoded_size`]), and a decoded request routes
/// without panicking and accounts for every item.
pub fn check_json(body: &[u8]) {
    // A body nested too deep is refused before decoding (and before anything is reserved).
    let Some(decoded) = fuzzing::json_decoded_size(body) else {
        return;
    };
    let reserved = body.len().saturating_add(decoded);
    // A refused body allocates its error message; only what decodes is held to the bound.
    let (traces, peak) = peak_of(|| fuzzing::json_traces(body));
    assert!(
        traces.is_err() || peak <= reserved || !memory_bounds(),
        "JSON trace decode took {peak} bytes, over the reserved {reserved}"
    );
    let (logs, peak) = peak_of(|| fuzzing::json_logs(body));
    assert!(
        logs.is_err() || peak <= reserved || !memory_bounds(),
        "JSON logs decode took {peak} bytes, over the reserved {reserved}"
    );
    for router in routers() {
        if let Ok(request) = &traces {
            let items = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            check_routed(&router.traces(request), items);
        }
        if let Ok(request) = &logs {
            let items = request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum();
            check_routed(&router.logs(request), items);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Structure-aware inputs.

/// An id drawn from few values, so that many items share a trace, or from any bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Id {
    /// Absent.
    Empty,
    /// All zero (OTLP's "no id").
    Zero,
    /// `len` copies of one byte: few distinct ids, many collisions.
    Small(u8, u8),
    /// A valid-length id.
    Full([u8; 16]),
    /// Any bytes.
    Raw(Vec<u8>),
}

impl Id {
    fn bytes(&self, len: usize) -> Vec<u8> {
        match self {
            Id::Empty => Vec::new(),
            Id::Zero => vec![0; len],
            Id::Small(n, b) => vec![*b; usize::from(*n % 24)],
            Id::Full(b) => b[..len.min(16)].to_vec(),
            Id::Raw(b) => b.clone(),
        }
    }
}

/// An attribute value, with a way to nest deep.
#[derive(Arbitrary, Debug, Clone)]
pub enum Val {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<Val>),
    Kvs(Vec<Kv>),
    /// The value wrapped in `depth` single-element arrays (past prost's recursion limit when
    /// deep enough).
    Deep(u8, Box<Val>),
}

/// How many messages deep the structured inputs nest values at most (an `arrayValue` level is
/// two: the `AnyValue` and its `ArrayValue`): with the five messages above an attribute, past
/// prost's recursion limit (100) and the JSON receiver's limits (100 messages, 128 arrays and
/// objects: three per `arrayValue` level), and bounded, since encoding costs the square of
/// the depth.
const MAX_NESTING: usize = 112;

impl Val {
    fn any(&self) -> AnyValue {
        self.any_at(0)
    }

    fn any_at(&self, depth: usize) -> AnyValue {
        if depth >= MAX_NESTING {
            return AnyValue::default();
        }
        let value = match self {
            Val::Str(s) => any_value::Value::StringValue(s.clone()),
            Val::Bool(b) => any_value::Value::BoolValue(*b),
            Val::Int(i) => any_value::Value::IntValue(*i),
            Val::Double(d) => any_value::Value::DoubleValue(*d),
            Val::Bytes(b) => any_value::Value::BytesValue(b.clone()),
            Val::Array(v) => any_value::Value::ArrayValue(ArrayValue {
                values: v.iter().map(|v| v.any_at(depth + 2)).collect(),
            }),
            Val::Kvs(kvs) => any_value::Value::KvlistValue(KeyValueList {
                values: kvs.iter().map(|kv| kv.kv_at(depth + 3)).collect(),
            }),
            Val::Deep(levels, inner) => {
                let levels = usize::from(*levels % 128).min(MAX_NESTING.saturating_sub(depth) / 2);
                let mut v = inner.any_at(depth + 2 * levels);
                for _ in 0..levels {
                    v = AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
                    };
                }
                return v;
            }
        };
        AnyValue { value: Some(value) }
    }
}

/// Attribute keys: some the redactor names, some the model reads, any string.
#[derive(Arbitrary, Debug, Clone)]
pub enum Key {
    Password,
    Authorization,
    ServiceName,
    InstanceId,
    ServiceStatus,
    HeartbeatInterval,
    PeerService,
    ApiKeyHeader,
    Other(String),
}

impl Key {
    fn name(&self) -> String {
        match self {
            Key::Password => "db.password".into(),
            Key::Authorization => "http.request.header.authorization".into(),
            Key::ServiceName => "service.name".into(),
            Key::InstanceId => "service.instance.id".into(),
            Key::ServiceStatus => dlog_core::names::SERVICE_STATUS.into(),
            Key::HeartbeatInterval => dlog_core::names::HEARTBEAT_INTERVAL_MS.into(),
            Key::PeerService => dlog_core::names::PEER_SERVICE.into(),
            Key::ApiKeyHeader => "http.request.header.x-api-key".into(),
            Key::Other(s) => s.clone(),
        }
    }
}

/// One attribute.
#[derive(Arbitrary, Debug, Clone)]
pub struct Kv {
    key: Key,
    value: Option<Val>,
}

impl Kv {
    fn kv(&self) -> KeyValue {
        self.kv_at(0)
    }

    fn kv_at(&self, depth: usize) -> KeyValue {
        KeyValue {
            key: self.key.name(),
            value: self.value.as_ref().map(|v| v.any_at(depth + 1)),
            ..Default::default()
        }
    }
}

/// A span or log record.
#[derive(Arbitrary, Debug, Clone)]
pub struct Item {
    trace_id: Id,
    span_id: Id,
    parent: Id,
    name: String,
    attributes: Vec<Kv>,
    event: Event,
    body: Option<Val>,
    times: (u64, u64),
    kind_or_severity: i32,
    status: Option<(i32, String)>,
    events: Vec<(String, Vec<Kv>)>,
    links: Vec<(Id, Id)>,
}

/// A log record's event name.
#[derive(Arbitrary, Debug, Clone)]
pub enum Event {
    None,
    Heartbeat,
    Registration,
    ServiceCall,
    Other(String),
}

impl Event {
    fn name(&self) -> String {
        match self {
            Event::None => String::new(),
            Event::Heartbeat => dlog_core::names::HEARTBEAT_EVENT.into(),
            Event::Registration => dlog_core::names::REGISTRATION_EVENT.into(),
            Event::ServiceCall => dlog_core::names::SERVICE_CALL_EVENT.into(),
            Event::Other(s) => s.clone(),
        }
    }
}

/// One scope entry: the scope (a name and attributes), if any, and its items.
type Scope = (Option<(String, Vec<Kv>)>, Vec<Item>);

/// One resource entry.
#[derive(Arbitrary, Debug, Clone)]
pub struct Res {
    resource: Option<Vec<Kv>>,
    scopes: Vec<Scope>,
    schema_url: String,
    /// Entity references of the resource: a type, and how many id and description key names
    /// (repeated strings: many empty ones are cheap on the wire, not once decoded).
    entities: Vec<(String, u16, u16)>,
}

impl Res {
    fn resource(&self) -> Option<Resource> {
        self.resource.as_ref().map(|a| Resource {
            attributes: kvs(a),
            entity_refs: self
                .entities
                .iter()
                .map(|(kind, ids, descriptions)| EntityRef {
                    r#type: kind.clone(),
                    id_keys: vec![String::new(); usize::from(*ids % 4096)],
                    // As many copies of the type as fit in the body limit.
                    description_keys: vec![
                        kind.clone();
                        usize::from(*descriptions % 256)
                            .min(MAX_BODY / (kind.len() + 2))
                    ],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}

/// An export request.
#[derive(Arbitrary, Debug, Clone)]
pub struct Request {
    resources: Vec<Res>,
    /// Copies of the last resource entry appended (many ids, large requests cheaply).
    repeat_last: u8,
}

fn kvs(kvs: &[Kv]) -> Vec<KeyValue> {
    kvs.iter().map(Kv::kv).collect()
}

impl Request {
    fn entries(&self) -> impl Iterator<Item = &Res> {
        let last = self.resources.last();
        self.resources
            .iter()
            .chain(std::iter::repeat_n(last, usize::from(self.repeat_last % 64)).flatten())
    }

    /// As an `ExportTraceServiceRequest`, or `None` when its encoding would be over
    /// [`MAX_BODY`] (built entry by entry, so that a huge one costs little).
    pub fn traces(&self) -> Option<ExportTraceServiceRequest> {
        Some(ExportTraceServiceRequest {
            resource_spans: within_body(self.entries().map(|r| {
                ResourceSpans {
                    resource: r.resource(),
                    scope_spans: r
                        .scopes
                        .iter()
                        .map(|(scope, items)| ScopeSpans {
                            scope: scope.as_ref().map(|(name, a)| InstrumentationScope {
                                name: name.clone(),
                                attributes: kvs(a),
                                ..Default::default()
                            }),
                            spans: items.iter().map(Item::span).collect(),
                            schema_url: String::new(),
                        })
                        .collect(),
                    schema_url: r.schema_url.clone(),
                }
            }))?,
        })
    }

    /// As an `ExportLogsServiceRequest`, or `None` when its encoding would be over
    /// [`MAX_BODY`].
    pub fn logs(&self) -> Option<ExportLogsServiceRequest> {
        Some(ExportLogsServiceRequest {
            resource_logs: within_body(self.entries().map(|r| {
                ResourceLogs {
                    resource: r.resource(),
                    scope_logs: r
                        .scopes
                        .iter()
                        .map(|(scope, items)| ScopeLogs {
                            scope: scope.as_ref().map(|(name, a)| InstrumentationScope {
                                name: name.clone(),
                                attributes: kvs(a),
                                ..Default::default()
                            }),
                            log_records: items.iter().map(Item::log).collect(),
                            schema_url: String::new(),
                        })
                        .collect(),
                    schema_url: r.schema_url.clone(),
                }
            }))?,
        })
    }
}

/// Collects resource entries while their encoding stays within [`MAX_BODY`]; `None` past it.
fn within_body<M: Message>(entries: impl Iterator<Item = M>) -> Option<Vec<M>> {
    let mut total = 0;
    let mut out = Vec::new();
    for entry in entries {
        total += prost::length_delimiter_len(entry.encoded_len()) + 1 + entry.encoded_len();
        if total > MAX_BODY {
            return None;
        }
        out.push(entry);
    }
    Some(out)
}

impl Item {
    fn span(&self) -> Span {
        Span {
            trace_id: self.trace_id.bytes(16),
            span_id: self.span_id.bytes(8),
            parent_span_id: self.parent.bytes(8),
            name: self.name.clone(),
            kind: self.kind_or_severity,
            start_time_unix_nano: self.times.0,
            end_time_unix_nano: self.times.1,
            attributes: kvs(&self.attributes),
            events: self
                .events
                .iter()
                .map(|(name, a)| span::Event {
                    name: name.clone(),
                    attributes: kvs(a),
                    ..Default::default()
                })
                .collect(),
            links: self
                .links
                .iter()
                .map(|(t, s)| span::Link {
                    trace_id: t.bytes(16),
                    span_id: s.bytes(8),
                    ..Default::default()
                })
                .collect(),
            status: self.status.as_ref().map(|(code, message)| Status {
                code: *code,
                message: message.clone(),
            }),
            ..Default::default()
        }
    }

    fn log(&self) -> LogRecord {
        LogRecord {
            time_unix_nano: self.times.0,
            observed_time_unix_nano: self.times.1,
            severity_number: self.kind_or_severity,
            severity_text: self.name.clone(),
            body: self.body.as_ref().map(Val::any),
            attributes: kvs(&self.attributes),
            trace_id: self.trace_id.bytes(16),
            span_id: self.span_id.bytes(8),
            event_name: self.event.name(),
            ..Default::default()
        }
    }
}

/// A change to encoded bytes, to reach what valid encoders never write.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    Flip(u16, u8),
    /// Overwrite one byte.
    Set(u16, u8),
    /// Remove one byte.
    Remove(u16),
    /// Cut the bytes there.
    Truncate(u16),
    /// Insert bytes.
    Insert(u16, Vec<u8>),
    /// Insert `count` start-group keys of field `tag`, then as many end-groups when `close`.
    Groups {
        at: u16,
        tag: u8,
        count: u16,
        close: bool,
    },
    /// Insert a length-delimited key of field `tag` declaring a huge length.
    HugeLength { at: u16, tag: u8, length: u64 },
    /// Append the first `len` bytes again (a repeated field, e.g. `resource` twice).
    Repeat(u16),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Mutation {
    /// Applies the change to `bytes`.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |i: u16, len: usize| usize::from(i) % (len + 1);
        match self {
            Mutation::Flip(i, bit) => {
                if !bytes.is_empty() {
                    let i = usize::from(*i) % bytes.len();
                    bytes[i] ^= 1 << (bit % 8);
                }
            }
            Mutation::Set(i, v) => {
                if !bytes.is_empty() {
                    let i = usize::from(*i) % bytes.len();
                    bytes[i] = *v;
                }
            }
            Mutation::Remove(i) => {
                if !bytes.is_empty() {
                    let i = usize::from(*i) % bytes.len();
                    bytes.remove(i);
                }
            }
            Mutation::Truncate(i) => {
                let i = at(*i, bytes.len());
                bytes.truncate(i);
            }
            Mutation::Insert(i, ins) => {
                let i = at(*i, bytes.len());
                bytes.splice(i..i, ins.iter().copied());
            }
            Mutation::Groups {
                at: i,
                tag,
                count,
                close,
            } => {
                let i = at(*i, bytes.len());
                let tag = u64::from((*tag).max(1));
                let mut ins = Vec::new();
                // Far past the recursion limit (100), within the body limit.
                let count = usize::from(*count % 2048);
                for _ in 0..count {
                    put_varint(&mut ins, tag << 3 | 3);
                }
                if *close {
                    for _ in 0..count {
                        put_varint(&mut ins, tag << 3 | 4);
                    }
                }
                bytes.splice(i..i, ins);
            }
            Mutation::HugeLength { at: i, tag, length } => {
                let i = at(*i, bytes.len());
                let mut ins = Vec::new();
                put_varint(&mut ins, u64::from((*tag).max(1)) << 3 | 2);
                put_varint(&mut ins, *length);
                bytes.splice(i..i, ins);
            }
            Mutation::Repeat(len) => {
                let len = usize::from(*len) % (bytes.len() + 1);
                let head = bytes[..len].to_vec();
                bytes.extend_from_slice(&head);
            }
        }
    }
}
