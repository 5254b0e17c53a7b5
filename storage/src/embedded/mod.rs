//! The embedded store: SQLite files in one directory, no server to run.
//!
//! Layout (schema version [`SCHEMA_VERSION`], see `docs/storage.md`):
//!
//! * `dlog.sqlite3`, the shared database: the string dictionary (attribute keys, service,
//!   operation, scope and level names; the names listed apart, outside the dictionary cap),
//!   resources (one row per distinct service instance resource), operations, the service
//!   registry and alerts;
//! * `partitions/YYYY-MM-DD.sqlite3`, one database per UTC day, chosen from the record's time
//!   clamped to the partition window: spans, trace summaries (one row per trace, kept up to
//!   date as spans arrive), a per-trace attribute index with dictionary-coded keys and typed
//!   values, dependency edges resolved at write time, logs with a trigram FTS5 index, and
//!   heartbeats. Retention deletes whole partition files.
//!
//! Ids are stored as bytes, bodies in a compact binary encoding (deflate when large). Writes
//! are idempotent: spans replace by (trace, span id), logs are found again by their identity
//! hash, and trace summaries are recomputed from the trace's stored span columns, so a replay
//! never counts twice.

mod codec;
mod packs;
mod postings;
mod schema;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use dlog_core::model::{
    Heartbeat, LogEntry, ServiceInfo, SpanEvent, SpanKind, SpanLink, SpanRecord, StatusCode,
};
use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{
    effective_limit, sort_spans, AlertDoc, AlertQuery, AlertStore, Backend, DeclaredDependency,
    Dependencies, DependencyEdge, DependencyReader, Document, InstanceStatus, LogOrder, LogQuery,
    LogReader, Operation, PartitionUsage, RegistryEntry, Retention, RetentionPolicy,
    RetentionReport, SpanCursor, SpanWriter, StatusQuery, StatusReader, StoreError, StoreUsage,
    TimeRange, TimeWindow, TraceQuery, TraceReader, TraceSummary, WriteOutcome,
};
use codec::{id_text, id_value, Dec, Enc};
pub use schema::SCHEMA_VERSION;
use schema::{day_name, day_of, parse_day, DAY_NS, KEY_OPERATION, KEY_RESOURCE};

/// The maps of the write and read paths, keyed by ids, names and values from the senders:
/// foldhash (randomly seeded per map) instead of SipHash, which took about a tenth of the
/// write path's time in a profile of the store benchmark.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;

/// File name of the shared database inside the store's directory.
pub const DB_FILE: &str = "dlog.sqlite3";
/// Directory of the day partitions inside the store's directory.
pub const PARTITIONS_DIR: &str = "partitions";
/// Where a store of the first layout is moved while it is migrated.
pub const V1_FILE: &str = "dlog.v1.sqlite3";

/// Reader connection sets kept next to the single writer (WAL lets them read concurrently).
const READERS: usize = 2;
/// Partition connections the writer keeps open.
const WRITER_PARTITIONS: usize = 16;
/// Day partitions each reader connection set keeps open at least (least recently used closed
/// first, reopened on demand), so that many days neither exhaust file descriptors nor look
/// missing; more when the open-files limit allows, see [`reader_partitions`].
pub const READER_PARTITIONS: usize = 64;
/// Day partitions each reader connection set keeps open at most.
pub const MAX_READER_PARTITIONS: usize = 256;
/// At most this many connections to day partition files are open per store: the writer's and
/// every reader set's.
pub const MAX_OPEN_PARTITIONS: usize = WRITER_PARTITIONS + READERS * MAX_READER_PARTITIONS;

/// Day partitions each reader connection set keeps open: as many as let every connection of a
/// store (three descriptors each: the file, its `-wal` and `-shm`) take at most a quarter of
/// the process's open-files limit, between [`READER_PARTITIONS`] and
/// [`MAX_READER_PARTITIONS`], so that a retention of three months does not reopen every day's
/// file for every query.
pub fn reader_partitions() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        #[cfg(unix)]
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        #[cfg(not(unix))]
        let nofile = 0u64;
        let connections = usize::try_from(nofile / 4 / 3).unwrap_or(usize::MAX);
        (connections.saturating_sub(WRITER_PARTITIONS) / READERS)
            .clamp(READER_PARTITIONS, MAX_READER_PARTITIONS)
    })
}
/// How often a reader set checks its open partitions for deletion by another store.
const READER_SWEEP: Duration = Duration::from_secs(1);
/// Trace ids whose partition the writer remembers, so later spans join their trace.
const RECENT_TRACES: usize = 1 << 20;
/// Spans one trace may hold in one partition; more are rejected with a message.
pub const MAX_TRACE_SPANS: usize = 100_000;
/// Attribute filters one trace search may have.
pub const MAX_ATTRIBUTE_FILTERS: usize = 64;

/// Trace parts marked open that a search with a minimum duration reads, newest first, to find
/// traces lasting long enough only as a whole (bounds the work of one search).
const MAX_OPEN_CANDIDATES: usize = 10_000;
/// Trigrams of a log text query looked up in the index (the match is then checked in full).
const MAX_TRIGRAMS: usize = 12;

fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unavailable(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("embedded store at {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The catalog: dictionary strings and resources, shared by the writer and the readers.

#[derive(Clone)]
struct Resource {
    info: Arc<ServiceInfo>,
    service: i64,
}

#[derive(Default)]
struct Catalog {
    strings: HashMap<i64, Arc<str>>,
    string_ids: HashMap<Arc<str>, i64>,
    resources: HashMap<i64, Resource>,
    resource_ids: HashMap<u128, i64>,
    max_string: i64,
    max_resource: i64,
    /// Dictionary entries that are service, operation, scope or level names (outside the
    /// cap on attribute keys and values).
    names: usize,
    max_name: i64,
}

/// The message of an id the catalog does not hold.
const NOT_IN_DICTIONARY: &str = "not in the dictionary";
/// The message of a resource id the catalog does not hold.
const NOT_IN_RESOURCES: &str = "not in the resource table";

/// How many times a read that met ids its catalog did not hold loads the catalog again and
/// reads again, while each load finds new entries.
const CATALOG_RELOADS: usize = 8;

/// A dictionary or resource id the catalog did not hold.
fn is_catalog_miss(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt { message, .. }
        if message == NOT_IN_DICTIONARY || message == NOT_IN_RESOURCES)
}

impl Catalog {
    fn string(&self, id: i64) -> Result<&str, StoreError> {
        self.strings
            .get(&id)
            .map(|s| &**s)
            .ok_or_else(|| StoreError::Corrupt {
                id: format!("string {id}"),
                message: NOT_IN_DICTIONARY.into(),
            })
    }

    fn resource(&self, id: i64) -> Result<&Resource, StoreError> {
        self.resources.get(&id).ok_or_else(|| StoreError::Corrupt {
            id: format!("resource {id}"),
            message: NOT_IN_RESOURCES.into(),
        })
    }

    fn add_string(&mut self, id: i64, text: &str) {
        let text: Arc<str> = Arc::from(text);
        self.strings.insert(id, Arc::clone(&text));
        self.string_ids.insert(text, id);
        self.max_string = self.max_string.max(id);
    }

    fn add_name(&mut self, id: i64) {
        if id > self.max_name {
            self.names += 1;
            self.max_name = id;
        }
    }

    /// Dictionary entries counted against the cap: attribute keys and values.
    fn attribute_entries(&self) -> usize {
        self.strings.len().saturating_sub(self.names)
    }

    fn add_resource(&mut self, id: i64, hash: u128, service: i64, info: ServiceInfo) {
        self.resources.insert(
            id,
            Resource {
                info: Arc::new(info),
                service,
            },
        );
        self.resource_ids.insert(hash, id);
        self.max_resource = self.max_resource.max(id);
    }

    /// Loads what other connections added since the last load.
    fn load_new(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
        let mut stmt = conn
            .prepare_cached("SELECT id, text FROM strings WHERE id > ?1 ORDER BY id")
            .map_err(err)?;
        let rows = stmt
            .query_map([self.max_string], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        for (id, text) in rows {
            self.add_string(id, &text);
        }
        let mut stmt = conn
            .prepare_cached("SELECT id FROM names WHERE id > ?1 ORDER BY id")
            .map_err(err)?;
        let rows = stmt
            .query_map([self.max_name], |r| r.get::<_, i64>(0))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        for id in rows {
            self.add_name(id);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, hash, service, doc FROM resources WHERE id > ?1 ORDER BY id",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([self.max_resource], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        for (id, hash, service, doc) in rows {
            let info: ServiceInfo = parse(&format!("resource {id}"), &doc)?;
            let hash = u128::from_le_bytes(hash.try_into().map_err(|_| StoreError::Corrupt {
                id: format!("resource {id}"),
                message: "bad hash".into(),
            })?);
            self.add_resource(id, hash, service, info);
        }
        Ok(())
    }

    /// Resources whose service is `name`.
    fn resources_of(&self, name: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .resources
            .iter()
            .filter(|(_, r)| r.info.name == name)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Resources with attribute `key` equal to `value` (as text).
    fn resources_with(&self, key: &str, value: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .resources
            .iter()
            .filter(|(_, r)| resource_matches(&r.info, key, value))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// A resource's service name and instance id.
type InstanceKey<'a> = (&'a str, Option<&'a str>);

/// The resource hashes of a batch, each distinct resource hashed once: the records of a batch
/// come from a few service instances, and hashing a resource serializes it.
#[derive(Default)]
struct ResourceHashes<'a> {
    /// (service name, instance id) → the resources seen with them, and their hashes.
    seen: HashMap<InstanceKey<'a>, Vec<(&'a ServiceInfo, u128)>>,
}

impl<'a> ResourceHashes<'a> {
    /// Distinct resources with the same name and instance kept per batch, past which the
    /// rest are hashed each time (a sender varying other resource attributes per record).
    const PER_INSTANCE: usize = 8;

    fn of(&mut self, info: &'a ServiceInfo) -> u128 {
        let same = self
            .seen
            .entry((info.name.as_str(), info.instance_id.as_deref()))
            .or_default();
        if let Some((_, hash)) = same.iter().find(|(known, _)| *known == info) {
            return *hash;
        }
        let hash = resource_hash(info);
        if same.len() < Self::PER_INSTANCE {
            same.push((info, hash));
        }
        hash
    }
}

/// The hash a resource is stored under: xxh3-128 of its JSON, streamed into the hasher.
fn resource_hash(info: &ServiceInfo) -> u128 {
    struct Hashing(xxhash_rust::xxh3::Xxh3);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(xxhash_rust::xxh3::Xxh3::new());
    if serde_json::to_writer(&mut h, info).is_err() {
        // As the hash of the empty serialization it stood for before.
        return xxhash_rust::xxh3::xxh3_128(b"");
    }
    h.0.digest128()
}

/// An attribute value compared as text: strings as they are, anything else as JSON.
fn text_eq(v: &Value, text: &str) -> bool {
    match v {
        Value::String(s) => s == text,
        other => {
            let rendered = other.to_string();
            rendered == text
        }
    }
}

fn resource_matches(info: &ServiceInfo, key: &str, value: &str) -> bool {
    match key {
        "service.name" => info.name == value,
        "service.version" => info.version.as_deref() == Some(value),
        "service.instance.id" => info.instance_id.as_deref() == Some(value),
        _ => info.attributes.get(key).is_some_and(|v| text_eq(v, value)),
    }
}

/// Text longer than this is indexed by a 64-bit hash (the match is then checked in full).
const INDEX_TEXT_MAX: usize = 16;

/// How a text is indexed: itself, or the hash of a long one.
fn index_text(t: String) -> Sql {
    if t.len() > INDEX_TEXT_MAX {
        Sql::Integer(xxhash_rust::xxh3::xxh3_64(t.as_bytes()) as i64)
    } else {
        Sql::Text(t)
    }
}

/// The value an attribute is indexed under: integers and floats natively, everything else
/// as its text (so `true`, `"true"` and `["a"]` are found by the text the user types).
fn index_value(v: &Value) -> Sql {
    match v {
        Value::String(s) => index_text(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Sql::Integer(i),
            (None, Some(f)) if n.as_u64().is_none() => Sql::Real(f),
            _ => index_text(n.to_string()),
        },
        other => index_text(other.to_string()),
    }
}

/// Every indexed value that an attribute compared as `text` could have been stored as.
fn index_candidates(text: &str) -> Vec<Sql> {
    let mut out = vec![index_text(text.to_string())];
    if let Ok(i) = text.parse::<i64>() {
        if i.to_string() == text {
            out.push(Sql::Integer(i));
        }
    } else if let Ok(f) = text.parse::<f64>() {
        if serde_json::Number::from_f64(f).is_some_and(|n| n.to_string() == text) {
            out.push(Sql::Real(f));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Span and log bodies.

fn kind_code(k: SpanKind) -> i64 {
    match k {
        SpanKind::Unspecified => 0,
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn kind_of(code: i64) -> SpanKind {
    match code & 7 {
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

fn flags(s: &SpanRecord) -> i64 {
    let status = match s.status {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    };
    kind_code(s.kind) | (status << 3)
}

fn status_of(flags: i64) -> StatusCode {
    match (flags >> 3) & 3 {
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => StatusCode::Unset,
    }
}

fn is_error_flag(flags: i64) -> bool {
    status_of(flags) == StatusCode::Error
}

fn corrupt(what: &str) -> impl Fn(codec::Corrupt) -> StoreError + '_ {
    move |e| StoreError::Corrupt {
        id: what.to_string(),
        message: e.to_string(),
    }
}

/// Values of attributes at most this long may be dictionary-coded.
const INTERN_MAX_LEN: usize = 48;
/// New dictionary values one attribute key may add per process run (low cardinality only).
const INTERN_PER_KEY: u32 = 64;
/// New dictionary values per process run, over every key.
const INTERN_TOTAL: u32 = 200_000;

fn put_attrs(e: &mut Enc, attrs: &dlog_core::model::Attributes, ids: &dyn Fn(&str) -> i64) {
    e.u64(attrs.len() as u64);
    for (k, v) in attrs {
        match ids(k) {
            // A key the dictionary has no room for is written out (id 0 is never used).
            0 => {
                e.u64(0);
                e.str(k);
            }
            id => e.u64(id as u64),
        }
        match v {
            // A string the dictionary holds is written as its id.
            Value::String(s) if s.len() <= INTERN_MAX_LEN && ids(s) > 0 => {
                e.buf.push(codec::DICT);
                e.u64(ids(s) as u64);
            }
            _ => e.value(v),
        }
    }
}

fn get_attrs(d: &mut Dec<'_>, cat: &Catalog) -> Result<dlog_core::model::Attributes, StoreError> {
    let n = d.u64().map_err(corrupt("attributes"))?;
    let mut out = dlog_core::model::Attributes::new();
    for _ in 0..n {
        let k = d.u64().map_err(corrupt("attribute key"))? as i64;
        let key = match k {
            0 => d.str().map_err(corrupt("attribute key"))?,
            k => cat.string(k)?.to_string(),
        };
        let v = if d.peek() == Some(codec::DICT) {
            d.skip(1);
            let id = d.u64().map_err(corrupt("attribute value"))? as i64;
            Value::String(cat.string(id)?.to_string())
        } else {
            d.value().map_err(corrupt("attribute value"))?
        };
        out.insert(key, v);
    }
    Ok(out)
}

/// What a span's body holds (the rest is in its row's columns).
/// A resource that found no room in the resources table is written out at the end of the
/// record's body (as JSON); bodies without it end before.
fn put_resource(e: &mut Enc, inline: Option<&ServiceInfo>) {
    if let Some(info) = inline {
        e.str(&serde_json::to_string(info).unwrap_or_default());
    }
}

/// The resource written out at the end of a body, if any; else the row's resource.
fn get_resource(d: &mut Dec<'_>, cat: &Catalog, resource: i64) -> Result<ServiceInfo, StoreError> {
    if d.remaining() > 0 {
        let json = d.str().map_err(corrupt("resource"))?;
        return parse("resource written out", &json);
    }
    Ok((*cat.resource(resource)?.info).clone())
}

/// The name under which a record whose service, operation, scope or level name found no room
/// in the dictionary (`max_names`), or was longer than [`MAX_NAME_BYTES`], is indexed; the
/// record keeps its own names in its body.
pub const NAMES_FULL: &str = "(names full)";

/// Longest name (service, operation, scope, level) or attribute key the dictionary takes:
/// the dictionary's memory is bounded by its entries times this. A longer one is written out
/// with its record (a name indexed under [`NAMES_FULL`], a key not indexed).
pub const MAX_NAME_BYTES: usize = 512;

/// Largest resource (as JSON) the resources table takes; a larger one is written out with
/// each record and indexed under its service's stand-in, as past `max_resources`.
const MAX_RESOURCE_BYTES: usize = 16 * 1024;

/// A record's names that found no room in the dictionary, written out after its resource
/// (which is then always written out too, so that the two are told apart by position).
#[derive(Debug, Default, Serialize, Deserialize)]
struct InlineNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<String>,
}

impl InlineNames {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.scope.is_none() && self.level.is_none()
    }
}

/// Writes the resource out when it found no room, or when names follow it.
fn put_resource_and_names(
    e: &mut Enc,
    inline: Option<&ServiceInfo>,
    own: &ServiceInfo,
    names: &InlineNames,
) {
    if names.is_empty() {
        put_resource(e, inline);
        return;
    }
    put_resource(e, Some(inline.unwrap_or(own)));
    e.str(&serde_json::to_string(names).unwrap_or_default());
}

/// The names written out after the resource, if any.
fn get_names(d: &mut Dec<'_>) -> Result<InlineNames, StoreError> {
    if d.remaining() == 0 {
        return Ok(InlineNames::default());
    }
    let json = d.str().map_err(corrupt("names"))?;
    parse("names written out", &json)
}

fn span_body(
    s: &SpanRecord,
    ids: &dyn Fn(&str) -> i64,
    inline: Option<&ServiceInfo>,
    names: &InlineNames,
) -> Vec<u8> {
    let mut e = Enc::default();
    let scope = match ids(&s.scope) {
        0 => ids(NAMES_FULL),
        id => id,
    };
    e.u64(scope as u64);
    e.str(&s.status_message);
    put_attrs(&mut e, &s.attributes, ids);
    e.u64(s.events.len() as u64);
    for ev in &s.events {
        e.str(&ev.name);
        e.i64(ns(ev.time_unix_nano).wrapping_sub(ns(s.start_unix_nano)));
        put_attrs(&mut e, &ev.attributes, ids);
    }
    e.u64(s.links.len() as u64);
    for l in &s.links {
        codec::put_id(&mut e, &l.trace_id);
        codec::put_id(&mut e, &l.span_id);
    }
    put_resource_and_names(&mut e, inline, &s.service, names);
    e.finish()
}

/// The stored columns of one span.
#[derive(Clone)]
struct SpanCols {
    span_id: String,
    start: i64,
    duration: i64,
    parent: Option<String>,
    resource: i64,
    op: i64,
    flags: i64,
}

fn read_cols(r: &rusqlite::Row<'_>) -> rusqlite::Result<SpanCols> {
    Ok(SpanCols {
        span_id: id_text(r.get_ref(0)?).unwrap_or_default(),
        start: r.get(1)?,
        duration: r.get(2)?,
        parent: id_text(r.get_ref(3)?),
        resource: r.get(4)?,
        op: r.get(5)?,
        flags: r.get(6)?,
    })
}

const SPAN_COLS: &str = "span_id, start_ns, duration_ns, parent, resource, op, flags";

fn decode_span(
    trace_id: &str,
    cols: &SpanCols,
    body: &[u8],
    cat: &Catalog,
) -> Result<SpanRecord, StoreError> {
    let what = format!("{trace_id}{}", cols.span_id);
    let raw = codec::open_body(body).map_err(corrupt(&what))?;
    let mut d = Dec::new(&raw);
    let c = corrupt(&what);
    let scope = cat.string(d.u64().map_err(&c)? as i64)?.to_string();
    let status_message = d.str().map_err(&c)?;
    let attributes = get_attrs(&mut d, cat)?;
    let n = d.u64().map_err(&c)?;
    let mut events = Vec::new();
    for _ in 0..n {
        let name = d.str().map_err(&c)?;
        let time = cols.start.wrapping_add(d.i64().map_err(&c)?);
        events.push(SpanEvent {
            name,
            time_unix_nano: time as u64,
            attributes: get_attrs(&mut d, cat)?,
        });
    }
    let n = d.u64().map_err(&c)?;
    let mut links = Vec::new();
    for _ in 0..n {
        links.push(SpanLink {
            trace_id: codec::get_id(&mut d).map_err(&c)?,
            span_id: codec::get_id(&mut d).map_err(&c)?,
        });
    }
    let service = get_resource(&mut d, cat, cols.resource)?;
    let names = get_names(&mut d)?;
    let name = match names.name {
        Some(name) => name,
        None => cat.string(cols.op)?.to_string(),
    };
    Ok(SpanRecord {
        trace_id: trace_id.to_string(),
        span_id: cols.span_id.clone(),
        parent_span_id: cols.parent.clone(),
        name,
        kind: kind_of(cols.flags),
        start_unix_nano: cols.start as u64,
        end_unix_nano: cols.start.wrapping_add(cols.duration) as u64,
        status: status_of(cols.flags),
        status_message,
        service,
        scope: names.scope.unwrap_or(scope),
        attributes,
        events,
        links,
    })
}

fn log_rest(
    l: &LogEntry,
    ids: &dyn Fn(&str) -> i64,
    inline: Option<&ServiceInfo>,
    names: &InlineNames,
) -> Vec<u8> {
    let mut e = Enc::default();
    e.opt_str(l.span_id.as_deref());
    e.opt_str(l.event_name.as_deref());
    put_attrs(&mut e, &l.attributes, ids);
    put_resource_and_names(&mut e, inline, &l.service, names);
    e.finish()
}

// ---------------------------------------------------------------------------------------
// The writer.

struct Writer {
    shared: Connection,
    /// Open day partitions with the file each opened.
    parts: HashMap<i64, (Connection, FileId)>,
    /// Partition use order, for closing the least recently used.
    part_use: Vec<i64>,
    known_operations: HashSet<(String, String, String)>,
    /// (service, operation, kind code) ids of operations in `known_operations`.
    known_op_ids: HashSet<(i64, i64, i64)>,
    /// Trace id → the day partition holding it.
    recent: HashMap<String, i64>,
    /// Distinct values dictionary-coded per attribute key in this run.
    value_counts: HashMap<String, u32>,
    /// Values dictionary-coded in this run.
    interned: u32,
    /// Days before this one were dropped for age: writes for them are acknowledged and
    /// dropped with their day.
    expired_before: Option<i64>,
    /// Most distinct dictionary entries: past it, new attribute keys and values are not
    /// added (their attributes are stored inline and not indexed).
    max_dictionary_entries: usize,
    /// The dictionary-full warning was logged.
    warned_full: bool,
    /// Most distinct resources: past it, a record with a new resource is stored with its
    /// resource written out in its body, and indexed under its service's stand-in resource.
    max_resources: usize,
    /// The resources-full warning was logged.
    warned_resources_full: bool,
    /// Most distinct names (service, operation, scope, level) and operation list entries.
    max_names: usize,
    /// The names-full warning was logged.
    warned_names_full: bool,
}

/// Settings the store was opened with.
struct Ctx {
    dir: PathBuf,
    window: TimeWindow,
    catalog: Arc<RwLock<Catalog>>,
}

impl Ctx {
    fn part_path(&self, day: i64) -> PathBuf {
        self.dir
            .join(PARTITIONS_DIR)
            .join(format!("{}.sqlite3", day_name(day)))
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL: readers never block the writer; synchronous=FULL makes every committed batch
    // survive a power loss, since the stage acknowledges Kafka offsets right after.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Creates a partition file atomically: built under a temporary name, then renamed, so a
/// reader never opens a half-made one.
fn create_partition(path: &Path) -> rusqlite::Result<()> {
    let tmp = path.with_extension("creating");
    let _ = std::fs::remove_file(&tmp);
    {
        let conn = Connection::open(&tmp)?;
        // Before any table: the pages a packing pass frees can be given back in steps
        // (`incremental_vacuum`) by the writer, instead of a whole-file VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(&format!(
            "BEGIN; {} {} {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
            schema::PARTITION,
            schema::POSTINGS,
            schema::LOG_PACKS
        ))?;
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot create partition {}: {e}", path.display())),
        )
    })
}

fn check_version(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let v: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(unavailable(path))?;
    if v != SCHEMA_VERSION {
        return Err(StoreError::Embedded {
            path: path.display().to_string(),
            message: format!(
                "schema version {v}, but this build of dlog reads version {SCHEMA_VERSION}: \
                 open it with the dlog release that wrote it, or move the directory away to \
                 start an empty store"
            ),
        });
    }
    Ok(())
}

impl Writer {
    fn partition(&mut self, ctx: &Ctx, day: i64) -> Result<&mut Connection, StoreError> {
        let path = ctx.part_path(day);
        if self
            .parts
            .get(&day)
            .is_some_and(|(_, id)| file_id(&path) != Some(*id))
        {
            // Dropped by another store's retention (and perhaps created again by a later
            // write): writing on would write into a deleted file, lost at close.
            self.close_partition(day);
        }
        if !self.parts.contains_key(&day) {
            let err = unavailable(&path);
            if !path.exists() {
                create_partition(&path).map_err(&err)?;
            }
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(&err)?;
            configure(&conn).map_err(&err)?;
            // 32 MiB of page cache: the trace-id index and the logs' trace and span indexes
            // take inserts all over a day's file (ids are random).
            conn.pragma_update(None, "cache_size", -32_768)
                .map_err(&err)?;
            check_version(&conn, &path)?;
            let id = file_id(&path).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "embedded store at {}: the partition file vanished while opened",
                    path.display()
                ))
            })?;
            if self.parts.len() >= WRITER_PARTITIONS {
                if let Some(oldest) = self.part_use.first().copied() {
                    self.parts.remove(&oldest);
                    self.part_use.retain(|d| *d != oldest);
                }
            }
            self.parts.insert(day, (conn, id));
        }
        self.part_use.retain(|d| *d != day);
        self.part_use.push(day);
        Ok(self
            .parts
            .get_mut(&day)
            .map(|(conn, _)| conn)
            .expect("just opened"))
    }

    fn close_partition(&mut self, day: i64) {
        self.parts.remove(&day);
        self.part_use.retain(|d| *d != day);
    }
}

/// New dictionary strings and resources of one batch, written in the shared transaction
/// and added to the catalog once it committed.
struct Interner<'a> {
    cat: &'a Catalog,
    value_counts: &'a mut HashMap<String, u32>,
    interned: &'a mut u32,
    strings: Vec<(i64, String)>,
    string_ids: HashMap<String, i64>,
    /// New strings of this batch that are names, not attribute keys or values.
    names: Vec<i64>,
    resources: Vec<(i64, u128, i64, ServiceInfo)>,
    resource_ids: HashMap<u128, i64>,
    /// Most distinct attribute keys and values in the dictionary (names are not counted).
    max_entries: usize,
    /// Attributes left out of the dictionary, and so out of the index, in this batch.
    unindexed: u64,
    /// Most distinct resources in the resources table (stand-ins of services not counted).
    max_resources: usize,
    /// Records of this batch whose resource found no room.
    unindexed_resources: u64,
    /// Most distinct names (service, operation, scope, level) in the dictionary.
    max_names: usize,
    /// Records of this batch with a name that found no room.
    unindexed_names: u64,
}

impl<'a> Interner<'a> {
    fn new(
        cat: &'a Catalog,
        value_counts: &'a mut HashMap<String, u32>,
        interned: &'a mut u32,
        max_entries: usize,
        max_resources: usize,
        max_names: usize,
    ) -> Self {
        Interner {
            cat,
            value_counts,
            interned,
            strings: Vec::new(),
            string_ids: HashMap::default(),
            names: Vec::new(),
            resources: Vec::new(),
            resource_ids: HashMap::default(),
            max_entries,
            unindexed: 0,
            max_resources,
            unindexed_resources: 0,
            max_names,
            unindexed_names: 0,
        }
    }

    /// True when the dictionary holds its most attribute keys and values. Names (service,
    /// operation, scope, level) do not count: span names built from URLs must not use up the
    /// budget of legitimate attribute keys.
    fn full(&self) -> bool {
        self.cat.attribute_entries() + self.strings.len() - self.names.len() >= self.max_entries
    }

    /// Interns a service, operation, scope or level name while the names have room; past
    /// `max_names` a new name is not added and the id of [`NAMES_FULL`] (added even then, once)
    /// is returned: [`Self::lookup`] of the name stays 0, so that the record writes it out.
    fn name(&mut self, s: &str) -> i64 {
        let known = self.lookup(s);
        if known > 0 {
            return known;
        }
        if (self.cat.names + self.names.len() >= self.max_names || s.len() > MAX_NAME_BYTES)
            && s != NAMES_FULL
        {
            return self.name(NAMES_FULL);
        }
        let before = self.strings.len();
        let id = self.string(s);
        if self.strings.len() > before {
            self.names.push(id);
        }
        id
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(id) = self
            .cat
            .string_ids
            .get(s)
            .or_else(|| self.string_ids.get(s))
        {
            return *id;
        }
        let id = self.cat.max_string + self.strings.len() as i64 + 1;
        self.strings.push((id, s.to_string()));
        self.string_ids.insert(s.to_string(), id);
        id
    }

    /// The id a record is indexed under for `name`: its own, or [`NAMES_FULL`]'s when it found
    /// no room, with the name to write out then.
    fn indexed_name(&self, name: &str) -> (i64, Option<String>) {
        match self.lookup(name) {
            0 => (self.lookup(NAMES_FULL), Some(name.to_string())),
            id => (id, None),
        }
    }

    fn lookup(&self, s: &str) -> i64 {
        self.cat
            .string_ids
            .get(s)
            .or_else(|| self.string_ids.get(s))
            .copied()
            .unwrap_or(0)
    }

    /// The resource id and service name id of a record's resource, and whether the resource
    /// found no room (then the id is its service's stand-in: a resource of the name alone,
    /// added even past the cap, one per service name, as a span's service is its resource's;
    /// the record keeps its resource in its body).
    fn resource(&mut self, info: &ServiceInfo, hash: u128) -> (i64, i64, bool) {
        let service = self.name(&info.name);
        if self.lookup(&info.name) == 0 {
            // The service's name found no room: indexed under the names-full stand-in, the
            // record writes its resource out.
            let standin = ServiceInfo {
                name: NAMES_FULL.to_string(),
                ..Default::default()
            };
            let (id, _, _) = self.add_resource(&standin, resource_hash(&standin), service);
            return (id, service, true);
        }
        if let Some(id) = self
            .cat
            .resource_ids
            .get(&hash)
            .or_else(|| self.resource_ids.get(&hash))
        {
            return (*id, service, false);
        }
        let standin = ServiceInfo {
            name: info.name.clone(),
            ..Default::default()
        };
        let full = self.cat.resources.len() + self.resources.len() >= self.max_resources
            || serde_json::to_vec(info).map_or(true, |json| json.len() > MAX_RESOURCE_BYTES);
        if full && *info != standin {
            self.unindexed_resources += 1;
            let (id, service, _) = self.add_resource(&standin, resource_hash(&standin), service);
            return (id, service, true);
        }
        self.add_resource(info, hash, service)
    }

    fn add_resource(&mut self, info: &ServiceInfo, hash: u128, service: i64) -> (i64, i64, bool) {
        if let Some(id) = self
            .cat
            .resource_ids
            .get(&hash)
            .or_else(|| self.resource_ids.get(&hash))
        {
            return (*id, service, false);
        }
        let id = self.cat.max_resource + self.resources.len() as i64 + 1;
        self.resources.push((id, hash, service, info.clone()));
        self.resource_ids.insert(hash, id);
        (id, service, false)
    }

    /// Interns the keys, and the string values of keys seen with few distinct values, while
    /// the dictionary has room; an attribute whose key finds none is counted as unindexed.
    fn attr_keys(&mut self, attrs: &dlog_core::model::Attributes) {
        for (k, v) in attrs {
            if self.lookup(k) == 0 {
                if self.full() || k.len() > MAX_NAME_BYTES {
                    self.unindexed += 1;
                    continue;
                }
                self.string(k);
            }
            let Value::String(v) = v else {
                continue;
            };
            if v.len() > INTERN_MAX_LEN || self.lookup(v) > 0 || self.full() {
                continue;
            }
            let seen = self.value_counts.entry(k.clone()).or_insert(0);
            if *seen < INTERN_PER_KEY && *self.interned < INTERN_TOTAL {
                *seen += 1;
                *self.interned += 1;
                self.string(v);
            }
        }
    }
}

/// A span encoded for its partition.
struct SpanRow {
    doc: usize,
    cols: SpanCols,
    service: i64,
    body: Vec<u8>,
    index: Vec<(i64, Sql)>,
}

struct TraceGroup {
    trace_id: String,
    day: i64,
    spans: Vec<SpanRow>,
}

struct LogRow {
    doc_id: String,
    time: i64,
    resource: i64,
    level: i64,
    severity: i64,
    trace_id: Option<Sql>,
    span_id: Option<Sql>,
    body: String,
    rest: Vec<u8>,
}

struct HeartbeatRow {
    id: String,
    time: i64,
    doc: String,
}

#[derive(Default)]
struct DayRows {
    traces: Vec<TraceGroup>,
    logs: Vec<LogRow>,
    heartbeats: Vec<HeartbeatRow>,
}

/// Writes a batch: the shared transaction (dictionary, resources, operations, registry)
/// commits first, so that no partition row ever names an id the dictionary lacks; then one
/// transaction per day partition.
fn write_docs(
    w: &mut Writer,
    ctx: &Ctx,
    docs: &[Document],
    now: u64,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let shared_err = unavailable(&ctx.dir);
    let mut outcomes = vec![WriteOutcome::Written; docs.len()];
    let day_of_time = |t: u64| day_of(ctx.window.clamp(t, now));
    let expired_before = w.expired_before;
    let live = move |day: i64| expired_before.is_none_or(|e| day >= e);

    // The partition of each trace of the batch: a trace stays in the partition that holds it
    // already (the day of its first span, or a neighbouring day it was found in), so its
    // summary and edges are complete. Chosen before the shared transaction, which records
    // each partition's time bounds.
    let mut trace_day: HashMap<&str, i64> = HashMap::default();
    for doc in docs {
        if let Document::Span(s) = doc {
            let day = day_of_time(s.start_unix_nano);
            trace_day
                .entry(s.trace_id.as_str())
                .and_modify(|d| *d = (*d).min(day))
                .or_insert(day);
        }
    }
    // The days whose partition file was missing, looked up once per batch (a file found is
    // looked up again: retention may drop it meanwhile).
    let mut missing: HashSet<i64> = HashSet::default();
    for (trace_id, day) in trace_day.iter_mut() {
        if let Some(known) = w.recent.get(*trace_id) {
            *day = *known;
            continue;
        }
        for candidate in [*day, *day - 1, *day + 1] {
            if missing.contains(&candidate) || !ctx.part_path(candidate).exists() {
                missing.insert(candidate);
                continue;
            }
            let conn = w.partition(ctx, candidate)?;
            let found = conn
                .prepare_cached("SELECT 1 FROM traces WHERE trace_id = ?1")
                .and_then(|mut s| s.exists([id_value(trace_id)]))
                .map_err(unavailable(&ctx.part_path(candidate)))?;
            if found {
                *day = candidate;
                break;
            }
        }
    }
    // Per day written, the earliest and latest record time.
    let mut bounds: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
    let mut widen = |day: i64, t: u64| {
        if live(day) {
            let t = ns(t);
            let b = bounds.entry(day).or_insert((t, t));
            *b = (b.0.min(t), b.1.max(t));
        }
    };
    for doc in docs {
        match doc {
            Document::Span(s) => widen(trace_day[s.trace_id.as_str()], s.start_unix_nano),
            Document::Log(l) => widen(day_of_time(l.time_unix_nano), l.time_unix_nano),
            Document::Heartbeat(h) => widen(day_of_time(h.time_unix_nano), h.time_unix_nano),
        }
    }

    let mut by_day: std::collections::BTreeMap<i64, DayRows> = Default::default();
    let mut groups: Vec<TraceGroup> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::default();
    let max_entries = w.max_dictionary_entries;
    let (new_strings, new_names, new_resources, (unindexed, unindexed_resources, unindexed_names)) = {
        let cat = ctx.catalog();
        let mut it = Interner::new(
            &cat,
            &mut w.value_counts,
            &mut w.interned,
            max_entries,
            w.max_resources,
            w.max_names,
        );
        let tx = w
            .shared
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&shared_err)?;
        // Operations and their ids listed by this batch: added to the writer's sets once the
        // shared transaction committed, so that a failed batch (an error anywhere in it, or a
        // panic) leaves nothing behind; its string ids are handed out again by the next batch.
        let mut new_ops: HashSet<(String, String, String)> = HashSet::default();
        let mut new_op_ids: HashSet<(i64, i64, i64)> = HashSet::default();
        {
            let mut op_stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO operations (service, operation, span_kind) \
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(&shared_err)?;
            // A replayed older heartbeat must not roll the registry back.
            let mut reg_stmt = tx
                .prepare_cached(
                    "INSERT INTO registry (service, instance, last_ns, doc) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (service, instance) DO UPDATE SET \
                     last_ns = excluded.last_ns, doc = excluded.doc \
                     WHERE excluded.last_ns >= registry.last_ns",
                )
                .map_err(&shared_err)?;
            // Dictionary entries first, so every body encodes with final ids.
            let mut resource_of = Vec::with_capacity(docs.len());
            let mut hashes = ResourceHashes::default();
            for doc in docs {
                match doc {
                    Document::Span(s) => {
                        resource_of.push(it.resource(&s.service, hashes.of(&s.service)));
                        it.name(&s.name);
                        it.name(&s.scope);
                        it.attr_keys(&s.attributes);
                        for e in &s.events {
                            it.attr_keys(&e.attributes);
                        }
                    }
                    Document::Log(l) => {
                        resource_of.push(it.resource(&l.service, hashes.of(&l.service)));
                        it.name(&l.level);
                        it.attr_keys(&l.attributes);
                    }
                    Document::Heartbeat(_) => resource_of.push((0, 0, false)),
                }
            }
            for (i, doc) in docs.iter().enumerate() {
                match doc {
                    Document::Span(s) => {
                        let (resource, service, inline) = resource_of[i];
                        let full = it.lookup(NAMES_FULL);
                        let (op, name) = it.indexed_name(&s.name);
                        let names = InlineNames {
                            name,
                            scope: it.indexed_name(&s.scope).1,
                            level: None,
                        };
                        let mut unnamed =
                            !names.is_empty() || (service == full && s.service.name != NAMES_FULL);
                        // The usual span's operation is listed already: found by its ids
                        // without building its names.
                        let op_ids = (service, op, kind_code(s.kind));
                        if !w.known_op_ids.contains(&op_ids) && !new_op_ids.contains(&op_ids) {
                            let named = |id: i64, name: &str| {
                                if id == full && name != NAMES_FULL {
                                    NAMES_FULL.to_string()
                                } else {
                                    name.to_string()
                                }
                            };
                            let mut key = (
                                named(service, &s.service.name),
                                named(op, &s.name),
                                s.kind.as_str().to_string(),
                            );
                            // The operation list has the names' bound too: past it, a new
                            // (service, operation, kind) is listed as the service's `(names
                            // full)` operation (at most one per service and kind), so that
                            // every service stays listed; its spans are still found by both
                            // names.
                            let listed = |k: &(String, String, String)| {
                                w.known_operations.contains(k) || new_ops.contains(k)
                            };
                            if !listed(&key)
                                && w.known_operations.len() + new_ops.len() >= w.max_names
                            {
                                key.1 = NAMES_FULL.to_string();
                                unnamed = true;
                            } else {
                                new_op_ids.insert(op_ids);
                            }
                            if !listed(&key) {
                                op_stmt
                                    .execute(params![key.0, key.1, key.2])
                                    .map_err(&shared_err)?;
                                new_ops.insert(key);
                            }
                        }
                        if unnamed && live(trace_day[s.trace_id.as_str()]) {
                            it.unindexed_names += 1;
                        }
                        let ids = |k: &str| it.lookup(k);
                        let mut index: Vec<(i64, Sql)> = Vec::new();
                        // A key outside the dictionary (it was full) is not indexed.
                        let attrs = s
                            .attributes
                            .iter()
                            .chain(s.events.iter().flat_map(|e| e.attributes.iter()));
                        for (k, v) in attrs {
                            let key = ids(k);
                            if key > 0 {
                                index.push((key, index_value(v)));
                            }
                        }
                        index.push((KEY_RESOURCE, Sql::Integer(resource)));
                        index.push((KEY_OPERATION, Sql::Integer(op)));
                        let row = SpanRow {
                            doc: i,
                            cols: SpanCols {
                                span_id: s.span_id.clone(),
                                start: ns(s.start_unix_nano),
                                duration: ns(s.end_unix_nano).wrapping_sub(ns(s.start_unix_nano)),
                                parent: s.parent_span_id.clone(),
                                resource,
                                op,
                                flags: flags(s),
                            },
                            service,
                            body: span_body(s, &ids, inline.then_some(&s.service), &names),
                            index,
                        };
                        let g = *group_of.entry(s.trace_id.as_str()).or_insert_with(|| {
                            groups.push(TraceGroup {
                                trace_id: s.trace_id.clone(),
                                day: trace_day[s.trace_id.as_str()],
                                spans: Vec::new(),
                            });
                            groups.len() - 1
                        });
                        groups[g].spans.push(row);
                    }
                    Document::Log(l) => {
                        let day = day_of_time(l.time_unix_nano);
                        if !live(day) {
                            continue;
                        }
                        let (resource, service, inline) = resource_of[i];
                        let full = it.lookup(NAMES_FULL);
                        let (level, written_out) = it.indexed_name(&l.level);
                        let names = InlineNames {
                            level: written_out,
                            ..Default::default()
                        };
                        if !names.is_empty() || (service == full && l.service.name != NAMES_FULL) {
                            it.unindexed_names += 1;
                        }
                        let ids = |k: &str| it.lookup(k);
                        by_day.entry(day).or_default().logs.push(LogRow {
                            doc_id: stored_log_id(l),
                            time: ns(l.time_unix_nano),
                            resource,
                            level,
                            severity: i64::from(l.severity_number),
                            trace_id: l.trace_id.as_deref().map(id_value),
                            span_id: l.span_id.as_deref().map(id_value),
                            body: l.body.clone(),
                            rest: log_rest(l, &ids, inline.then_some(&l.service), &names),
                        });
                    }
                    Document::Heartbeat(h) => {
                        let registry = RegistryEntry::from_heartbeat(h, now);
                        let doc =
                            serde_json::to_string(&registry).map_err(|e| StoreError::Corrupt {
                                id: h.doc_id(),
                                message: e.to_string(),
                            });
                        let hb = serde_json::to_string(h);
                        match (doc, hb) {
                            (Ok(doc), Ok(hb)) => {
                                reg_stmt
                                    .execute(params![
                                        registry.service,
                                        registry.instance_id,
                                        ns(registry.last_heartbeat_unix_nano),
                                        doc
                                    ])
                                    .map_err(&shared_err)?;
                                let day = day_of_time(h.time_unix_nano);
                                if live(day) {
                                    by_day
                                        .entry(day)
                                        .or_default()
                                        .heartbeats
                                        .push(HeartbeatRow {
                                            id: h.doc_id(),
                                            time: ns(h.time_unix_nano),
                                            doc: hb,
                                        });
                                }
                            }
                            _ => {
                                outcomes[i] = WriteOutcome::Rejected(format!(
                                    "heartbeat {} cannot be serialized",
                                    h.doc_id()
                                ));
                            }
                        }
                    }
                }
            }
            let mut s_stmt = tx
                .prepare_cached("INSERT INTO strings (id, text) VALUES (?1, ?2)")
                .map_err(&shared_err)?;
            for (id, text) in &it.strings {
                s_stmt.execute(params![id, text]).map_err(&shared_err)?;
            }
            let mut n_stmt = tx
                .prepare_cached("INSERT INTO names (id) VALUES (?1)")
                .map_err(&shared_err)?;
            for id in &it.names {
                n_stmt.execute([id]).map_err(&shared_err)?;
            }
            let mut r_stmt = tx
                .prepare_cached(
                    "INSERT INTO resources (id, hash, service, doc) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&shared_err)?;
            for (id, hash, service, info) in &it.resources {
                let doc = serde_json::to_string(info).unwrap_or_default();
                r_stmt
                    .execute(params![id, hash.to_le_bytes().to_vec(), service, doc])
                    .map_err(&shared_err)?;
            }
            let mut b_stmt = tx
                .prepare_cached(
                    "INSERT INTO partition_bounds (day, min_ns, max_ns) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (day) DO UPDATE SET min_ns = min(min_ns, excluded.min_ns), \
                     max_ns = max(max_ns, excluded.max_ns) \
                     WHERE excluded.min_ns < min_ns OR excluded.max_ns > max_ns",
                )
                .map_err(&shared_err)?;
            for (day, (lo, hi)) in &bounds {
                b_stmt.execute(params![day, lo, hi]).map_err(&shared_err)?;
            }
        }
        tx.commit().map_err(&shared_err)?;
        w.known_operations.extend(new_ops);
        w.known_op_ids.extend(new_op_ids);
        (
            it.strings,
            it.names,
            it.resources,
            (it.unindexed, it.unindexed_resources, it.unindexed_names),
        )
    };
    // Only a batch that brought new strings or resources waits for the catalog's write lock:
    // the usual batch, whose strings are all known, never queues behind a long search.
    if !new_strings.is_empty() || !new_resources.is_empty() {
        let mut cat = ctx.catalog.write().unwrap_or_else(|e| e.into_inner());
        for (id, text) in new_strings {
            cat.add_string(id, &text);
        }
        for id in new_names {
            cat.add_name(id);
        }
        for (id, hash, service, info) in new_resources {
            cat.add_resource(id, hash, service, info);
        }
    }

    for g in groups {
        if live(g.day) {
            by_day.entry(g.day).or_default().traces.push(g);
        }
    }

    for (day, rows) in by_day {
        let path = ctx.part_path(day);
        let err = unavailable(&path);
        let cat = ctx.catalog();
        let conn = w.partition(ctx, day)?;
        // Take the write lock at the start, waiting for it: a deferred transaction that read
        // first and then writes fails at once (SQLITE_BUSY, no waiting) when another
        // connection wrote the file since its read began.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut index_rows = Vec::new();
        let mut hours = HourCounts::default();
        for g in &rows.traces {
            if let Some(msg) =
                write_trace(&tx, &cat, g, &mut index_rows, &mut hours).map_err(&err)?
            {
                for s in &g.spans {
                    outcomes[s.doc] = WriteOutcome::Rejected(msg.clone());
                }
            }
        }
        // In index order: neighbouring inserts land on the same B-tree pages.
        index_rows.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| sql_order(&a.1, &b.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        index_rows.dedup();
        {
            // One append per (key, value): its traces, ascending, onto its posting list.
            let mut nos = Vec::new();
            let mut rows = index_rows.iter().peekable();
            while let Some((k, v, no)) = rows.next() {
                nos.clear();
                nos.push(*no);
                while let Some((_, _, next)) = rows.next_if(|(k2, v2, _)| k2 == k && v2 == v) {
                    nos.push(*next);
                }
                postings::append(&tx, *k, v, &nos).map_err(&err)?;
            }
            let mut hour = tx
                .prepare_cached(
                    "INSERT INTO edge_hours (hour, caller, callee, calls, errors) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (hour, caller, callee) DO UPDATE \
                     SET calls = calls + excluded.calls, errors = errors + excluded.errors",
                )
                .map_err(&err)?;
            for ((h, caller, callee), (calls, errors)) in &hours {
                if (*calls, *errors) != (0, 0) {
                    hour.execute(params![h, caller, callee, calls, errors])
                        .map_err(&err)?;
                }
            }
        }
        // Per block of row ids, the newest time written to it (ids are dense and rising).
        let mut blocks: std::collections::BTreeMap<i64, i64> = Default::default();
        let mut packed = PackedKeys::default();
        for l in &rows.logs {
            let key = doc_key(&l.doc_id);
            if packed.holds(&tx, &path, l.time, &key)? {
                continue;
            }
            if let Some(id) = write_log(&tx, l, key)? {
                let t = blocks.entry(id >> LOG_BLOCK_BITS).or_insert(l.time);
                *t = (*t).max(l.time);
            }
        }
        for (block, time) in blocks {
            tx.prepare_cached(
                "INSERT INTO log_blocks (block, max_time) VALUES (?1, max(?2, coalesce((SELECT \
                 max_time FROM log_blocks WHERE block < ?1 ORDER BY block DESC LIMIT 1), ?2))) \
                 ON CONFLICT (block) DO UPDATE SET max_time = max(max_time, excluded.max_time)",
            )
            .map_err(&err)?
            .execute(params![block, time])
            .map_err(&err)?;
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO heartbeats (doc_id, time_ns, doc) VALUES (?1, ?2, ?3)",
                )
                .map_err(&err)?;
            for h in &rows.heartbeats {
                stmt.execute(params![h.id, h.time, h.doc]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        drop(cat);
        if w.recent.len() >= RECENT_TRACES {
            w.recent.clear();
        }
        for g in rows.traces {
            w.recent.insert(g.trace_id, day);
        }
    }
    // Counted once the batch is written (a batch retried after a failed partition write is
    // counted once), in the shared database: the counts survive restarts and every store on
    // the directory reads them.
    // The batch is stored by now: a failure to count is logged, not returned (the batch
    // reported failed would be retried and counted twice).
    if unindexed > 0 || unindexed_resources > 0 || unindexed_names > 0 {
        let counted = (|| {
            let tx = w.shared.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                )?;
                for (name, n) in [
                    (COUNTER_UNINDEXED_ATTRIBUTES, unindexed),
                    (COUNTER_UNINDEXED_RESOURCES, unindexed_resources),
                    (COUNTER_UNINDEXED_NAMES, unindexed_names),
                ] {
                    if n > 0 {
                        stmt.execute(params![name, ns(n)])?;
                    }
                }
            }
            tx.commit()
        })();
        if let Err(e) = counted {
            tracing::warn!(
                store = %ctx.dir.display(),
                unindexed_attributes = unindexed,
                unindexed_resources,
                unindexed_names,
                error = %e,
                "a stored batch's unindexed attributes and resources could not be counted"
            );
        }
    }
    if unindexed > 0 && !w.warned_full {
        w.warned_full = true;
        tracing::warn!(
            store = %ctx.dir.display(),
            max_dictionary_entries = max_entries,
            "the attribute dictionary is full: attributes with new keys are stored but not \
             indexed for search (counted in the store usage's unindexed_attributes); raise \
             max_dictionary_entries if these keys are legitimate"
        );
    }
    if unindexed_names > 0 && !w.warned_names_full {
        w.warned_names_full = true;
        tracing::warn!(
            store = %ctx.dir.display(),
            max_names = w.max_names,
            "the dictionary's names are full: records with a new service, operation, scope or \
             level name are stored whole but indexed under the name \"(names full)\", not found \
             by their own (counted in the store usage's unindexed_names); look for names built \
             from ids or URLs, or raise max_names if these names are legitimate"
        );
    }
    if unindexed_resources > 0 && !w.warned_resources_full {
        w.warned_resources_full = true;
        tracing::warn!(
            store = %ctx.dir.display(),
            max_resources = w.max_resources,
            "the resources table is full: records with new resources are stored whole but \
             found only by their service's name, not by their other resource attributes \
             (counted in the store usage's unindexed_resources); raise max_resources if these \
             service instances are legitimate"
        );
    }
    Ok(outcomes)
}

/// Counter of attributes stored but not indexed (their key was new, the dictionary full).
const COUNTER_UNINDEXED_ATTRIBUTES: &str = "unindexed_attributes";
/// Counter of records stored with a resource the resources table had no room for.
const COUNTER_UNINDEXED_RESOURCES: &str = "unindexed_resources";
/// Counter of records stored with a name the dictionary's names had no room for.
const COUNTER_UNINDEXED_NAMES: &str = "unindexed_names";

/// Changes to the hourly call counts, (hour, caller, callee) → (calls, errors), summed over a
/// batch and written once per key.
type HourCounts = HashMap<(i64, i64, i64), (i64, i64)>;

/// Writes one trace's new spans, its summary and dependency edges; its attribute index rows
/// are added to `index_rows` and its hourly call count changes to `hours`, both written for
/// the whole batch (the index rows in index order). Returns a rejection message when the
/// trace is over its bound.
fn write_trace(
    tx: &rusqlite::Transaction<'_>,
    cat: &Catalog,
    g: &TraceGroup,
    index_rows: &mut Vec<(i64, Sql, i64)>,
    hours: &mut HourCounts,
) -> rusqlite::Result<Option<String>> {
    let tid = id_value(&g.trace_id);
    let existing: Option<i64> = tx
        .prepare_cached("SELECT trace_no FROM traces WHERE trace_id = ?1")?
        .query_row([&tid], |r| r.get(0))
        .optional()?;
    let mut cols: HashMap<String, SpanCols> = HashMap::default();
    let trace_no = match existing {
        Some(no) => {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {SPAN_COLS} FROM spans WHERE trace_no = ?1"
            ))?;
            for c in stmt.query_map([no], read_cols)? {
                let c = c?;
                cols.insert(c.span_id.clone(), c);
            }
            no
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO traces (trace_id, start_ns, duration_ns, root_service, root_op, \
                 span_count, error_count, services) VALUES (?1, 0, 0, 0, 0, 0, 0, x'')",
            )?
            .execute([&tid])?;
            tx.last_insert_rowid()
        }
    };
    let new_ids: HashSet<&str> = g.spans.iter().map(|s| s.cols.span_id.as_str()).collect();
    let added = new_ids.iter().filter(|id| !cols.contains_key(**id)).count();
    if cols.len() + added > MAX_TRACE_SPANS {
        if existing.is_none() {
            // The blank summary row inserted above must not outlive the refusal: searches
            // would meet a trace without a root.
            tx.prepare_cached("DELETE FROM traces WHERE trace_no = ?1")?
                .execute([trace_no])?;
        }
        return Ok(Some(format!(
            "trace {} would hold more than {MAX_TRACE_SPANS} spans in one day partition",
            g.trace_id
        )));
    }
    let service_of = |resource: i64| cat.resources.get(&resource).map_or(0, |r| r.service);
    // A new trace had nothing before this batch.
    let before = if existing.is_some() {
        cols.clone()
    } else {
        HashMap::default()
    };
    {
        let mut del = tx.prepare_cached(
            "DELETE FROM spans WHERE trace_no = ?1 AND start_ns = ?2 AND span_id = ?3",
        )?;
        let mut ins = tx.prepare_cached(
            "INSERT OR REPLACE INTO spans (trace_no, start_ns, span_id, duration_ns, parent, \
             resource, op, flags, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for s in &g.spans {
            let sid = id_value(&s.cols.span_id);
            if let Some(old) = cols.get(&s.cols.span_id) {
                if old.start != s.cols.start {
                    del.execute(params![trace_no, old.start, sid])?;
                }
            }
            ins.execute(params![
                trace_no,
                s.cols.start,
                sid,
                s.cols.duration,
                s.cols.parent.as_deref().map(id_value),
                s.cols.resource,
                s.cols.op,
                s.cols.flags,
                s.body
            ])?;
            cols.insert(s.cols.span_id.clone(), s.cols.clone());
            // Repeats (the same value in several spans of the trace) go once the batch's rows
            // are sorted.
            for (k, v) in &s.index {
                if matches!(v, Sql::Integer(_) | Sql::Real(_) | Sql::Text(_)) {
                    index_rows.push((*k, v.clone(), trace_no));
                }
            }
        }
        debug_assert!(g
            .spans
            .iter()
            .all(|s| service_of(s.cols.resource) == s.service));
    }

    // Edges of the new spans and of the spans whose parent is new: each one's edge before
    // and after this batch; a change moves its row and its hour's counts.
    {
        let edge_of = |map: &HashMap<String, SpanCols>, child: &str| {
            let c = map.get(child)?;
            let p = map.get(c.parent.as_deref()?)?;
            let (caller, callee) = (service_of(p.resource), service_of(c.resource));
            (caller != callee).then(|| (c.start, caller, callee, is_error_flag(c.flags)))
        };
        let mut edge = tx.prepare_cached(
            "INSERT OR REPLACE INTO edges (start_ns, trace_no, span_id, caller, callee, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut del_edge = tx.prepare_cached(
            "DELETE FROM edges WHERE start_ns = ?1 AND trace_no = ?2 AND span_id = ?3",
        )?;
        for child in cols.values() {
            let touched = new_ids.contains(child.span_id.as_str())
                || child.parent.as_deref().is_some_and(|p| new_ids.contains(p));
            if !touched {
                continue;
            }
            let old = edge_of(&before, &child.span_id);
            let new = edge_of(&cols, &child.span_id);
            if old == new {
                continue;
            }
            let sid = id_value(&child.span_id);
            if let Some((start, caller, callee, error)) = old {
                del_edge.execute(params![start, trace_no, sid])?;
                let h = hours.entry((start / HOUR_NS, caller, callee)).or_default();
                *h = (h.0 - 1, h.1 - i64::from(error));
            }
            if let Some((start, caller, callee, error)) = new {
                edge.execute(params![start, trace_no, sid, caller, callee, error])?;
                let h = hours.entry((start / HOUR_NS, caller, callee)).or_default();
                *h = (h.0 + 1, h.1 + i64::from(error));
            }
        }
    }

    // The summary, recomputed from every stored span of the trace (as TraceSummary does).
    let mut all: Vec<&SpanCols> = cols.values().collect();
    all.sort_by(|a, b| (a.start, &a.span_id).cmp(&(b.start, &b.span_id)));
    let start = all.iter().map(|c| c.start).min().unwrap_or(0);
    let end = all
        .iter()
        .map(|c| c.start.wrapping_add(c.duration))
        .max()
        .unwrap_or(start);
    let root = all
        .iter()
        .find(|c| c.parent.is_none())
        .or_else(|| all.first())
        .copied();
    let mut services: Vec<i64> = all.iter().map(|c| service_of(c.resource)).collect();
    services.sort_unstable();
    services.dedup();
    let mut packed = Enc::default();
    for s in &services {
        packed.u64(*s as u64);
    }
    // Open: some span names a parent this partition does not hold, so the trace may have
    // spans in another day's partition; searches complete such traces from every partition.
    let open = all
        .iter()
        .any(|c| c.parent.as_deref().is_some_and(|p| !cols.contains_key(p)));
    tx.prepare_cached(
        "UPDATE traces SET start_ns = ?2, duration_ns = ?3, root_service = ?4, root_op = ?5, \
         span_count = ?6, error_count = ?7, services = ?8, open = ?9 WHERE trace_no = ?1",
    )?
    .execute(params![
        trace_no,
        start,
        end.saturating_sub(start).max(0),
        root.map_or(0, |r| service_of(r.resource)),
        root.map_or(0, |r| r.op),
        all.len() as i64,
        all.iter().filter(|c| is_error_flag(c.flags)).count() as i64,
        packed.buf,
        open
    ])?;
    Ok(None)
}

/// Writes a log unless it is there already (a replay: the same identity at the same time),
/// returning its row id when written. Row ids are dense, in arrival order, which keeps the
/// trigram index small; `log_blocks` keeps, per block of 1024 row ids, the newest time of any
/// row up to that block (written by the caller once per batch), so a text search walking the
/// index newest row first knows when no older row can be newer.
fn write_log(
    tx: &rusqlite::Transaction<'_>,
    l: &LogRow,
    doc_key: Vec<u8>,
) -> Result<Option<i64>, StoreError> {
    let err = read_err;
    // A replay is found by its identity (time, document id) in one lookup of the unique time
    // index, whatever else shares its time (a sender stamping every record with the same time
    // must not make each write scan them).
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO logs (time_ns, resource, level, severity, trace_id, body, \
             rest, span_id, doc_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(err)?
        .execute(params![
            l.time, l.resource, l.level, l.severity, l.trace_id, l.body, l.rest, l.span_id, doc_key
        ])
        .map_err(err)?;
    if inserted == 0 {
        return Ok(None);
    }
    let id = tx.last_insert_rowid();
    tx.prepare_cached("INSERT INTO logs_text (rowid, body) VALUES (?1, ?2)")
        .map_err(err)?
        .execute(params![id, l.body])
        .map_err(err)?;
    Ok(Some(id))
}

/// The identities of a partition's packed logs, loaded pack by pack as a batch's logs need
/// them: a replay of a log moved into a pack is found here, since the unique time index holds
/// only the rows.
#[derive(Default)]
struct PackedKeys {
    /// (earliest, latest time, pack) of every pack, once loaded.
    packs: Option<Vec<(i64, i64, i64)>>,
    keys: HashMap<i64, HashSet<(i64, Vec<u8>)>>,
}

impl PackedKeys {
    /// Whether a pack holds a log of this time and identity. A pack that cannot be decoded
    /// holds nothing (a warning names it): a damaged pack must not stop the day's writes.
    fn holds(
        &mut self,
        tx: &Connection,
        path: &Path,
        time: i64,
        key: &[u8],
    ) -> Result<bool, StoreError> {
        let err = unavailable(path);
        if self.packs.is_none() {
            let mut stmt = tx
                .prepare_cached("SELECT min_time, max_time, pack FROM log_packs")
                .map_err(&err)?;
            let all = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            self.packs = Some(all);
        }
        let Some(packs) = self.packs.as_ref().filter(|p| !p.is_empty()) else {
            return Ok(false);
        };
        let covering: Vec<i64> = packs
            .iter()
            .filter(|(min, max, _)| *min <= time && time <= *max)
            .map(|p| p.2)
            .collect();
        for pack in covering {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.keys.entry(pack) {
                let data: Vec<u8> = tx
                    .prepare_cached("SELECT data FROM log_packs WHERE pack = ?1")
                    .map_err(&err)?
                    .query_row([pack], |r| r.get(0))
                    .map_err(&err)?;
                let keys = match packs::decode(&data) {
                    Ok(logs) => logs
                        .into_iter()
                        .filter(|l| !l.doc_key.is_empty())
                        .map(|l| (l.time, l.doc_key))
                        .collect(),
                    Err(e) => {
                        tracing::warn!(partition = %path.display(), pack, error = %e,
                            "a log pack cannot be read; its records are not checked for replays");
                        HashSet::default()
                    }
                };
                slot.insert(keys);
            }
            if self.keys[&pack].contains(&(time, key.to_vec())) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Log rows moved into packs per transaction of [`compact_logs`]: a whole number of packs, and
/// short enough (about half a second) that the writer is not held from other days for long.
pub const COMPACT_SLICE: usize = 64 * packs::PACK_LOGS;

/// Moves up to `max` of a day partition's log rows, oldest first, into packs (see
/// `packs.rs`), in one transaction of the writer: each pack, its text in the pack trigram
/// index, its trace and span ids; the rows and their trigram entries go. Returns the rows
/// moved (fewer than `max` once the rows are all moved). A day without a file is left alone.
fn compact_logs(w: &mut Writer, ctx: &Ctx, day: i64, max: usize) -> Result<usize, StoreError> {
    let path = ctx.part_path(day);
    if !path.exists() {
        return Ok(0);
    }
    let err = unavailable(&path);
    let conn = w.partition(ctx, day)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    struct Moved {
        id: i64,
        span_id: Option<Sql>,
        log: packs::PackedLog,
    }
    let rows: Vec<Moved> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT id, time_ns, resource, level, severity, trace_id, body, rest, span_id, \
                 doc_id FROM logs ORDER BY time_ns, doc_id LIMIT ?1",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([max as i64], |r| {
                let opt_id = |i: usize| -> rusqlite::Result<Option<Sql>> {
                    Ok(match r.get::<_, Sql>(i)? {
                        Sql::Null => None,
                        v => Some(v),
                    })
                };
                Ok(Moved {
                    id: r.get(0)?,
                    span_id: opt_id(8)?,
                    log: packs::PackedLog {
                        time: r.get(1)?,
                        resource: r.get(2)?,
                        level: r.get(3)?,
                        severity: r.get(4)?,
                        trace_id: opt_id(5)?,
                        body: r.get(6)?,
                        rest: r.get(7)?,
                        doc_key: r.get::<_, Option<Vec<u8>>>(9)?.unwrap_or_default(),
                    },
                })
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        rows
    };
    let flush = |pack: &[&Moved]| -> rusqlite::Result<()> {
        let Some(first) = pack.first() else {
            return Ok(());
        };
        let min = first.log.time;
        let max = pack.iter().map(|m| m.log.time).max().unwrap_or(min);
        tx.prepare_cached(
            "INSERT INTO log_packs (min_time, max_time, count, data) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            min,
            max,
            pack.len() as i64,
            packs::encode(pack.iter().map(|m| &m.log))
        ])?;
        let no = tx.last_insert_rowid();
        let text: Vec<&str> = pack.iter().map(|m| m.log.body.as_str()).collect();
        tx.prepare_cached("INSERT INTO log_packs_text (rowid, body) VALUES (?1, ?2)")?
            .execute(params![no, text.join("\n")])?;
        let mut keys: Vec<i64> = pack
            .iter()
            .flat_map(|m| {
                [
                    m.log.trace_id.as_ref().and_then(|t| packs::id_key(b't', t)),
                    m.span_id.as_ref().and_then(|s| packs::id_key(b's', s)),
                ]
            })
            .flatten()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut ids =
            tx.prepare_cached("INSERT OR IGNORE INTO log_pack_ids (key, pack) VALUES (?1, ?2)")?;
        for k in keys {
            ids.execute(params![k, no])?;
        }
        // A moved row's trigram entries stay until the day's rows are all moved (deleting
        // them one by one from a contentless index adds a tombstone each): a text search
        // joins them to the rows, and one left without its row, or whose id a later row
        // takes, is a candidate the text check refuses.
        let mut del = tx.prepare_cached("DELETE FROM logs WHERE id = ?1")?;
        for m in pack {
            del.execute([m.id])?;
        }
        Ok(())
    };
    let mut pack: Vec<&Moved> = Vec::new();
    let mut bytes = 0usize;
    for m in &rows {
        pack.push(m);
        bytes += m.log.body.len() + m.log.rest.len() + 48;
        if pack.len() >= packs::PACK_LOGS || bytes >= packs::PACK_BYTES {
            flush(&pack).map_err(&err)?;
            pack.clear();
            bytes = 0;
        }
    }
    flush(&pack).map_err(&err)?;
    // Once no row is left: the rows' text index and blocks go (also when the last slice
    // moved nothing, the one before having emptied the table).
    let clear: bool = tx
        .query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM logs) AND EXISTS (SELECT 1 FROM log_blocks)",
            [],
            |r| r.get(0),
        )
        .map_err(&err)?;
    if clear {
        tx.execute_batch(
            "INSERT INTO logs_text (logs_text) VALUES ('delete-all'); DELETE FROM log_blocks;",
        )
        .map_err(&err)?;
    }
    tx.commit().map_err(&err)?;
    Ok(rows.len())
}

/// A log's identity as a reader will compute it from the stored record: a time past
/// i64::MAX is stored clipped, so its identity is that of the clipped record (a replay is
/// then found, and the id written is the one a reader's cursor names).
fn stored_log_id(l: &LogEntry) -> String {
    if i64::try_from(l.time_unix_nano).is_ok() {
        return l.doc_id();
    }
    let mut clipped = l.clone();
    clipped.time_unix_nano = ns(l.time_unix_nano) as u64;
    clipped.doc_id()
}

/// A log's document id as stored: its 16 bytes (the text itself, for an id that is not hex).
fn doc_key(doc_id: &str) -> Vec<u8> {
    hex::decode(doc_id).unwrap_or_else(|_| doc_id.as_bytes().to_vec())
}

/// SQLite's order of values: null, numbers (by value), text, blobs. A total order: an
/// integer and a float of the same value (or integers past 2^53 sharing a float) are told
/// apart, integers first, so that sorting never meets an inconsistent comparison.
fn sql_order(a: &Sql, b: &Sql) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let rank = |v: &Sql| match v {
        Sql::Null => 0,
        Sql::Integer(_) | Sql::Real(_) => 1,
        Sql::Text(_) => 2,
        Sql::Blob(_) => 3,
    };
    let num = |v: &Sql| match v {
        Sql::Integer(i) => *i as f64,
        Sql::Real(f) => *f,
        _ => 0.0,
    };
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Sql::Integer(x), Sql::Integer(y)) => x.cmp(y),
        (Sql::Text(x), Sql::Text(y)) => x.cmp(y),
        (Sql::Blob(x), Sql::Blob(y)) => x.cmp(y),
        (Sql::Integer(_) | Sql::Real(_), Sql::Integer(_) | Sql::Real(_)) => num(a)
            .total_cmp(&num(b))
            .then_with(|| matches!(a, Sql::Real(_)).cmp(&matches!(b, Sql::Real(_)))),
        _ => Ordering::Equal,
    })
}

/// ns per `edge_hours` bucket.
const HOUR_NS: i64 = 3_600_000_000_000;

/// Row ids per `log_blocks` entry: 1 << this.
const LOG_BLOCK_BITS: u32 = 10;

// ---------------------------------------------------------------------------------------
// Readers.

struct ReaderSet {
    shared: Connection,
    /// Open day partitions with the tick of their last use, at most [`reader_partitions`].
    parts: HashMap<i64, (Connection, u64, FileId)>,
    tick: u64,
    /// When cached partitions were last checked for deletion by another store.
    swept: std::time::Instant,
}

impl ReaderSet {
    fn new(shared: Connection) -> Self {
        ReaderSet {
            shared,
            parts: HashMap::default(),
            tick: 0,
            swept: std::time::Instant::now(),
        }
    }

    /// A reader connection to a day partition; `None` when it does not exist (any more). A
    /// file that exists but cannot be opened is an error, not a missing day.
    fn part(&mut self, ctx: &Ctx, day: i64) -> Result<Option<&Connection>, StoreError> {
        let path = ctx.part_path(day);
        // Retention run by another store (the indexer's, when this one is the viewer's or
        // another process's) deletes files under open connections, and a later write for the
        // day creates a new file at the same path: drop the connection to the old file, or
        // it reads deleted rows, misses the new ones and keeps the old file's space taken.
        let Some(id) = file_id(&path) else {
            self.parts.remove(&day);
            return Ok(None);
        };
        if self.parts.get(&day).is_some_and(|(_, _, open)| *open != id) {
            self.parts.remove(&day);
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.parts.get_mut(&day) {
            entry.1 = tick;
        } else {
            let Some((conn, id)) = open_part_reader(&path)? else {
                return Ok(None);
            };
            if self.parts.len() >= reader_partitions() {
                let oldest = self
                    .parts
                    .iter()
                    .min_by_key(|(_, (_, t, _))| *t)
                    .map(|(d, _)| *d);
                if let Some(oldest) = oldest {
                    self.parts.remove(&oldest);
                }
            }
            self.parts.insert(day, (conn, tick, id));
        }
        Ok(self.parts.get(&day).map(|(conn, _, _)| conn))
    }

    /// Closes the connection to a day partition, if open.
    fn close(&mut self, day: i64) {
        self.parts.remove(&day);
    }

    /// At most once per [`READER_SWEEP`], closes the connections to partitions whose file is
    /// gone or was replaced, so that a day no query asks for again does not keep its deleted
    /// file open.
    fn sweep(&mut self, ctx: &Ctx) {
        if self.swept.elapsed() < READER_SWEEP {
            return;
        }
        self.swept = std::time::Instant::now();
        self.parts
            .retain(|day, (_, _, id)| file_id(&ctx.part_path(*day)) == Some(*id));
    }
}

/// Which file a path names (device and inode): a day file deleted and created again at the
/// same path is a different file.
type FileId = (u64, u64);

/// The file at `path`, or `None` when there is none.
fn file_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let created = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Some((0, created))
    }
}

/// Creates the table of dictionary entries that are names, if missing (a store written before
/// it existed): filled from the service and operation names the store records, so that they
/// do not count against the cap on attribute keys.
fn ensure_names(conn: &Connection) -> rusqlite::Result<()> {
    let exists = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'names'")?
        .exists([])?;
    if exists {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY);
         INSERT OR IGNORE INTO names (id)
             SELECT id FROM strings WHERE id IN (SELECT service FROM resources)
                 OR text IN (SELECT operation FROM operations)
                 OR text IN (SELECT service FROM operations);
         COMMIT;",
    )
}

/// Creates the table of partition time bounds, if missing (a store written before it
/// existed): every day already on disk gets the widest bounds, since its records' times are
/// not known.
fn ensure_bounds(conn: &Connection, dir: &Path) -> rusqlite::Result<()> {
    let exists = |conn: &Connection| {
        conn.prepare(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'partition_bounds'",
        )?
        .exists([])
    };
    if exists(conn)? {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let made = (|| {
        if exists(conn)? {
            return Ok(());
        }
        conn.execute_batch(schema::BOUNDS)?;
        let mut ins = conn.prepare(
            "INSERT OR IGNORE INTO partition_bounds (day, min_ns, max_ns) VALUES (?1, ?2, ?3)",
        )?;
        for day in list_days(dir) {
            ins.execute(params![day, i64::MIN, i64::MAX])?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The day partitions on disk that may hold records timed in `[start, end]`, oldest first:
/// those whose recorded bounds overlap it, and those without bounds.
fn days_in(
    set: &ReaderSet,
    ctx: &Ctx,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<Vec<i64>, StoreError> {
    let days = list_days(&ctx.dir);
    if start.is_none() && end.is_none() {
        return Ok(days);
    }
    let (s, e) = (ns(start.unwrap_or(0)), ns(end.unwrap_or(u64::MAX)));
    let mut stmt = set
        .shared
        .prepare_cached("SELECT day, min_ns, max_ns FROM partition_bounds")
        .map_err(read_err)?;
    let bounds: HashMap<i64, (i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    Ok(days
        .into_iter()
        .filter(|d| bounds.get(d).is_none_or(|(lo, hi)| *lo <= e && *hi >= s))
        .collect())
}

/// A read-only connection to a day partition file of this build's schema, with the file it
/// opened; `None` when the file is gone. A file that exists but cannot be opened, or is of
/// another schema version, is an error.
fn open_part_reader(path: &Path) -> Result<Option<(Connection, FileId)>, StoreError> {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(_) if !path.exists() => return Ok(None),
        Err(e) => return Err(unavailable(path)(e)),
    };
    // The file opened: stat it now, so a replacement after this is noticed on next use.
    let Some(id) = file_id(path) else {
        return Ok(None);
    };
    let setup = || -> Result<(), StoreError> {
        let err = unavailable(path);
        conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
        conn.pragma_update(None, "query_only", true).map_err(&err)?;
        conn.pragma_update(None, "cache_size", -16_384)
            .map_err(&err)?;
        // `rarray`: the attribute index's candidates bound as one parameter.
        rusqlite::vtab::array::load_module(&conn).map_err(&err)?;
        check_version(&conn, path)
    };
    match setup() {
        Ok(()) => {}
        // Dropped by retention while it was being opened: a missing day.
        Err(_) if file_id(path) != Some(id) => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(Some((conn, id)))
}

/// The day partitions on disk, oldest first.
fn list_days(dir: &Path) -> Vec<i64> {
    let mut days: Vec<i64> = std::fs::read_dir(dir.join(PARTITIONS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            parse_day(name.strip_suffix(".sqlite3")?)
        })
        .collect();
    days.sort_unstable();
    days
}

fn file_bytes(path: &Path) -> u64 {
    let mut total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    for suffix in ["-wal", "-shm"] {
        total += std::fs::metadata(format!("{}{suffix}", path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    total
}

/// The embedded SQLite store.
pub struct EmbeddedStore {
    ctx: Arc<Ctx>,
    writer: Arc<Mutex<Writer>>,
    readers: Vec<Arc<Mutex<ReaderSet>>>,
    next_reader: AtomicUsize,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, with the default partition window
    /// (a record's time is clamped to 7 days back and 1 hour ahead to choose its day).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_window(
            dir,
            TimeWindow {
                max_age_nanos: crate::config::DEFAULT_PARTITION_MAX_AGE_SECS * 1_000_000_000,
                max_ahead_nanos: crate::config::DEFAULT_PARTITION_MAX_AHEAD_SECS * 1_000_000_000,
            },
        )
    }

    /// Opens the store in `dir`, choosing partitions with `window`. A store of the first
    /// (single-file JSON) layout is migrated; a store written by a newer dlog is refused.
    pub fn open_with_window(dir: impl AsRef<Path>, window: TimeWindow) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let err = |message: String| StoreError::Embedded {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir.join(PARTITIONS_DIR))
            .map_err(|e| err(format!("cannot create directory: {e}")))?;
        let path = dir.join(DB_FILE);
        let sql = |e: rusqlite::Error| err(e.to_string());
        let v1 = dir.join(V1_FILE);
        // A first-layout store, or one whose migration is under way or was interrupted (the
        // old file moved aside is removed last): migrated under a lock (never removed: an
        // empty file), so that two processes
        // opening it together (`dlog up` and `dlog viewer`) migrate it once; the second waits,
        // then finds it migrated.
        // The first check reads the file's header, not the database: a connection of this
        // process would keep the migrating one from switching the old file's journal. It may
        // take the lock for nothing (a new store whose version is still in its WAL); the
        // check under the lock is exact.
        // A store of layout 2, 3 or 4 is upgraded under the same lock: its partitions may take
        // longer than a connection's busy wait to upgrade, and the second process waits for
        // the lock instead.
        let _migrating = if v1.exists() || matches!(header_version(&path), Some(0 | 2 | 3 | 4)) {
            Some(migration_lock(dir)?)
        } else {
            None
        };
        if path.exists() && is_v1(&path)? {
            // Moved aside first: an interrupted migration starts again from it.
            {
                let conn = Connection::open(&path).map_err(sql)?;
                conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
                conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
                    .map_err(sql)?;
                conn.pragma_update(None, "journal_mode", "DELETE")
                    .map_err(sql)?;
            }
            std::fs::rename(&path, &v1)
                .map_err(|e| err(format!("cannot move the old layout aside: {e}")))?;
        }
        let conn = Connection::open(&path).map_err(sql)?;
        configure(&conn).map_err(sql)?;
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        match version {
            0 => {
                conn.execute_batch(&format!(
                    "BEGIN; {} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                    schema::SHARED
                ))
                .map_err(sql)?;
            }
            2..=4 => {
                // Partitions first, each in its own transaction: an interrupted upgrade finds
                // the shared file still at its old version and goes on with the partitions
                // left. The catalog decodes the logs whose identity is computed.
                ensure_names(&conn).map_err(sql)?;
                let mut catalog = Catalog::default();
                catalog.load_new(&conn)?;
                for day in list_days(dir) {
                    migrate_partition(
                        &dir.join(PARTITIONS_DIR)
                            .join(format!("{}.sqlite3", day_name(day))),
                        &catalog,
                    )?;
                }
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(sql)?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(err(format!(
                    "{DB_FILE} has schema version {v}, but this build of dlog reads version \
                     {SCHEMA_VERSION}: run the dlog release that wrote it (or a newer one), or \
                     move {} away to start an empty store",
                    dir.display()
                )))
            }
        }
        ensure_names(&conn).map_err(sql)?;
        ensure_bounds(&conn, dir).map_err(sql)?;
        conn.execute_batch(schema::COUNTERS).map_err(sql)?;
        let mut known_operations = HashSet::default();
        {
            let mut stmt = conn
                .prepare("SELECT service, operation, span_kind FROM operations")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(sql)?;
            for row in rows {
                known_operations.insert(row.map_err(sql)?);
            }
        }
        let mut catalog = Catalog::default();
        catalog.load_new(&conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql)?;
            reader.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
            readers.push(Arc::new(Mutex::new(ReaderSet::new(reader))));
        }
        let store = EmbeddedStore {
            ctx: Arc::new(Ctx {
                dir: dir.to_path_buf(),
                window,
                catalog: Arc::new(RwLock::new(catalog)),
            }),
            writer: Arc::new(Mutex::new(Writer {
                shared: conn,
                parts: HashMap::default(),
                part_use: Vec::new(),
                known_operations,
                known_op_ids: HashSet::default(),
                recent: HashMap::default(),
                value_counts: HashMap::default(),
                interned: 0,
                expired_before: None,
                max_dictionary_entries: crate::config::DEFAULT_MAX_DICTIONARY_ENTRIES,
                warned_full: false,
                max_resources: crate::config::DEFAULT_MAX_RESOURCES,
                warned_resources_full: false,
                max_names: crate::config::DEFAULT_MAX_NAMES,
                warned_names_full: false,
            })),
            readers,
            next_reader: AtomicUsize::new(0),
        };
        if v1.exists() {
            store.import_v1(&v1)?;
            std::fs::remove_file(&v1)
                .map_err(|e| err(format!("migrated, but cannot remove {V1_FILE}: {e}")))?;
        }
        Ok(store)
    }

    /// Caps the distinct attribute keys and values of the dictionary (service, operation,
    /// scope and level names are not counted and not capped); default
    /// [`crate::config::DEFAULT_MAX_DICTIONARY_ENTRIES`]. Past it, an attribute with a new
    /// key is still stored with its span or log but is not indexed for search.
    pub fn with_max_dictionary_entries(self, max: usize) -> Self {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_dictionary_entries = max.max(1);
        self
    }

    /// Caps the distinct resources (service instances: a resource's attributes) the store
    /// keeps in its resources table; default [`crate::config::DEFAULT_MAX_RESOURCES`]. Past
    /// it, a record with a new resource is stored with that resource written out in its body
    /// (shown whole), and indexed under a resource holding only its service's name: found by
    /// service, not by its other resource attributes.
    pub fn with_max_resources(self, max: usize) -> Self {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_resources = max.max(1);
        self
    }

    /// Caps the distinct service, operation, scope and level names the dictionary keeps, and
    /// the entries of the operation list; default [`crate::config::DEFAULT_MAX_NAMES`]. Past
    /// it, a record with a new name is stored with its names written out in its body (shown
    /// whole) and indexed under [`NAMES_FULL`]: not found by its own service or operation name.
    pub fn with_max_names(self, max: usize) -> Self {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_names = max.max(1);
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.ctx.dir
    }

    /// Copies every document of a first-layout store into this one, through the ordinary
    /// (idempotent) write path.
    fn import_v1(&self, v1: &Path) -> Result<(), StoreError> {
        let err = |e: rusqlite::Error| StoreError::Embedded {
            path: v1.display().to_string(),
            message: format!("migrating the old layout: {e}"),
        };
        let old = Connection::open_with_flags(v1, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::store::now_unix_nano();
        for (table, kind) in [("spans", 0), ("logs", 1), ("heartbeats", 2)] {
            let mut stmt = old
                .prepare(&format!("SELECT rowid, doc FROM {table} ORDER BY rowid"))
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            let mut batch = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                let id: i64 = row.get(0).map_err(err)?;
                let doc: String = row.get(1).map_err(err)?;
                let what = format!("{table} row {id}");
                batch.push(match kind {
                    0 => Document::Span(parse::<SpanRecord>(&what, &doc)?),
                    1 => Document::Log(parse::<LogEntry>(&what, &doc)?),
                    _ => Document::Heartbeat(parse::<Heartbeat>(&what, &doc)?),
                });
                if batch.len() == 2000 {
                    write_docs(&mut w, &self.ctx, &batch, now)?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                write_docs(&mut w, &self.ctx, &batch, now)?;
            }
        }
        let tx = w.shared.transaction().map_err(err)?;
        for (select, insert) in [
            (
                "SELECT service, instance, last_ns, doc FROM registry",
                "INSERT OR REPLACE INTO registry (service, instance, last_ns, doc) \
                 VALUES (?1, ?2, ?3, ?4)",
            ),
            (
                "SELECT id, service, state, last_seen, doc FROM alerts",
                "INSERT OR REPLACE INTO alerts (id, service, state, last_seen, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            ),
        ] {
            let mut stmt = old.prepare(select).map_err(err)?;
            let n = stmt.column_count();
            let mut rows = stmt.query([]).map_err(err)?;
            let mut ins = tx.prepare(insert).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let values: Vec<Sql> = (0..n)
                    .map(|i| row.get::<_, Sql>(i))
                    .collect::<Result<_, _>>()
                    .map_err(err)?;
                ins.execute(rusqlite::params_from_iter(values))
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    /// Runs a read on one of the reader connection sets, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut ReaderSet, &Ctx) -> Result<T, StoreError> + Send + 'static,
    {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let reader = Arc::clone(&self.readers[i]);
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || {
            let mut set = reader.lock().unwrap_or_else(|e| e.into_inner());
            set.sweep(&ctx);
            // What another process added to the dictionary since. Skipped while this
            // process's writer holds the catalog: it adds its own entries itself, and a
            // query must not wait behind a write waiting for a lock.
            if let Ok(mut cat) = ctx.catalog.try_write() {
                cat.load_new(&set.shared)?;
            }
            // An id another process added after the catalog was loaded (its dictionary
            // commits before its day partition, so a query can meet the row first, or the
            // load above was skipped): the catalog is loaded again, waiting for it this time,
            // and the read made again. A writer that keeps adding names can make the new read
            // meet newer ids still, so this repeats while the catalog holds more than when the
            // failed read began (a load here, or one by a concurrent query), at most
            // `CATALOG_RELOADS` times; a miss with nothing new to load is corruption.
            let extent = |ctx: &Ctx| {
                let cat = ctx.catalog.read().unwrap_or_else(|e| e.into_inner());
                (cat.max_string, cat.max_resource)
            };
            let mut seen = extent(&ctx);
            let mut result = f(&mut set, &ctx);
            for _ in 0..CATALOG_RELOADS {
                match &result {
                    Err(e) if is_catalog_miss(e) => {}
                    _ => break,
                }
                let now = {
                    let mut cat = ctx.catalog.write().unwrap_or_else(|e| e.into_inner());
                    cat.load_new(&set.shared)?;
                    (cat.max_string, cat.max_resource)
                };
                if now == seen {
                    break;
                }
                seen = now;
                result = f(&mut set, &ctx);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    async fn with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer, &Ctx) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || {
            let mut guard = writer.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard, &ctx)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
    }
}

/// The `user_version` in an SQLite file's header (0 for a file too short to hold one),
/// without opening it as a database; `None` when there is no file.
fn header_version(path: &Path) -> Option<i32> {
    use std::io::Read;
    let mut header = [0u8; 64];
    let mut file = std::fs::File::open(path).ok()?;
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => return Some(0),
            Ok(n) => read += n,
            Err(_) => return Some(0),
        }
    }
    Some(i32::from_be_bytes([
        header[60], header[61], header[62], header[63],
    ]))
}

/// Where the migration lock is taken (an SQLite file holding no data).
pub const MIGRATION_LOCK_FILE: &str = "dlog.migrating.sqlite3";

/// Takes the store's migration lock: a write transaction taken at once on
/// [`MIGRATION_LOCK_FILE`], held until the connection is dropped; a second process waits for
/// it (as long as a migration of a large store may take).
fn migration_lock(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join(MIGRATION_LOCK_FILE);
    let err = |e: rusqlite::Error| StoreError::Embedded {
        path: path.display().to_string(),
        message: format!("taking the migration lock: {e}"),
    };
    let conn = Connection::open(&path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(3600)).map_err(err)?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    Ok(conn)
}

/// Brings a partition of layout 2, 3 or 4 to this build's layout: turns its attribute index into
/// posting lists (layouts 2 to 4, see [`attrs_to_postings`]), adds the span id column (layout
/// 2) and fills it from each record's encoded rest, then marks the open traces (layout 3); a
/// partition already at this layout is left alone. The version is read inside a write
/// transaction taken at once, so two processes opening the store together (`dlog up` and
/// `dlog viewer`) migrate it once: the second waits, then finds the new layout. A record whose
/// encoded rest cannot be read keeps no span id (a warning names it) rather than leaving the
/// store unopenable.
fn migrate_partition(path: &Path, cat: &Catalog) -> Result<(), StoreError> {
    let err = |e: rusqlite::Error| StoreError::Embedded {
        path: path.display().to_string(),
        message: format!("upgrading the partition's layout: {e}"),
    };
    let mut conn = Connection::open(path).map_err(err)?;
    configure(&conn).map_err(err)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let version: i32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if !(2..=4).contains(&version) {
        return Ok(());
    }
    if version == 4 {
        attrs_to_postings(&tx).map_err(err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        return tx.commit().map_err(err);
    }
    if version == 2 {
        tx.execute_batch(schema::PARTITION_2_TO_3).map_err(err)?;
        let mut read = tx.prepare("SELECT id, rest FROM logs").map_err(err)?;
        let mut write = tx
            .prepare("UPDATE logs SET span_id = ?1 WHERE id = ?2")
            .map_err(err)?;
        let mut rows = read.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let id: i64 = row.get(0).map_err(err)?;
            let rest: Vec<u8> = row.get(1).map_err(err)?;
            let span_id = codec::open_body(&rest)
                .map_err(|e| e.to_string())
                .and_then(|raw| Dec::new(&raw).opt_str().map_err(|e| e.to_string()));
            match span_id {
                Ok(Some(span)) => {
                    write.execute(params![id_value(&span), id]).map_err(err)?;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    partition = %path.display(),
                    log = id,
                    error = %e,
                    "a stored log record cannot be read; it keeps no span id"
                ),
            }
        }
        drop(rows);
        drop(read);
        drop(write);
        tx.execute_batch(schema::PARTITION_3_INDEXES).map_err(err)?;
    }
    let has_open = tx
        .prepare("SELECT 1 FROM pragma_table_info('traces') WHERE name = 'open'")
        .and_then(|mut s| s.exists([]))
        .map_err(err)?;
    if !has_open {
        tx.execute_batch("ALTER TABLE traces ADD COLUMN open INTEGER NOT NULL DEFAULT 0;")
            .map_err(err)?;
    }
    // The traces some of whose spans name a parent this partition does not hold, one pass
    // over the spans in trace order.
    {
        let mut read = tx
            .prepare("SELECT trace_no, span_id, parent FROM spans ORDER BY trace_no")
            .map_err(err)?;
        let mut mark = tx
            .prepare("UPDATE traces SET open = 1 WHERE trace_no = ?1")
            .map_err(err)?;
        let mut rows = read.query([]).map_err(err)?;
        let mut current: Option<i64> = None;
        let mut ids: HashSet<String> = HashSet::default();
        let mut parents: Vec<String> = Vec::new();
        let mut flush = |no: Option<i64>, ids: &mut HashSet<String>, parents: &mut Vec<String>| {
            let open = parents.iter().any(|p| !ids.contains(p));
            ids.clear();
            parents.clear();
            match no {
                Some(no) if open => mark.execute([no]).map(|_| ()),
                _ => Ok(()),
            }
        };
        while let Some(row) = rows.next().map_err(err)? {
            let no: i64 = row.get(0).map_err(err)?;
            if current != Some(no) {
                flush(current, &mut ids, &mut parents).map_err(err)?;
                current = Some(no);
            }
            ids.extend(id_text(row.get_ref(1).map_err(err)?));
            parents.extend(id_text(row.get_ref(2).map_err(err)?));
        }
        flush(current, &mut ids, &mut parents).map_err(err)?;
    }
    tx.execute_batch(schema::PARTITION_4_INDEXES).map_err(err)?;
    // Each log's identity next to it, in the time index that orders and deduplicates logs.
    let has_doc_id = tx
        .prepare("SELECT 1 FROM pragma_table_info('logs') WHERE name = 'doc_id'")
        .and_then(|mut s| s.exists([]))
        .map_err(err)?;
    if !has_doc_id {
        tx.execute_batch("ALTER TABLE logs ADD COLUMN doc_id BLOB;")
            .map_err(err)?;
        // In time order, so that two rows of one time with one identity are seen together:
        // a time past i64::MAX was stored clipped, so logs that differed only there decode
        // alike. The first keeps the identity (a replay finds it), the others keep none, so
        // the unique index below can be built.
        let mut read = tx
            .prepare(&format!("SELECT {LOG_COLS} FROM logs l ORDER BY l.time_ns"))
            .map_err(err)?;
        let mut write = tx
            .prepare("UPDATE logs SET doc_id = ?1 WHERE id = ?2")
            .map_err(err)?;
        let mut rows = read.query([]).map_err(err)?;
        let mut seen_time = None;
        let mut seen: HashSet<Vec<u8>> = HashSet::default();
        while let Some(row) = rows.next().map_err(err)? {
            let id: i64 = row.get(0).map_err(err)?;
            let time: i64 = row.get(1).map_err(err)?;
            if seen_time != Some(time) {
                seen_time = Some(time);
                seen.clear();
            }
            match decode_log(row, cat) {
                Ok(l) => {
                    let key = doc_key(&l.doc_id());
                    if seen.insert(key.clone()) {
                        write.execute(params![key, id]).map_err(err)?;
                    } else {
                        tracing::warn!(
                            partition = %path.display(),
                            log = id,
                            "a stored log record reads the same as another of its time; \
                             it keeps no document id"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    partition = %path.display(),
                    log = id,
                    error = %e,
                    "a stored log record cannot be read; it keeps no document id"
                ),
            }
        }
    }
    tx.execute_batch(
        "DROP TABLE IF EXISTS log_ids;
         DROP INDEX IF EXISTS logs_by_time;
         CREATE UNIQUE INDEX logs_by_time ON logs (time_ns, doc_id);",
    )
    .map_err(err)?;
    attrs_to_postings(&tx).map_err(err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// Turns a partition's attribute index of one row per (key, value, trace number), layouts 2
/// to 4, into posting lists (layout 5), read in index order, and adds the (empty) log pack
/// tables; a partition without the old table is left with an empty index.
fn attrs_to_postings(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute_batch(schema::POSTINGS)?;
    tx.execute_batch(schema::LOG_PACKS)?;
    let has_attrs = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'attrs'")?
        .exists([])?;
    if !has_attrs {
        return Ok(());
    }
    {
        let mut read =
            tx.prepare("SELECT key, value, trace_no FROM attrs ORDER BY key, value, trace_no")?;
        let mut rows = read.query([])?;
        let mut group: Option<(i64, Sql)> = None;
        let mut nos = Vec::new();
        while let Some(row) = rows.next()? {
            let key: i64 = row.get(0)?;
            let value: Sql = row.get(1)?;
            let no: i64 = row.get(2)?;
            if group.as_ref().is_none_or(|(k, v)| *k != key || *v != value) {
                if let Some((k, v)) = &group {
                    postings::append(tx, *k, v, &nos)?;
                }
                group = Some((key, value));
                nos.clear();
            }
            nos.push(no);
        }
        if let Some((k, v)) = &group {
            postings::append(tx, *k, v, &nos)?;
        }
    }
    tx.execute_batch("DROP TABLE attrs;")
}

fn is_v1(path: &Path) -> Result<bool, StoreError> {
    let err = |e: rusqlite::Error| StoreError::Embedded {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    // Read-write (never created): a read-only connection cannot open a WAL file whose
    // shared-memory index another connection is just removing.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version != 0 {
        return Ok(false);
    }
    // The first layout kept a JSON `doc` column in its spans table.
    let has_doc: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('spans') WHERE name = 'doc'")
        .and_then(|mut s| s.exists([]))
        .map_err(err)?;
    Ok(has_doc)
}

fn parse<T: serde::de::DeserializeOwned>(id: &str, doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        message: e.to_string(),
    })
}

fn read_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The FTS5 query for a substring: its ASCII trigrams, all required (the full substring is
/// then checked with LIKE). `None` when the text has no trigram to look up.
fn trigram_query(text: &str) -> Option<String> {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut grams: Vec<String> = Vec::new();
    for w in chars.windows(3) {
        if w.iter().all(|c| c.is_ascii() && !c.is_ascii_control()) {
            let g: String = w.iter().collect();
            if !grams.contains(&g) {
                grams.push(g);
            }
        }
    }
    if grams.is_empty() {
        return None;
    }
    if grams.len() > MAX_TRIGRAMS {
        let step = grams.len() as f64 / MAX_TRIGRAMS as f64;
        grams = (0..MAX_TRIGRAMS)
            .map(|i| grams[(i as f64 * step) as usize].clone())
            .collect();
    }
    Some(
        grams
            .iter()
            .map(|g| format!("\"{}\"", g.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" AND "),
    )
}

/// Accumulates a WHERE clause and its parameters.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Sql>,
}

impl Filter {
    fn push(&mut self, clause: &str, values: impl IntoIterator<Item = Sql>) {
        // Placeholders are written as `?` and numbered here, so clauses compose.
        let mut numbered = String::with_capacity(clause.len() + 8);
        let mut values = values.into_iter();
        for c in clause.chars() {
            if c == '?' {
                self.params.push(values.next().unwrap_or(Sql::Null));
                numbered.push_str(&format!("?{}", self.params.len()));
            } else {
                numbered.push(c);
            }
        }
        self.clauses.push(numbered);
    }

    /// `column` is one of `ids`, bound as one JSON array: a list of any length takes one
    /// parameter (a `?` per id breaks past SQLite's 32,766 variables, e.g. a service with
    /// 40,000 instances).
    fn push_in(&mut self, column: &str, ids: &[i64]) {
        self.push(
            &format!("{column} IN (SELECT value FROM json_each(?))"),
            [id_list(ids)],
        );
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// As [`Filter::sql`], with the trace numbers the attribute index gave (`candidates` of
    /// them) bound as one array parameter after this filter's own: a few are looked up by
    /// number and then sorted, many are tested while the traces are read in start order.
    fn sql_with(&self, candidates: Option<usize>) -> String {
        let mut clauses = self.clauses.clone();
        if let Some(n) = candidates {
            let k = self.params.len() + 1;
            clauses.push(if n <= LOOKUP_CANDIDATES {
                format!("trace_no IN rarray(?{k})")
            } else {
                format!("+trace_no IN rarray(?{k})")
            });
        }
        if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        }
    }
}

/// Index candidates up to this many (in one day partition) are looked up by trace number;
/// past it, reading the traces in start order and testing each against the set finds the
/// newest ones sooner than sorting every candidate.
const LOOKUP_CANDIDATES: usize = 4096;

/// The trace numbers of a partition found in the attribute index under every term (each a
/// union of posting lists), sorted and deduplicated.
fn trace_candidates(conn: &Connection, terms: &[Vec<(i64, Sql)>]) -> Result<Vec<i64>, StoreError> {
    let mut out: Option<Vec<i64>> = None;
    for alternatives in terms {
        let mut nos = Vec::new();
        for (k, v) in alternatives {
            postings::read(conn, *k, v, &mut nos).map_err(|message| StoreError::Corrupt {
                id: "attribute index".into(),
                message,
            })?;
        }
        postings::normalize(&mut nos);
        let next = match out {
            None => nos,
            Some(before) => postings::intersect(&before, &nos),
        };
        if next.is_empty() {
            return Ok(next);
        }
        out = Some(next);
    }
    Ok(out.unwrap_or_default())
}

/// The candidates as the array parameter `rarray` reads.
fn candidate_array(nos: Vec<i64>) -> std::rc::Rc<Vec<Sql>> {
    std::rc::Rc::new(nos.into_iter().map(Sql::Integer).collect())
}

fn text(s: &str) -> Sql {
    Sql::Text(s.to_string())
}

/// Integer ids as one JSON array parameter, for `IN (SELECT value FROM json_each(?))`.
fn id_list(ids: &[i64]) -> Sql {
    Sql::Text(serde_json::Value::from(ids).to_string())
}

/// One condition of a trace search, on a single span.
enum Term {
    Service(String),
    Operation(String),
    Attr(String, String),
}

impl Term {
    /// Whether span `s`, stored as `cols`, matches. A span whose own service or operation name
    /// found no room in the dictionary (`max_names`) matches [`NAMES_FULL`], under which it
    /// was indexed when written (its row names the stand-in).
    fn matches(&self, cols: &SpanCols, s: &SpanRecord, cat: &Catalog) -> bool {
        match self {
            Term::Service(name) if name == NAMES_FULL => cat
                .resource(cols.resource)
                .is_ok_and(|r| r.info.name == NAMES_FULL),
            Term::Operation(op) if op == NAMES_FULL => {
                cat.string(cols.op).is_ok_and(|op| op == NAMES_FULL)
            }
            Term::Service(name) => &s.service.name == name,
            Term::Operation(op) => &s.name == op,
            Term::Attr(k, v) => {
                s.attributes.get(k).is_some_and(|x| text_eq(x, v))
                    || resource_matches(&s.service, k, v)
                    || s.events
                        .iter()
                        .any(|e| e.attributes.get(k).is_some_and(|x| text_eq(x, v)))
            }
        }
    }

    /// The posting lists whose union holds every trace where some span may match, as
    /// (key, value); `None` when no trace can.
    fn index_keys(&self, cat: &Catalog) -> Option<Vec<(i64, Sql)>> {
        let mut keys = Vec::new();
        let resources = match self {
            Term::Service(name) => cat.resources_of(name),
            Term::Operation(op) => {
                let id = *cat.string_ids.get(op.as_str())?;
                keys.push((KEY_OPERATION, Sql::Integer(id)));
                Vec::new()
            }
            Term::Attr(k, v) => {
                if let Some(id) = cat.string_ids.get(k.as_str()) {
                    keys.extend(index_candidates(v).into_iter().map(|c| (*id, c)));
                }
                cat.resources_with(k, v)
            }
        };
        keys.extend(
            resources
                .into_iter()
                .map(|r| (KEY_RESOURCE, Sql::Integer(r))),
        );
        (!keys.is_empty()).then_some(keys)
    }
}

struct SummaryRow {
    trace_no: i64,
    trace_id: String,
    start: i64,
    duration: i64,
    root_service: i64,
    root_op: i64,
    span_count: i64,
    error_count: i64,
    services: Vec<u8>,
    /// Some span's parent is not in this partition: other spans may be in another one.
    open: bool,
}

const SUMMARY_COLS: &str = "trace_no, trace_id, start_ns, duration_ns, root_service, root_op, \
                            span_count, error_count, services, open";

fn read_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        trace_no: r.get(0)?,
        trace_id: id_text(r.get_ref(1)?).unwrap_or_default(),
        start: r.get(2)?,
        duration: r.get(3)?,
        root_service: r.get(4)?,
        root_op: r.get(5)?,
        span_count: r.get(6)?,
        error_count: r.get(7)?,
        services: r.get(8)?,
        open: r.get(9)?,
    })
}

fn to_summary(row: &SummaryRow, cat: &Catalog) -> Result<TraceSummary, StoreError> {
    let mut services = Vec::new();
    let mut d = Dec::new(&row.services);
    while d.remaining() > 0 {
        let id = d.u64().map_err(corrupt(&row.trace_id))? as i64;
        services.push(cat.string(id)?.to_string());
    }
    services.sort();
    services.dedup();
    Ok(TraceSummary {
        trace_id: row.trace_id.clone(),
        start_unix_nano: row.start as u64,
        duration_nanos: row.duration as u64,
        root_service: cat.string(row.root_service)?.to_string(),
        root_operation: cat.string(row.root_op)?.to_string(),
        span_count: row.span_count as usize,
        error_count: row.error_count as usize,
        services,
    })
}

/// Two summaries of one trace found in two partitions (spans that arrived more than a day
/// apart), merged; `a`'s root is kept.
fn merge_summaries(a: &mut TraceSummary, b: TraceSummary) {
    let end = (a.start_unix_nano + a.duration_nanos).max(b.start_unix_nano + b.duration_nanos);
    a.start_unix_nano = a.start_unix_nano.min(b.start_unix_nano);
    a.duration_nanos = end - a.start_unix_nano;
    a.span_count += b.span_count;
    a.error_count += b.error_count;
    a.services.extend(b.services);
    a.services.sort();
    a.services.dedup();
}

/// The parts of each of `ids` among `days`, one lookup per day for all of them.
fn parts_of(
    set: &mut ReaderSet,
    ctx: &Ctx,
    days: &[i64],
    ids: &[&str],
) -> Result<HashMap<String, Vec<(i64, i64)>>, StoreError> {
    let mut out: HashMap<String, Vec<(i64, i64)>> = HashMap::default();
    if ids.is_empty() {
        return Ok(out);
    }
    let list = Sql::Text(serde_json::Value::from(ids.to_vec()).to_string());
    for &day in days {
        let Some(conn) = set.part(ctx, day)? else {
            continue;
        };
        // Ids are stored as bytes (as text when not hex).
        let mut stmt = conn
            .prepare_cached(
                "SELECT trace_id, trace_no FROM traces WHERE trace_id IN \
                 (SELECT unhex(value) FROM json_each(?1) UNION ALL \
                  SELECT value FROM json_each(?1))",
            )
            .map_err(read_err)?;
        let rows = stmt
            .query_map([&list], |r| {
                Ok((
                    id_text(r.get_ref(0)?).unwrap_or_default(),
                    r.get::<_, i64>(1)?,
                ))
            })
            .map_err(read_err)?;
        for row in rows {
            let (id, no) = row.map_err(read_err)?;
            out.entry(id).or_default().push((day, no));
        }
    }
    Ok(out)
}

/// The summary of a whole trace from its parts: the start, duration, counts and services of
/// all its spans; the root of a part that holds its spans' parents (else the earliest part's).
fn whole_summary(
    set: &mut ReaderSet,
    ctx: &Ctx,
    parts: &[(i64, i64)],
) -> Result<Option<TraceSummary>, StoreError> {
    let mut rows = Vec::with_capacity(parts.len());
    for &(day, no) in parts {
        let Some(conn) = set.part(ctx, day)? else {
            continue;
        };
        let row = conn
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLS} FROM traces WHERE trace_no = ?1"
            ))
            .map_err(read_err)?
            .query_row([no], read_summary)
            .optional()
            .map_err(read_err)?;
        rows.extend(row);
    }
    rows.sort_by_key(|r| (r.open, r.start));
    let cat = ctx.catalog();
    let mut rows = rows.iter();
    let Some(first) = rows.next() else {
        return Ok(None);
    };
    let mut whole = to_summary(first, &cat)?;
    for row in rows {
        merge_summaries(&mut whole, to_summary(row, &cat)?);
    }
    Ok(Some(whole))
}

/// The trace-level conditions of a search, on a whole trace.
fn whole_matches(t: &TraceSummary, q: &TraceQuery) -> bool {
    q.min_duration
        .is_none_or(|d| u128::from(t.duration_nanos) >= d.as_nanos())
        && q.max_duration
            .is_none_or(|d| u128::from(t.duration_nanos) <= d.as_nanos())
        && q.time
            .start_unix_nano
            .is_none_or(|s| t.start_unix_nano >= s)
        && q.time.end_unix_nano.is_none_or(|e| t.start_unix_nano <= e)
}

/// The spans of one trace in one partition, in `get_trace` order, after a cursor.
fn trace_spans(
    conn: &Connection,
    cat: &Catalog,
    trace_id: &str,
    trace_no: i64,
    after: Option<&SpanCursor>,
    limit: Option<usize>,
) -> Result<Vec<SpanRecord>, StoreError> {
    Ok(
        trace_span_rows(conn, cat, trace_id, trace_no, after, limit)?
            .into_iter()
            .map(|(_, span)| span)
            .collect(),
    )
}

/// [`trace_spans`] with each span's stored columns (its resource and operation ids).
fn trace_span_rows(
    conn: &Connection,
    cat: &Catalog,
    trace_id: &str,
    trace_no: i64,
    after: Option<&SpanCursor>,
    limit: Option<usize>,
) -> Result<Vec<(SpanCols, SpanRecord)>, StoreError> {
    let mut f = Filter::default();
    f.push("trace_no = ?", [Sql::Integer(trace_no)]);
    if let Some(c) = after {
        f.push(
            "(start_ns, span_id) > (?, ?)",
            [Sql::Integer(ns(c.start_unix_nano)), id_value(&c.span_id)],
        );
    }
    let limit = limit.map_or(String::new(), |l| format!("LIMIT {l}"));
    let sql = format!(
        "SELECT {SPAN_COLS}, body FROM spans {} ORDER BY start_ns, span_id {limit}",
        f.sql()
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(f.params.iter()), |r| {
            Ok((read_cols(r)?, r.get::<_, Vec<u8>>(7)?))
        })
        .map_err(read_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (cols, body) = row.map_err(read_err)?;
        let span = decode_span(trace_id, &cols, &body, cat)?;
        out.push((cols, span));
    }
    Ok(out)
}

fn trace_no_of(conn: &Connection, trace_id: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT trace_no FROM traces WHERE trace_id = ?1")
        .map_err(read_err)?
        .query_row([id_value(trace_id)], |r| r.get(0))
        .optional()
        .map_err(read_err)
}

/// Every partition holding some of a trace, with its trace number there.
fn trace_partitions(
    set: &mut ReaderSet,
    ctx: &Ctx,
    trace_id: &str,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let mut out = Vec::new();
    for day in list_days(&ctx.dir).into_iter().rev() {
        if let Some(conn) = set.part(ctx, day)? {
            if let Some(no) = trace_no_of(conn, trace_id)? {
                out.push((day, no));
            }
        }
    }
    Ok(out)
}

/// A number read with `SELECT min/max(...)`, `None` for an empty table.
fn bound(conn: &Connection, sql: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(sql)
        .map_err(read_err)?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .map_err(read_err)
}

/// Log rows decoded by this process (see [`log_decodes`]).
static LOG_DECODES: AtomicU64 = AtomicU64::new(0);

/// Log rows decoded by this process so far: what a search cost, for tests.
#[doc(hidden)]
pub fn log_decodes() -> u64 {
    LOG_DECODES.load(Ordering::Relaxed)
}

fn decode_log(r: &rusqlite::Row<'_>, cat: &Catalog) -> Result<LogEntry, StoreError> {
    let id: i64 = r.get(0).map_err(read_err)?;
    let trace_id = id_text(r.get_ref(5).map_err(read_err)?);
    let rest: Vec<u8> = r.get(7).map_err(read_err)?;
    decode_log_parts(
        &format!("log {id}"),
        LogParts {
            time: r.get(1).map_err(read_err)?,
            resource: r.get(2).map_err(read_err)?,
            level: r.get(3).map_err(read_err)?,
            severity: r.get(4).map_err(read_err)?,
            trace_id,
            body: r.get(6).map_err(read_err)?,
            rest: &rest,
        },
        cat,
    )
}

/// The columns of a stored log, from its row or its pack.
struct LogParts<'a> {
    time: i64,
    resource: i64,
    level: i64,
    severity: i64,
    trace_id: Option<String>,
    body: String,
    rest: &'a [u8],
}

fn decode_log_parts(what: &str, p: LogParts<'_>, cat: &Catalog) -> Result<LogEntry, StoreError> {
    LOG_DECODES.fetch_add(1, Ordering::Relaxed);
    let LogParts {
        time,
        resource,
        level,
        severity,
        trace_id,
        body,
        rest,
    } = p;
    let what = what.to_string();
    let raw = codec::open_body(rest).map_err(corrupt(&what))?;
    let mut d = Dec::new(&raw);
    let span_id = d.opt_str().map_err(corrupt(&what))?;
    let event_name = d.opt_str().map_err(corrupt(&what))?;
    let attributes = get_attrs(&mut d, cat)?;
    let service = get_resource(&mut d, cat, resource)?;
    let level = match get_names(&mut d)?.level {
        Some(level) => level,
        None => cat.string(level)?.to_string(),
    };
    Ok(LogEntry {
        time_unix_nano: time as u64,
        severity_number: severity as i32,
        level,
        body,
        trace_id,
        span_id,
        event_name,
        service,
        attributes,
    })
}

const LOG_COLS: &str =
    "l.id, l.time_ns, l.resource, l.level, l.severity, l.trace_id, l.body, l.rest";

impl Backend for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[async_trait]
impl SpanWriter for EmbeddedStore {
    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        let now = crate::store::now_unix_nano();
        // Disk full, I/O errors and lock timeouts may pass: the stage retries the batch.
        // On a multi-threaded runtime the batch is written in place (the worker's other tasks
        // move to another thread meanwhile), without the copy a blocking task needs: copying
        // and dropping a batch of records took a tenth of a write. The calling task, and any
        // future it polls beside this one (`join!`, `select!`), waits for the write.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            return tokio::task::block_in_place(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                    write_docs(&mut guard, &self.ctx, docs, now)
                }))
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "write task failed: it panicked".to_string(),
                    ))
                })
            });
        }
        let docs = docs.to_vec();
        self.with_writer(move |w, ctx| write_docs(w, ctx, &docs, now))
            .await
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl TraceReader for EmbeddedStore {
    async fn get_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let trace_id = trace_id.to_ascii_lowercase();
        self.read(move |set, ctx| {
            let mut spans = Vec::new();
            for (day, no) in trace_partitions(set, ctx, &trace_id)? {
                let cat = ctx.catalog();
                if let Some(conn) = set.part(ctx, day)? {
                    spans.extend(trace_spans(conn, &cat, &trace_id, no, None, None)?);
                }
            }
            sort_spans(&mut spans);
            Ok(spans)
        })
        .await
    }

    async fn get_trace_page(
        &self,
        trace_id: &str,
        after: Option<&SpanCursor>,
        limit: usize,
    ) -> Result<Vec<SpanRecord>, StoreError> {
        let trace_id = trace_id.to_ascii_lowercase();
        let after = after.cloned();
        self.read(move |set, ctx| {
            let mut spans = Vec::new();
            for (day, no) in trace_partitions(set, ctx, &trace_id)? {
                let cat = ctx.catalog();
                if let Some(conn) = set.part(ctx, day)? {
                    spans.extend(trace_spans(
                        conn,
                        &cat,
                        &trace_id,
                        no,
                        after.as_ref(),
                        Some(limit),
                    )?);
                }
            }
            sort_spans(&mut spans);
            spans.truncate(limit);
            Ok(spans)
        })
        .await
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        let query = query.clone();
        self.read(move |set, ctx| find_traces(set, ctx, &query))
            .await
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.read(|set, _| {
            let mut stmt = set
                .shared
                .prepare("SELECT DISTINCT service FROM operations ORDER BY service")
                .map_err(read_err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(read_err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(read_err)
        })
        .await
    }

    async fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError> {
        let service = service.to_string();
        self.read(move |set, _| {
            let mut stmt = set
                .shared
                .prepare(
                    "SELECT operation, span_kind FROM operations WHERE service = ?1 \
                     ORDER BY operation, span_kind",
                )
                .map_err(read_err)?;
            let rows = stmt
                .query_map([&service], |r| {
                    Ok(Operation {
                        name: r.get(0)?,
                        span_kind: r.get(1)?,
                    })
                })
                .map_err(read_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(read_err)
        })
        .await
    }
}

#[async_trait]
impl DependencyReader for EmbeddedStore {
    async fn dependencies(&self, time: TimeRange) -> Result<Dependencies, StoreError> {
        self.read(move |set, ctx| {
            // Whole hours of the range from the hourly counts, the ragged ends from the
            // edges themselves.
            let s = i128::from(ns(time.start_unix_nano.unwrap_or(0)));
            let e = i128::from(ns(time.end_unix_nano.unwrap_or(u64::MAX)));
            let h = i128::from(HOUR_NS);
            let (h_lo, h_hi) = ((s + h - 1) / h, (e + 1) / h - 1);
            let mut pieces: Vec<(&str, i64, i64)> = Vec::new();
            const EDGES: &str = "SELECT caller, callee, COUNT(*), SUM(error) FROM edges \
                                 WHERE start_ns >= ?1 AND start_ns <= ?2 GROUP BY caller, callee";
            const HOURS: &str = "SELECT caller, callee, SUM(calls), SUM(errors) FROM edge_hours \
                                 WHERE hour >= ?1 AND hour <= ?2 GROUP BY caller, callee";
            if h_lo <= h_hi {
                pieces.push((HOURS, h_lo as i64, h_hi as i64));
                if s < h_lo * h {
                    pieces.push((EDGES, s as i64, (h_lo * h - 1) as i64));
                }
                if (h_hi + 1) * h <= e {
                    pieces.push((EDGES, ((h_hi + 1) * h) as i64, e as i64));
                }
            } else {
                pieces.push((EDGES, s as i64, e as i64));
            }
            let mut edges: HashMap<(i64, i64), (u64, u64)> = HashMap::default();
            for day in days_in(set, ctx, time.start_unix_nano, time.end_unix_nano)? {
                let Some(conn) = set.part(ctx, day)? else {
                    continue;
                };
                for (sql, lo, hi) in &pieces {
                    let mut stmt = conn.prepare_cached(sql).map_err(read_err)?;
                    let rows = stmt
                        .query_map([lo, hi], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                            ))
                        })
                        .map_err(read_err)?;
                    for row in rows {
                        let (caller, callee, calls, errors) = row.map_err(read_err)?;
                        let e = edges.entry((caller, callee)).or_default();
                        e.0 += calls as u64;
                        e.1 += errors as u64;
                    }
                }
            }
            edges.retain(|_, (calls, _)| *calls > 0);
            let cat = ctx.catalog();
            let mut observed = Vec::with_capacity(edges.len());
            for ((caller, callee), (calls, errors)) in edges {
                observed.push(DependencyEdge {
                    caller: cat.string(caller)?.to_string(),
                    callee: cat.string(callee)?.to_string(),
                    calls,
                    errors,
                });
            }
            observed.sort();
            let mut declared = Vec::new();
            for entry in registry(&set.shared, None)? {
                for dep in entry.dependencies {
                    declared.push(DeclaredDependency {
                        service: entry.service.clone(),
                        depends_on: dep,
                    });
                }
            }
            declared.sort();
            declared.dedup();
            Ok(Dependencies { observed, declared })
        })
        .await
    }
}

#[async_trait]
impl LogReader for EmbeddedStore {
    async fn search_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let query = query.clone();
        self.read(move |set, ctx| search_logs(set, ctx, &query))
            .await
    }
}

#[async_trait]
impl StatusReader for EmbeddedStore {
    async fn service_status(&self, query: &StatusQuery) -> Result<Vec<InstanceStatus>, StoreError> {
        let service = query.service.clone();
        let now = query
            .now_unix_nano
            .unwrap_or_else(crate::store::now_unix_nano);
        let silent_after = query.silent_after;
        self.read(move |set, _| {
            Ok(registry(&set.shared, service.as_deref())?
                .into_iter()
                .map(|e| InstanceStatus::derive(e, now, silent_after))
                .collect())
        })
        .await
    }
}

#[async_trait]
impl AlertStore for EmbeddedStore {
    async fn upsert_alerts(&self, alerts: &[AlertDoc]) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(alerts.len());
        for a in alerts {
            let doc = serde_json::to_string(a).map_err(|e| StoreError::Corrupt {
                id: a.id.clone(),
                message: e.to_string(),
            })?;
            rows.push((
                a.id.clone(),
                a.service.clone(),
                a.state.clone(),
                ns(a.last_seen_unix_nano),
                doc,
            ));
        }
        self.with_writer(move |w, ctx| {
            let err = unavailable(&ctx.dir);
            let tx = w.shared.transaction().map_err(&err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO alerts (id, service, state, last_seen, doc) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(&err)?;
                for (id, service, state, last, doc) in &rows {
                    stmt.execute(params![id, service, state, last, doc])
                        .map_err(&err)?;
                }
            }
            tx.commit().map_err(&err)
        })
        .await
    }

    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertDoc>, StoreError> {
        let mut f = Filter::default();
        if let Some(s) = &query.service {
            f.push("service = ?", [text(s)]);
        }
        if let Some(s) = &query.state {
            f.push("state = ?", [text(s)]);
        }
        let sql = format!(
            "SELECT id, doc FROM alerts {} ORDER BY last_seen DESC, id LIMIT {}",
            f.sql(),
            effective_limit(query.limit)
        );
        let params = f.params;
        self.read(move |set, _| {
            let mut stmt = set.shared.prepare(&sql).map_err(read_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(read_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, doc) = row.map_err(read_err)?;
                out.push(parse::<AlertDoc>(&id, &doc)?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_silence(&self, silence: &crate::silence::Silence) -> Result<(), StoreError> {
        crate::silence::sqlite::put_silence(self.dir(), silence).await
    }

    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        crate::silence::sqlite::delete_silence(self.dir(), id).await
    }

    async fn list_silences(&self) -> Result<Vec<crate::silence::Silence>, StoreError> {
        crate::silence::sqlite::list_silences(self.dir()).await
    }

    async fn ack_alert(&self, ack: &crate::silence::AlertAck) -> Result<(), StoreError> {
        crate::silence::sqlite::put_ack(self.dir(), ack).await
    }

    async fn list_acks(&self) -> Result<Vec<crate::silence::AlertAck>, StoreError> {
        crate::silence::sqlite::list_acks(self.dir()).await
    }
}

#[async_trait]
impl Retention for EmbeddedStore {
    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || usage(&ctx))
            .await
            .map_err(|e| StoreError::Unavailable(format!("usage task failed: {e}")))?
    }

    async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_unix_nano: u64,
    ) -> Result<RetentionReport, StoreError> {
        // By age first; then the closed days' logs go into packs; then by size, so that a
        // day the packing makes fit the budget is not dropped for the size its rows had.
        let by_age = RetentionPolicy {
            max_bytes: None,
            ..*policy
        };
        let by_size = RetentionPolicy {
            max_age: None,
            ..*policy
        };
        let readers: Vec<_> = self.readers.iter().map(Arc::clone).collect();
        let mut report = {
            let readers = readers.clone();
            self.with_writer(move |w, ctx| {
                apply_retention(w, ctx, &readers, &by_age, now_unix_nano)
            })
            .await?
        };
        let packed = self
            .compact_closed_days(now_unix_nano, COMPACT_SLICE, PACK_PER_PASS)
            .await?;
        if by_size.max_bytes.is_some() {
            let sized = self
                .with_writer(move |w, ctx| {
                    apply_retention(w, ctx, &readers, &by_size, now_unix_nano)
                })
                .await?;
            report.dropped.extend(sized.dropped);
            report.usage = sized.usage;
        } else if packed > 0 {
            report.usage = self.with_writer(|_, ctx| usage(ctx)).await?;
        }
        Ok(report)
    }
}

/// Log rows one retention pass moves into packs at most (about a minute and a half of
/// work); the next pass goes on where it stopped.
pub const PACK_PER_PASS: u64 = 4 << 20;
/// A day is packed once it ended this long ago: the records of its last minutes still
/// arriving (late spans, a sender's backlog) are written as rows first.
const PACK_GRACE_NS: u64 = 3_600_000_000_000;
/// Pages given back to the filesystem per hold of the writer (64 MiB of 4 KiB pages).
const RECLAIM_STEP_PAGES: i64 = 16_384;

impl EmbeddedStore {
    /// Moves the log rows of every day that ended more than an hour before `now` into packs
    /// (see `packs.rs`), `slice` rows per hold of the writer, so that writes go on between
    /// slices, and at most `budget` rows in all; then gives the day file's freed pages back to
    /// the filesystem in steps, also under the writer. Every retention pass runs it with
    /// [`COMPACT_SLICE`] and [`PACK_PER_PASS`]. Returns the records moved. A day that fails
    /// is logged and left for the next pass; the others go on. A record arriving later for a
    /// packed day is written as a row and moved on the next pass.
    pub async fn compact_closed_days(
        &self,
        now_unix_nano: u64,
        slice: usize,
        budget: u64,
    ) -> Result<u64, StoreError> {
        let closed_before = day_of(now_unix_nano.saturating_sub(PACK_GRACE_NS));
        let slice = slice.max(1);
        let mut total = 0u64;
        for day in list_days(&self.ctx.dir)
            .into_iter()
            .filter(|d| *d < closed_before)
        {
            if total >= budget {
                break;
            }
            match self.pack_day(day, slice, budget - total).await {
                Ok(moved) => total += moved,
                Err(e) => tracing::warn!(store = %self.ctx.dir.display(), day = %day_name(day),
                    error = %e, "packing a closed day's logs failed; the next retention pass tries again"),
            }
        }
        Ok(total)
    }

    async fn pack_day(&self, day: i64, slice: usize, budget: u64) -> Result<u64, StoreError> {
        let path = self.ctx.part_path(day);
        // Read first, on a connection of its own: a day with nothing to pack and nothing to
        // give back is not opened by the writer (which keeps today's connection open).
        let state = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || pack_state(&path))
                .await
                .map_err(|e| StoreError::Unavailable(format!("packing task failed: {e}")))??
        };
        let Some((to_pack, to_reclaim)) = state else {
            return Ok(0);
        };
        let mut moved = 0u64;
        if to_pack {
            loop {
                let n = self
                    .with_writer(move |w, ctx| compact_logs(w, ctx, day, slice))
                    .await?;
                moved += n as u64;
                if n < slice || moved >= budget {
                    break;
                }
            }
        }
        if to_pack || to_reclaim {
            while self
                .with_writer(move |w, ctx| reclaim_step(w, ctx, day))
                .await?
            {}
            // The closed day's connection goes (its cache filled by the packing), which also
            // removes its WAL once no other connection has the file open.
            self.with_writer(move |w, _| {
                w.close_partition(day);
                Ok(())
            })
            .await?;
        }
        if moved > 0 {
            tracing::info!(partition = %path.display(), records = moved,
                "closed day's logs moved into packs");
        }
        Ok(moved)
    }
}

/// Whether a day file has log rows to pack (or a text index left to clear), and whether it
/// has free pages (or a large WAL) to give back; `None` when there is no file.
fn pack_state(path: &Path) -> Result<Option<(bool, bool)>, StoreError> {
    let err = unavailable(path);
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(conn) => conn,
        Err(_) if !path.exists() => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
    let to_pack: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM logs) OR EXISTS (SELECT 1 FROM log_blocks)",
            [],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let wal = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    let to_reclaim = reclaimable(&conn).map_err(&err)? || wal > 0;
    Ok(Some((to_pack, to_reclaim)))
}

/// A file made with `auto_vacuum = INCREMENTAL` (every day file this build creates) with at
/// least an eighth of its pages free. Files made before keep their size until retention drops
/// them.
fn reclaimable(conn: &Connection) -> rusqlite::Result<bool> {
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    Ok(mode == 2 && free > 0 && free * 8 >= pages)
}

/// Gives up to [`RECLAIM_STEP_PAGES`] free pages of a day file back to the filesystem, on the
/// writer's connection; returns whether more are left to give.
fn reclaim_step(w: &mut Writer, ctx: &Ctx, day: i64) -> Result<bool, StoreError> {
    let path = ctx.part_path(day);
    if !path.exists() {
        return Ok(false);
    }
    let err = unavailable(&path);
    let conn = w.partition(ctx, day)?;
    if !reclaimable(conn).map_err(&err)? {
        truncate_wal(conn).map_err(&err)?;
        return Ok(false);
    }
    let free_before: i64 = conn
        .pragma_query_value(None, "freelist_count", |r| r.get(0))
        .map_err(&err)?;
    incremental_vacuum(conn, RECLAIM_STEP_PAGES).map_err(&err)?;
    let free: i64 = conn
        .pragma_query_value(None, "freelist_count", |r| r.get(0))
        .map_err(&err)?;
    // Done, or no longer shrinking (never loop on a step that frees nothing).
    if free >= free_before || !reclaimable(conn).map_err(&err)? {
        truncate_wal(conn).map_err(&err)?;
        return Ok(false);
    }
    Ok(true)
}

/// Gives up to `pages` free pages back to the filesystem. The pragma frees one page per step of
/// its statement: stepped to the end, in one transaction (an error of the commit, a full disk,
/// is returned, not lost in a statement reset).
fn incremental_vacuum(conn: &mut Connection, pages: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    tx.commit()
}

/// Copies a day file's WAL (the moved pages) back into it, so the file shrinks, and empties
/// the WAL file. Waits at most 100 ms for readers of an older snapshot (the writer is held):
/// when they keep it, the WAL stays until the next pass ([`pack_state`] looks at its size).
fn truncate_wal(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(100))?;
    let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    conn.busy_timeout(Duration::from_secs(10))?;
    match done {
        Ok(()) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn find_traces(
    set: &mut ReaderSet,
    ctx: &Ctx,
    q: &TraceQuery,
) -> Result<Vec<TraceSummary>, StoreError> {
    let limit = effective_limit(q.limit);
    let mut terms = Vec::new();
    if let Some(s) = &q.service {
        terms.push(Term::Service(s.clone()));
    }
    if let Some(o) = &q.operation {
        terms.push(Term::Operation(o.clone()));
    }
    if q.attributes.len() > MAX_ATTRIBUTE_FILTERS {
        return Err(StoreError::InvalidQuery(format!(
            "{} attribute filters; at most {MAX_ATTRIBUTE_FILTERS} are allowed",
            q.attributes.len()
        )));
    }
    for (k, v) in &q.attributes {
        terms.push(Term::Attr(k.clone(), v.clone()));
    }
    let mut term_keys = Vec::new();
    {
        let cat = ctx.catalog();
        for t in &terms {
            match t.index_keys(&cat) {
                Some(keys) => term_keys.push(keys),
                None => return Ok(Vec::new()),
            }
        }
    }
    let mut f = Filter::default();
    if let Some(d) = q.min_duration {
        f.push("duration_ns >= ?", [Sql::Integer(ns(d.as_nanos() as u64))]);
    }
    if let Some(d) = q.max_duration {
        f.push("duration_ns <= ?", [Sql::Integer(ns(d.as_nanos() as u64))]);
    }
    if let Some(s) = q.time.start_unix_nano {
        f.push("start_ns >= ?", [Sql::Integer(ns(s))]);
    }
    if let Some(e) = q.time.end_unix_nano {
        f.push("start_ns <= ?", [Sql::Integer(ns(e))]);
    }
    // Candidates are checked span by span when several conditions must hold on one span
    // (or the index may hold an older version of a replaced span), so pages are fetched
    // until enough pass.
    let page = if terms.is_empty() {
        limit
    } else {
        limit * 2 + 16
    };
    let sql_with = |candidates: Option<usize>| {
        format!(
            "SELECT {SUMMARY_COLS} FROM traces {} ORDER BY start_ns DESC, trace_id \
             LIMIT {page} OFFSET ?",
            f.sql_with(candidates)
        )
    };

    // Partitions newest trace start first; one whose newest start is older than the
    // limit-th trace found cannot contribute.
    // Every day, to complete the traces found; the days whose records' times can hold a
    // trace start in the range, to search.
    let days = list_days(&ctx.dir);
    let mut parts = Vec::new();
    for day in days_in(set, ctx, q.time.start_unix_nano, q.time.end_unix_nano)? {
        if let Some(conn) = set.part(ctx, day)? {
            if let Some(max) = bound(conn, "SELECT max(start_ns) FROM traces")? {
                parts.push((max, day));
            }
        }
    }
    parts.sort_unstable_by(|a, b| b.cmp(a));
    let sort = |found: &mut Vec<TraceSummary>| {
        found.sort_by(|a, b| {
            b.start_unix_nano
                .cmp(&a.start_unix_nano)
                .then_with(|| a.trace_id.cmp(&b.trace_id))
        })
    };
    let mut found: Vec<TraceSummary> = Vec::new();
    // Traces judged whole already (a span of theirs matched the conditions on one span).
    let mut seen: HashSet<String> = HashSet::default();
    for (max, day) in parts {
        if found.len() >= limit && (max as u64) < found[limit - 1].start_unix_nano {
            break;
        }
        // The traces of this file the attribute index gives for every term.
        let candidates = if term_keys.is_empty() {
            None
        } else {
            let Some(conn) = set.part(ctx, day)? else {
                continue;
            };
            let nos = trace_candidates(conn, &term_keys)?;
            if nos.is_empty() {
                continue;
            }
            Some(candidate_array(nos))
        };
        let sql = sql_with(candidates.as_ref().map(|c| c.len()));
        let mut taken = 0usize;
        let mut offset = 0i64;
        // Rows come newest part start first, and a trace as a whole starts no later than any
        // part of it: the file is read until a part starts before the limit-th trace found
        // (not until it gave `limit` traces: a split trace's whole starts earlier than its
        // part, and a newer trace may follow it in this file).
        let mut done = false;
        loop {
            let mut params: Vec<&dyn rusqlite::ToSql> =
                f.params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
            if let Some(c) = &candidates {
                params.push(c);
            }
            params.push(&offset);
            let rows: Vec<SummaryRow> = {
                let Some(conn) = set.part(ctx, day)? else {
                    break;
                };
                let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
                let rows = stmt
                    .query_map(&params[..], read_summary)
                    .map_err(read_err)?
                    .collect::<Result<_, _>>()
                    .map_err(read_err)?;
                rows
            };
            let n = rows.len();
            let mut rows = rows.into_iter();
            // In rounds of as many candidates as are still wanted: checked span by span,
            // then completed together from every day file (one lookup per day) and judged
            // whole, so a page is checked no further than needed.
            while !done {
                let want = limit.saturating_sub(taken).max(1);
                // The limit-th trace found, by the order of both the query and the result
                // (start, newest first, then trace id): a candidate after it cannot enter,
                // nor can any after that candidate in this file (a whole trace starts no
                // later than its part).
                let kth = (found.len() >= limit).then(|| {
                    let t = &found[limit - 1];
                    (t.start_unix_nano, t.trace_id.clone())
                });
                let mut matching = Vec::new();
                {
                    let Some(conn) = set.part(ctx, day)? else {
                        break;
                    };
                    let cat = ctx.catalog();
                    for row in rows.by_ref() {
                        // On a tie, only an id stored as bytes (lowercase hex) is known to
                        // come before every later row of the tie in the result's order too:
                        // other ids are stored as text, which SQLite orders before all bytes.
                        if kth.as_ref().is_some_and(|(start, id)| {
                            let row_start = row.start as u64;
                            row_start < *start
                                || (row_start == *start
                                    && row.trace_id > *id
                                    && matches!(
                                        id_value(&row.trace_id),
                                        rusqlite::types::Value::Blob(_)
                                    ))
                        }) {
                            done = true;
                            break;
                        }
                        if seen.contains(&row.trace_id) {
                            continue;
                        }
                        if !terms.is_empty() {
                            let spans = trace_span_rows(
                                conn,
                                &cat,
                                &row.trace_id,
                                row.trace_no,
                                None,
                                None,
                            )?;
                            if !spans
                                .iter()
                                .any(|(c, s)| terms.iter().all(|t| t.matches(c, s, &cat)))
                            {
                                continue;
                            }
                        }
                        matching.push(row);
                        if matching.len() >= want {
                            break;
                        }
                    }
                }
                if matching.is_empty() {
                    break;
                }
                let ids: Vec<&str> = matching.iter().map(|r| r.trace_id.as_str()).collect();
                let mut all_parts = parts_of(set, ctx, &days, &ids)?;
                for row in matching {
                    seen.insert(row.trace_id.clone());
                    // The trace-level conditions hold on the whole trace, whichever
                    // partitions hold its spans (a trace whose spans arrived more than a day
                    // apart).
                    let trace_parts = all_parts.remove(&row.trace_id).unwrap_or_default();
                    let whole = if trace_parts.len() > 1 {
                        whole_summary(set, ctx, &trace_parts)?
                    } else {
                        Some(to_summary(&row, &ctx.catalog())?)
                    };
                    if let Some(whole) = whole.filter(|t| whole_matches(t, q)) {
                        found.push(whole);
                        taken += 1;
                    }
                }
                sort(&mut found);
                found.truncate(limit);
            }
            if done || n < page {
                break;
            }
            offset += page as i64;
        }
        sort(&mut found);
    }

    // A trace split over partitions may match as a whole where no part does on its own: a
    // minimum duration only the whole trace lasts, or a span matching in a part that started
    // after the range where the trace started. Such a trace has a part whose spans name
    // parents it does not hold (marked open), starting no earlier and lasting no longer
    // than the whole trace.
    //
    // Without a minimum duration, only a part starting after the range's end can hold the
    // matching span of such a trace (the parts starting in the range were searched above), and
    // it holds a span matching every condition: the conditions' index applies. With one, any
    // open part may belong to a trace lasting long enough: at most MAX_OPEN_CANDIDATES such
    // parts are read, newest first.
    if q.min_duration.is_some() || (!terms.is_empty() && q.time.end_unix_nano.is_some()) {
        let mut f = Filter::default();
        f.push("open = 1", []);
        if let Some(s) = q.time.start_unix_nano {
            f.push("start_ns >= ?", [Sql::Integer(ns(s))]);
        }
        if let Some(d) = q.max_duration {
            f.push("duration_ns <= ?", [Sql::Integer(ns(d.as_nanos() as u64))]);
        }
        let mut from = q.time.start_unix_nano;
        if q.min_duration.is_none() {
            if let Some(e) = q.time.end_unix_nano {
                f.push("start_ns > ?", [Sql::Integer(ns(e))]);
                from = Some(e);
            }
        }
        // Without a minimum duration, the parts searched hold a span matching every term.
        let open_keys = if q.min_duration.is_none() {
            term_keys
        } else {
            Vec::new()
        };
        let mut budget = MAX_OPEN_CANDIDATES;
        let sql_with = |candidates: Option<usize>| {
            format!(
                "SELECT trace_id FROM traces {} ORDER BY start_ns DESC LIMIT ?",
                f.sql_with(candidates)
            )
        };
        let mut open_days = days_in(set, ctx, from, None)?;
        open_days.sort_unstable_by(|a, b| b.cmp(a));
        for day in open_days {
            if budget == 0 {
                tracing::debug!(
                    store = %ctx.dir.display(),
                    "trace search: more open trace parts than are read for a whole-trace \
                     condition; the oldest are not checked"
                );
                break;
            }
            let ids: Vec<String> = {
                let Some(conn) = set.part(ctx, day)? else {
                    continue;
                };
                let candidates = if open_keys.is_empty() {
                    None
                } else {
                    let nos = trace_candidates(conn, &open_keys)?;
                    if nos.is_empty() {
                        continue;
                    }
                    Some(candidate_array(nos))
                };
                let sql = sql_with(candidates.as_ref().map(|c| c.len()));
                let budget = budget as i64;
                let mut params: Vec<&dyn rusqlite::ToSql> =
                    f.params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
                if let Some(c) = &candidates {
                    params.push(c);
                }
                params.push(&budget);
                let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
                let rows = stmt
                    .query_map(&params[..], |r| {
                        Ok(id_text(r.get_ref(0)?).unwrap_or_default())
                    })
                    .map_err(read_err)?
                    .collect::<Result<_, _>>()
                    .map_err(read_err)?;
                rows
            };
            budget = budget.saturating_sub(ids.len());
            let fresh: Vec<String> = ids
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect();
            let mut all_parts = {
                let refs: Vec<&str> = fresh.iter().map(String::as_str).collect();
                parts_of(set, ctx, &days, &refs)?
            };
            for id in fresh {
                let trace_parts = all_parts.remove(&id).unwrap_or_default();
                if trace_parts.len() < 2 {
                    continue;
                }
                let Some(whole) =
                    whole_summary(set, ctx, &trace_parts)?.filter(|t| whole_matches(t, q))
                else {
                    continue;
                };
                if !terms.is_empty() {
                    let mut any = false;
                    for &(day, no) in &trace_parts {
                        let Some(conn) = set.part(ctx, day)? else {
                            continue;
                        };
                        let cat = ctx.catalog();
                        let spans = trace_span_rows(conn, &cat, &id, no, None, None)?;
                        if spans
                            .iter()
                            .any(|(c, s)| terms.iter().all(|t| t.matches(c, s, &cat)))
                        {
                            any = true;
                            break;
                        }
                    }
                    if !any {
                        continue;
                    }
                }
                found.push(whole);
            }
        }
        sort(&mut found);
    }
    found.truncate(limit);
    Ok(found)
}

/// The SQL conditions of a log query, its trigram query when it has text, and the same
/// conditions for the records of log packs; `None` when nothing can match (an unknown service
/// or level).
fn log_filter(ctx: &Ctx, q: &LogQuery) -> Option<(Filter, Option<String>, PackQuery)> {
    let mut f = Filter::default();
    let mut fts = None;
    let mut pq = PackQuery {
        start: q.time.start_unix_nano.map(ns),
        end: q.time.end_unix_nano.map(ns),
        trace: q
            .trace_id
            .as_ref()
            .map(|t| id_value(&t.to_ascii_lowercase())),
        span: q
            .span_id
            .as_ref()
            .map(|s| id_value(&s.to_ascii_lowercase())),
        ..Default::default()
    };
    {
        let cat = ctx.catalog();
        if let Some(t) = q.text.as_deref().filter(|t| !t.is_empty()) {
            fts = trigram_query(t);
            pq.fts = fts.clone();
            pq.text = Some(t.to_string());
            if let Some(m) = &fts {
                f.push("logs_text MATCH ?", [text(m)]);
            }
            f.push(
                "l.body LIKE ('%' || ? || '%') ESCAPE '\\'",
                [text(&like_escape(t))],
            );
        }
        if let Some(s) = &q.service {
            let ids = cat.resources_of(s);
            if ids.is_empty() {
                return None;
            }
            f.push_in("l.resource", &ids);
            pq.resources = Some(ids.iter().copied().collect());
        }
        if let Some(l) = &q.level {
            let level = if l.eq_ignore_ascii_case(NAMES_FULL) {
                NAMES_FULL.to_string()
            } else {
                l.to_ascii_uppercase()
            };
            let id = cat.string_ids.get(level.as_str())?;
            f.push("l.level = ?", [Sql::Integer(*id)]);
            pq.level = Some(*id);
        }
    }
    if let Some(t) = &q.trace_id {
        f.push("l.trace_id = ?", [id_value(&t.to_ascii_lowercase())]);
    }
    if let Some(s) = &q.span_id {
        f.push("l.span_id = ?", [id_value(&s.to_ascii_lowercase())]);
    }
    if let Some(s) = q.time.start_unix_nano {
        f.push("l.time_ns >= ?", [Sql::Integer(ns(s))]);
    }
    if let Some(e) = q.time.end_unix_nano {
        f.push("l.time_ns <= ?", [Sql::Integer(ns(e))]);
    }
    Some((f, fts, pq))
}

/// A log query's conditions on the records of a log pack: the rows' SQL conditions, checked
/// in Rust on each record of the packs the pack indexes point to.
#[derive(Default)]
struct PackQuery {
    /// The trigram query of the text: which packs may hold it.
    fts: Option<String>,
    /// The text itself, a case-insensitive substring of the body (as `LIKE`).
    text: Option<String>,
    resources: Option<HashSet<i64>>,
    level: Option<i64>,
    /// The ids as stored.
    trace: Option<Sql>,
    span: Option<Sql>,
    start: Option<i64>,
    end: Option<i64>,
}

/// Keeps `entry` among the `limit` first of `found`, in (time, identity) order: descending
/// when `newest_first`, else ascending. A record from a pack (`from_pack`) kept already as a
/// row is not kept twice: a search reads a day's rows before its packs, each statement in its
/// own snapshot, so a packing pass committed between the two shows a record in both. (Two
/// rows may share a key: an upgrade left the second of two records that read alike without
/// an identity, and both are answered.)
fn keep_found(
    found: &mut Vec<((u64, String), LogEntry)>,
    (key, entry): ((u64, String), LogEntry),
    limit: usize,
    newest_first: bool,
    from_pack: bool,
) {
    let at = if newest_first {
        found.partition_point(|(k, _)| *k > key)
    } else {
        found.partition_point(|(k, _)| *k < key)
    };
    if at < limit && !(from_pack && found.get(at).is_some_and(|(k, _)| *k == key)) {
        found.insert(at, (key, entry));
        found.truncate(limit);
    }
}

/// The newest (`max`) or oldest log time of a partition, rows and packs together.
fn log_time_bound(conn: &Connection, max: bool) -> Result<Option<i64>, StoreError> {
    bound(
        conn,
        if max {
            "SELECT max(t) FROM (SELECT max(time_ns) AS t FROM logs \
             UNION ALL SELECT max(max_time) FROM log_packs)"
        } else {
            "SELECT min(t) FROM (SELECT min(time_ns) AS t FROM logs \
             UNION ALL SELECT min(min_time) FROM log_packs)"
        },
    )
}

/// Searches a partition's log packs, adding what matches to `found`: kept in the query's
/// order (newest first, or oldest first past `after`), at most `limit`. Packs are read in
/// that order and the search stops at the first that cannot hold a record before the
/// `limit`-th found. Which packs are read: those listing the trace or span id asked for, else
/// those whose text holds every trigram of the text asked for, else every pack in the time
/// range.
fn search_packs(
    conn: &Connection,
    cat: &Catalog,
    pq: &PackQuery,
    newest_first: bool,
    after: Option<&crate::store::LogCursor>,
    limit: usize,
    found: &mut Vec<((u64, String), LogEntry)>,
) -> Result<(), StoreError> {
    let mut metas: Vec<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT pack, min_time, max_time FROM log_packs WHERE max_time >= ?1 AND min_time <= ?2",
        )
        .map_err(read_err)?
        .query_map(
            params![pq.start.unwrap_or(i64::MIN), pq.end.unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    if metas.is_empty() {
        return Ok(());
    }
    let listed = |sql: &str, param: Sql| -> Result<HashSet<i64>, StoreError> {
        conn.prepare_cached(sql)
            .map_err(read_err)?
            .query_map([param], |r| r.get(0))
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)
    };
    let ids_sql = "SELECT pack FROM log_pack_ids WHERE key = ?1";
    let wanted = if let Some(key) = pq.trace.as_ref().and_then(|t| packs::id_key(b't', t)) {
        Some(listed(ids_sql, Sql::Integer(key))?)
    } else if let Some(key) = pq.span.as_ref().and_then(|s| packs::id_key(b's', s)) {
        Some(listed(ids_sql, Sql::Integer(key))?)
    } else if let Some(m) = &pq.fts {
        Some(listed(
            "SELECT rowid FROM log_packs_text WHERE log_packs_text MATCH ?1",
            text(m),
        )?)
    } else {
        None
    };
    if let Some(w) = &wanted {
        metas.retain(|(pack, _, _)| w.contains(pack));
    }
    if newest_first {
        metas.sort_unstable_by_key(|m| std::cmp::Reverse(m.2));
    } else {
        metas.sort_unstable_by_key(|m| m.1);
    }
    let needle = pq.text.as_deref();
    for (pack, min, max) in metas {
        if found.len() >= limit {
            let k = found[limit - 1].0 .0;
            if newest_first && (max.max(0) as u64) < k {
                break;
            }
            if !newest_first && (min.max(0) as u64) > k {
                break;
            }
        }
        if after.is_some_and(|c| (max.max(0) as u64) < c.time_unix_nano) {
            continue;
        }
        let data: Vec<u8> = conn
            .prepare_cached("SELECT data FROM log_packs WHERE pack = ?1")
            .map_err(read_err)?
            .query_row([pack], |r| r.get(0))
            .map_err(read_err)?;
        let what = format!("log pack {pack}");
        let records = match packs::decode(&data) {
            Ok(records) => records,
            // One damaged pack must not fail every search over its hours.
            Err(e) => {
                tracing::warn!(pack, error = %e, "a log pack cannot be read; its records are left out");
                continue;
            }
        };
        for r in records {
            if pq.start.is_some_and(|s| r.time < s)
                || pq.end.is_some_and(|e| r.time > e)
                || pq.level.is_some_and(|l| r.level != l)
                || pq
                    .resources
                    .as_ref()
                    .is_some_and(|set| !set.contains(&r.resource))
                || pq
                    .trace
                    .as_ref()
                    .is_some_and(|t| r.trace_id.as_ref() != Some(t))
                || needle.is_some_and(|n| !packs::like_contains(&r.body, n))
            {
                continue;
            }
            let doc_key = r.doc_key;
            let entry = decode_log_parts(
                &what,
                LogParts {
                    time: r.time,
                    resource: r.resource,
                    level: r.level,
                    severity: r.severity,
                    trace_id: r.trace_id.as_ref().and_then(|t| id_text(t.into())),
                    body: r.body,
                    rest: &r.rest,
                },
                cat,
            )?;
            if let Some(s) = &pq.span {
                if entry.span_id.as_deref().map(id_value).as_ref() != Some(s) {
                    continue;
                }
            }
            let key = (
                entry.time_unix_nano,
                if doc_key.is_empty() {
                    entry.doc_id()
                } else {
                    hex::encode(doc_key)
                },
            );
            if !newest_first
                && after.is_some_and(|c| (c.time_unix_nano, c.doc_id.as_str()) >= (key.0, &key.1))
            {
                continue;
            }
            keep_found(found, (key, entry), limit, newest_first, true);
        }
    }
    Ok(())
}

fn search_logs(set: &mut ReaderSet, ctx: &Ctx, q: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
    let Some((f, fts, pq)) = log_filter(ctx, q) else {
        return Ok(Vec::new());
    };
    if q.order == LogOrder::OldestFirst {
        return search_logs_forward(set, ctx, q, f, fts.is_some(), &pq);
    }
    let limit = effective_limit(q.limit);
    // With text: the trigram index newest row first, until no older row can be newer than
    // the limit-th found. Without: the time index, newest first.
    let sql = backward_sql(fts.is_some(), &f.sql(), limit);
    let mut parts = Vec::new();
    for day in days_in(set, ctx, q.time.start_unix_nano, q.time.end_unix_nano)? {
        if let Some(conn) = set.part(ctx, day)? {
            if let Some(max) = log_time_bound(conn, true)? {
                parts.push((max, day));
            }
        }
    }
    parts.sort_unstable_by(|a, b| b.cmp(a));
    // (time, document id) → entry, newest first (the order of the time index).
    let mut found: Vec<((u64, String), LogEntry)> = Vec::new();
    let kth = |found: &Vec<((u64, String), LogEntry)>| {
        (found.len() >= limit).then(|| found[limit - 1].0 .0 as i64)
    };
    for (max, day) in parts {
        if kth(&found).is_some_and(|k| max < k) {
            break;
        }
        let Some(conn) = set.part(ctx, day)? else {
            continue;
        };
        let cat = ctx.catalog();
        let mut block_max: HashMap<i64, i64> = HashMap::default();
        let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(f.params.iter()))
            .map_err(read_err)?;
        while let Some(row) = rows.next().map_err(read_err)? {
            let id: i64 = row.get(0).map_err(read_err)?;
            if fts.is_some() {
                if let Some(k) = kth(&found) {
                    let block = id >> LOG_BLOCK_BITS;
                    let newest = match block_max.get(&block) {
                        Some(m) => *m,
                        None => {
                            let m: i64 = conn
                                .prepare_cached("SELECT max_time FROM log_blocks WHERE block = ?1")
                                .map_err(read_err)?
                                .query_row([block], |r| r.get(0))
                                .optional()
                                .map_err(read_err)?
                                .unwrap_or(i64::MAX);
                            block_max.insert(block, m);
                            m
                        }
                    };
                    if newest < k {
                        break;
                    }
                }
            }
            let entry = decode_log(row, &cat)?;
            let stored: Option<Vec<u8>> = row.get(8).map_err(read_err)?;
            let key = (
                entry.time_unix_nano,
                stored.map_or_else(|| entry.doc_id(), hex::encode),
            );
            keep_found(&mut found, (key, entry), limit, true, false);
        }
        drop(rows);
        drop(stmt);
        search_packs(conn, &cat, &pq, true, None, limit, &mut found)?;
    }
    Ok(found.into_iter().map(|(_, l)| l).collect())
}

/// The query of [`search_logs`] newest first: with text the trigram index, newest row first;
/// without, the time index backwards, which orders by (time, document id) so a page reads
/// `limit` rows however many records share the newest time.
fn backward_sql(text: bool, filter: &str, limit: usize) -> String {
    if text {
        format!(
            "SELECT {LOG_COLS}, l.doc_id FROM logs_text JOIN logs l ON l.id = logs_text.rowid \
             {filter} ORDER BY logs_text.rowid DESC"
        )
    } else {
        format!(
            "SELECT {LOG_COLS}, l.doc_id FROM logs l {filter} \
             ORDER BY l.time_ns DESC, l.doc_id DESC LIMIT {limit}"
        )
    }
}

/// The query of [`search_logs_forward`]: the time index from the start, oldest row first, and
/// with text a trigram probe of each row (the text index drives nothing, so no match is
/// sorted: a page stops reading once it has its rows).
fn forward_sql(text: bool, filter: &str) -> String {
    if text {
        format!(
            "SELECT {LOG_COLS}, l.doc_id FROM logs l CROSS JOIN logs_text \
             ON logs_text.rowid = l.id {filter} ORDER BY l.time_ns, l.doc_id"
        )
    } else {
        format!("SELECT {LOG_COLS}, l.doc_id FROM logs l {filter} ORDER BY l.time_ns, l.doc_id")
    }
}

/// [`LogOrder::OldestFirst`]: the time index, which orders by (time, document id), oldest row
/// first from the cursor on, in every partition that can hold records from the start on,
/// keeping the `limit` first after the cursor. A partition is read only until its rows sort
/// after the `limit`-th kept, and a row is decoded only once it is kept, so a page costs about
/// `limit` rows, however many records share the cursor's time.
fn search_logs_forward(
    set: &mut ReaderSet,
    ctx: &Ctx,
    q: &LogQuery,
    mut f: Filter,
    text: bool,
    pq: &PackQuery,
) -> Result<Vec<LogEntry>, StoreError> {
    let limit = effective_limit(q.limit);
    let after = q.after.as_ref();
    let from = after
        .map(|c| c.time_unix_nano)
        .max(q.time.start_unix_nano)
        .unwrap_or(0);
    f.push("l.time_ns >= ?", [Sql::Integer(ns(from))]);
    // Past the cursor inside the index (a cursor whose id is not a stored one is checked row
    // by row below).
    if let Some(c) = after.filter(|c| c.time_unix_nano >= from) {
        if c.doc_id.len() == 32
            && c.doc_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            f.push(
                "(l.time_ns, l.doc_id) > (?, ?)",
                [
                    Sql::Integer(ns(c.time_unix_nano)),
                    Sql::Blob(doc_key(&c.doc_id)),
                ],
            );
        }
    }
    let sql = forward_sql(text, &f.sql());
    let mut parts = Vec::new();
    for day in days_in(set, ctx, Some(from), q.time.end_unix_nano)? {
        if let Some(conn) = set.part(ctx, day)? {
            let max = log_time_bound(conn, true)?;
            let min = log_time_bound(conn, false)?;
            if let (Some(min), Some(max)) = (min, max) {
                if max >= ns(from) {
                    parts.push((min, day));
                }
            }
        }
    }
    parts.sort_unstable();
    let mut found: Vec<((u64, String), LogEntry)> = Vec::new();
    let kth = |found: &Vec<((u64, String), LogEntry)>| {
        (found.len() >= limit).then(|| found[limit - 1].0.clone())
    };
    for (min, day) in parts {
        if kth(&found).is_some_and(|k| min as u64 > k.0) {
            break;
        }
        let Some(conn) = set.part(ctx, day)? else {
            continue;
        };
        let cat = ctx.catalog();
        let mut stmt = conn.prepare_cached(&sql).map_err(read_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(f.params.iter()))
            .map_err(read_err)?;
        while let Some(row) = rows.next().map_err(read_err)? {
            let time: i64 = row.get(1).map_err(read_err)?;
            let stored: Option<Vec<u8>> = row.get(8).map_err(read_err)?;
            let mut entry = None;
            let key = match stored {
                Some(id) => (time as u64, hex::encode(id)),
                // A row whose id could not be filled when its partition was upgraded.
                None => {
                    let e = decode_log(row, &cat)?;
                    let key = (e.time_unix_nano, e.doc_id());
                    entry = Some(e);
                    key
                }
            };
            // Rows with an id come in key order: none after the limit-th kept can be kept. A
            // row without one sorts first among its time, whatever its decoded key.
            if kth(&found).is_some_and(|k| key > k) {
                if entry.is_some() {
                    continue;
                }
                break;
            }
            if after.is_some_and(|c| (c.time_unix_nano, c.doc_id.as_str()) >= (key.0, &key.1)) {
                continue;
            }
            let entry = match entry {
                Some(e) => e,
                None => decode_log(row, &cat)?,
            };
            keep_found(&mut found, (key, entry), limit, false, false);
        }
        drop(rows);
        drop(stmt);
        search_packs(conn, &cat, pq, false, after, limit, &mut found)?;
    }
    Ok(found.into_iter().map(|(_, l)| l).collect())
}

fn usage(ctx: &Ctx) -> Result<StoreUsage, StoreError> {
    let mut partitions = Vec::new();
    for day in list_days(&ctx.dir) {
        partitions.push(PartitionUsage {
            name: day_name(day),
            day_start_unix_nano: (day.max(0) as u64) * DAY_NS,
            bytes: file_bytes(&ctx.part_path(day)),
        });
    }
    let path = ctx.dir.join(DB_FILE);
    let shared = file_bytes(&path);
    let err = unavailable(&ctx.dir);
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
    let counter = |name: &str| -> Result<u64, StoreError> {
        let n: Option<i64> = conn
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&err)?;
        Ok(n.unwrap_or(0).max(0) as u64)
    };
    Ok(StoreUsage {
        bytes_used: shared + partitions.iter().map(|p| p.bytes).sum::<u64>(),
        oldest_unix_nano: partitions.first().map(|p| p.day_start_unix_nano),
        partitions,
        unindexed_attributes: counter(COUNTER_UNINDEXED_ATTRIBUTES)?,
        unindexed_resources: counter(COUNTER_UNINDEXED_RESOURCES)?,
        unindexed_names: counter(COUNTER_UNINDEXED_NAMES)?,
    })
}

/// Drops partitions past the age, then the oldest while over the byte budget (never today's
/// for size), and heartbeats, registry entries and alerts older than the age. Holds the
/// writer, and each reader set while its connections to the dropped days close, so no
/// query or write sees a partition vanish underneath it.
fn apply_retention(
    w: &mut Writer,
    ctx: &Ctx,
    readers: &[Arc<Mutex<ReaderSet>>],
    policy: &RetentionPolicy,
    now: u64,
) -> Result<RetentionReport, StoreError> {
    let today = day_of(now);
    let mut drop_days: BTreeSet<i64> = BTreeSet::new();
    if let Some(age) = policy.max_age {
        let cutoff = now.saturating_sub(age.as_nanos().min(u128::from(u64::MAX)) as u64);
        // A day goes once all of it is older than the cutoff.
        let first_kept = day_of(cutoff);
        drop_days.extend(list_days(&ctx.dir).into_iter().filter(|d| *d < first_kept));
        w.expired_before = Some(w.expired_before.map_or(first_kept, |e| e.max(first_kept)));
        let err = unavailable(&ctx.dir);
        let tx = w.shared.transaction().map_err(&err)?;
        tx.execute("DELETE FROM alerts WHERE last_seen < ?1", [ns(cutoff)])
            .map_err(&err)?;
        tx.execute("DELETE FROM registry WHERE last_ns < ?1", [ns(cutoff)])
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
    }
    let drop_day = |w: &mut Writer, day: i64| -> Result<(), StoreError> {
        w.close_partition(day);
        for r in readers {
            r.lock().unwrap_or_else(|e| e.into_inner()).close(day);
        }
        w.recent.retain(|_, d| *d != day);
        let path = ctx.part_path(day);
        for suffix in ["-wal", "-shm", ""] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StoreError::Unavailable(format!(
                        "cannot remove {}: {e}",
                        p.display()
                    )));
                }
            }
        }
        // After the file: a day left without bounds is searched whatever the range.
        w.shared
            .execute("DELETE FROM partition_bounds WHERE day = ?1", [day])
            .map_err(unavailable(&ctx.dir))?;
        Ok(())
    };
    let mut dropped = Vec::new();
    for day in &drop_days {
        drop_day(w, *day)?;
        dropped.push(day_name(*day));
    }
    if let Some(max) = policy.max_bytes {
        loop {
            let u = usage(ctx)?;
            if u.bytes_used <= max {
                break;
            }
            let Some(oldest) = list_days(&ctx.dir).into_iter().find(|d| *d < today) else {
                break;
            };
            drop_day(w, oldest)?;
            dropped.push(day_name(oldest));
        }
    }
    Ok(RetentionReport {
        dropped,
        usage: usage(ctx)?,
    })
}

fn registry(conn: &Connection, service: Option<&str>) -> Result<Vec<RegistryEntry>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT instance, doc FROM registry WHERE (?1 IS NULL OR service = ?1) \
             ORDER BY service, instance",
        )
        .map_err(read_err)?;
    let rows = stmt
        .query_map([service], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(read_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, doc) = row.map_err(read_err)?;
        out.push(parse::<RegistryEntry>(&id, &doc)?);
    }
    Ok(out)
}

/// Counts rows of a table, for tests and diagnostics: `spans`, `logs`, `heartbeats`,
/// `traces`, `postings` and `edges` summed over the day partitions, any other table of the
/// shared database.
pub fn count_rows(dir: impl AsRef<Path>, table: &str) -> Result<u64, StoreError> {
    let dir = dir.as_ref();
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::InvalidQuery(format!(
            "`{table}` is not a table name"
        )));
    }
    let count = |path: &Path| -> Result<u64, StoreError> {
        let err = |e: rusqlite::Error| StoreError::Embedded {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(err)
        .map(|n| n as u64)
    };
    if matches!(
        table,
        "spans" | "logs" | "heartbeats" | "traces" | "postings" | "edges"
    ) {
        // Logs moved into packs count as logs (one statement: one snapshot).
        let count = |path: &Path| -> Result<u64, StoreError> {
            if table != "logs" {
                return count(path);
            }
            let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(unavailable(path))?;
            conn.busy_timeout(Duration::from_secs(10))
                .map_err(unavailable(path))?;
            let n: i64 = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM logs) + \
                     (SELECT coalesce(sum(count), 0) FROM log_packs)",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable(path))?;
            Ok(n as u64)
        };
        let mut total = 0;
        for day in list_days(dir) {
            let path = dir
                .join(PARTITIONS_DIR)
                .join(format!("{}.sqlite3", day_name(day)));
            match count(&path) {
                Ok(n) => total += n,
                Err(_) if !path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    } else {
        count(&dir.join(DB_FILE))
    }
}

/// Bytes on disk per table and index (SQLite's `dbstat`), summed over the day partitions,
/// with the shared database as `shared`: for benchmarks and diagnostics.
pub fn table_bytes(
    dir: impl AsRef<Path>,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    let dir = dir.as_ref();
    let mut out = std::collections::BTreeMap::new();
    let sum = |path: &Path, out: &mut std::collections::BTreeMap<String, u64>, prefix: &str| {
        let err = |e: rusqlite::Error| StoreError::Embedded {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        let mut stmt = conn
            .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(err)?;
        for row in rows {
            let (name, bytes) = row.map_err(err)?;
            let key = if prefix.is_empty() {
                name
            } else {
                prefix.to_string()
            };
            *out.entry(key).or_insert(0) += bytes as u64;
        }
        Ok::<_, StoreError>(())
    };
    for day in list_days(dir) {
        let path = dir
            .join(PARTITIONS_DIR)
            .join(format!("{}.sqlite3", day_name(day)));
        sum(&path, &mut out, "")?;
    }
    sum(&dir.join(DB_FILE), &mut out, "shared")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resources are found again by the hash they were stored under: the streamed hash is the
    /// hash of the whole JSON, as stores written before computed it.
    #[test]
    fn resource_hash_is_the_hash_of_the_resource_json() {
        let mut info = ServiceInfo {
            name: "checkout \u{1b}[31m\"quoted\"".into(),
            instance_id: Some("i-1".into()),
            ..Default::default()
        };
        info.attributes
            .insert("deployment.environment".into(), Value::from("prod"));
        info.attributes
            .insert("k8s.pod.uid".into(), Value::from(42.5));
        for info in [info, ServiceInfo::default()] {
            let json = serde_json::to_vec(&info).unwrap();
            assert_eq!(resource_hash(&info), xxhash_rust::xxh3::xxh3_128(&json));
        }
    }

    #[test]
    fn like_patterns_match_literally() {
        assert_eq!(like_escape("50%_off\\"), "50\\%\\_off\\\\");
    }

    /// Regression: `PRAGMA incremental_vacuum(N)` run with `query_row` freed one page (its
    /// statement frees one per step), so giving back a day's pages took a commit per page.
    #[test]
    fn incremental_vacuum_frees_the_pages_asked_for_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("v.sqlite3")).unwrap();
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB NOT NULL);")
            .unwrap();
        {
            let tx = conn.transaction().unwrap();
            for _ in 0..600 {
                tx.execute("INSERT INTO t (b) VALUES (zeroblob(4000))", [])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        conn.execute("DELETE FROM t", []).unwrap();
        let free = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "freelist_count", |r| r.get(0))
                .unwrap()
        };
        let before = free(&conn);
        assert!(before >= 600, "{before}");
        incremental_vacuum(&mut conn, 100).unwrap();
        assert_eq!(free(&conn), before - 100);
        incremental_vacuum(&mut conn, 16_384).unwrap();
        assert_eq!(free(&conn), 0);
    }

    /// Regression: integers were compared as floats against floats but exactly against each
    /// other, which is not a total order (2^53 = 2^53 as a float = 2^53 + 1, yet 2^53 < 2^53
    /// + 1), and sorting a batch's index entries may panic on such a comparison.
    #[test]
    fn sql_order_is_a_total_order() {
        let big = 1i64 << 53;
        let values = [
            Sql::Integer(big),
            Sql::Integer(big + 1),
            Sql::Integer(big + 2),
            Sql::Real(big as f64),
            Sql::Real((big + 2) as f64),
            Sql::Integer(200),
            Sql::Real(200.0),
            Sql::Real(-0.0),
            Sql::Integer(0),
            Sql::Integer(i64::MIN),
            Sql::Integer(i64::MAX),
            Sql::Real(f64::MAX),
            Sql::Text("200".into()),
            Sql::Text("a".into()),
            Sql::Blob(vec![1]),
            Sql::Null,
        ];
        use std::cmp::Ordering::*;
        for a in &values {
            assert_eq!(sql_order(a, a), Equal, "{a:?}");
            for b in &values {
                assert_eq!(sql_order(a, b), sql_order(b, a).reverse(), "{a:?} {b:?}");
                for c in &values {
                    if sql_order(a, b) != Greater && sql_order(b, c) != Greater {
                        assert_ne!(sql_order(a, c), Greater, "{a:?} {b:?} {c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn filter_numbers_placeholders_in_order() {
        let mut f = Filter::default();
        f.push("a = ?", [text("x")]);
        f.push("b IN (?, ?)", [text("y"), text("z")]);
        assert_eq!(f.sql(), "WHERE a = ?1 AND b IN (?2, ?3)");
        assert_eq!(f.params.len(), 3);
    }

    /// Reading forward with text follows the time index and probes the text index per row,
    /// instead of collecting and sorting every match of the partition on each page.
    #[test]
    fn forward_text_search_reads_the_time_index_without_sorting() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::PARTITION).unwrap();
        let sql = forward_sql(true, "WHERE logs_text MATCH ?1 AND l.time_ns >= ?2");
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params!["\"abc\"", 0], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("logs_by_time"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    /// Regression: newest first, the time index was read by (time, row id) while it orders
    /// by (time, document id), so every record of the newest time was read and sorted for
    /// each page.
    #[test]
    fn newest_first_search_reads_the_time_index_without_sorting() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::PARTITION).unwrap();
        let sql = backward_sql(false, "WHERE l.time_ns <= ?1", 100);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params![i64::MAX], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("logs_by_time"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn text_queries_become_quoted_trigrams() {
        assert_eq!(
            trigram_query("Dead\"l").as_deref(),
            Some("\"dea\" AND \"ead\" AND \"ad\"\"\" AND \"d\"\"l\"")
        );
        assert_eq!(trigram_query("ab"), None);
        let long = "x".repeat(5) + &"abcdefghijklmnopqrstuvwxyz".repeat(3);
        assert_eq!(
            trigram_query(&long).unwrap().matches(" AND ").count(),
            MAX_TRIGRAMS - 1
        );
    }

    #[test]
    fn attribute_values_are_indexed_by_type_and_found_by_text() {
        assert_eq!(index_value(&serde_json::json!(200)), Sql::Integer(200));
        assert_eq!(index_value(&serde_json::json!(true)), text("true"));
        assert!(index_candidates("200").contains(&Sql::Integer(200)));
        assert!(index_candidates("0.25").contains(&Sql::Real(0.25)));
        assert_eq!(index_candidates("GET"), vec![text("GET")]);
        let long = "/api/v1/orders/{id}/items";
        assert_eq!(
            index_value(&serde_json::json!(long)),
            index_candidates(long)[0]
        );
        assert!(matches!(index_candidates(long)[0], Sql::Integer(_)));
    }
}
