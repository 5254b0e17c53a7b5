//! The embedded store: one SQLite database file in one directory, no server to run.
//!
//! Why SQLite: it is the most widely deployed and tested embedded database, durable across
//! crashes (WAL, atomic transactions), needs nothing but a directory, and answers every
//! query of the [`Store`] trait with plain SQL: the trace of a span is an index range scan,
//! dependencies are a self-join of child and parent spans, attribute filters use SQLite's
//! JSON functions over the stored document. A search-engine library (tantivy) would give
//! better free-text search but no joins and no transactional upserts, which the registry and
//! the exactly-once guarantee rely on.
//!
//! Layout: every document is kept whole as JSON in a `doc` column, next to the columns that
//! queries filter and sort on. Writes are batched into one transaction per [`Store::write`]
//! call; replays overwrite rows by their deterministic ids.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dlog_core::model::{LogEntry, SpanRecord};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::store::{
    effective_limit, sort_spans, AlertDoc, AlertQuery, DeclaredDependency, Dependencies,
    DependencyEdge, Document, InstanceStatus, LogQuery, Operation, RegistryEntry, StatusQuery,
    Store, StoreError, TimeRange, TraceQuery, TraceSummary, WriteOutcome,
};

/// File name of the database inside the store's directory.
pub const DB_FILE: &str = "dlog.sqlite3";

/// Read connections kept open next to the single writer (WAL lets them read concurrently).
const READERS: usize = 2;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS spans (
    trace_id     TEXT NOT NULL,
    span_id      TEXT NOT NULL,
    parent_span_id TEXT,
    service      TEXT NOT NULL,
    operation    TEXT NOT NULL,
    start_ns     INTEGER NOT NULL,
    duration_ns  INTEGER NOT NULL,
    is_error     INTEGER NOT NULL,
    doc          TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_service_start ON spans (service, start_ns);
CREATE INDEX IF NOT EXISTS spans_by_start ON spans (start_ns);

CREATE TABLE IF NOT EXISTS operations (
    service   TEXT NOT NULL,
    operation TEXT NOT NULL,
    span_kind TEXT NOT NULL,
    PRIMARY KEY (service, operation, span_kind)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS logs (
    doc_id   TEXT PRIMARY KEY,
    time_ns  INTEGER NOT NULL,
    service  TEXT NOT NULL,
    level    TEXT NOT NULL,
    trace_id TEXT,
    body     TEXT NOT NULL,
    doc      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (time_ns);
CREATE INDEX IF NOT EXISTS logs_by_service_time ON logs (service, time_ns);
CREATE INDEX IF NOT EXISTS logs_by_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS heartbeats (
    doc_id   TEXT PRIMARY KEY,
    service  TEXT NOT NULL,
    instance TEXT NOT NULL,
    time_ns  INTEGER NOT NULL,
    doc      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS registry (
    service  TEXT NOT NULL,
    instance TEXT NOT NULL,
    last_ns  INTEGER NOT NULL,
    doc      TEXT NOT NULL,
    PRIMARY KEY (service, instance)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS alerts (
    id        TEXT PRIMARY KEY,
    service   TEXT NOT NULL,
    state     TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    doc       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_last_seen ON alerts (last_seen);
"#;

/// The embedded SQLite store.
pub struct EmbeddedStore {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

struct Writer {
    conn: Connection,
    /// Operations already in the `operations` table, so a span write does not touch it.
    known_operations: HashSet<(String, String, String)>,
}

/// A row ready to insert, serialized outside the writer lock.
enum Row {
    Span {
        trace_id: String,
        span_id: String,
        parent: Option<String>,
        service: String,
        operation: String,
        kind: &'static str,
        start: i64,
        duration: i64,
        error: bool,
        doc: String,
    },
    Log {
        id: String,
        time: i64,
        service: String,
        level: String,
        trace_id: Option<String>,
        body: String,
        doc: String,
    },
    Heartbeat {
        id: String,
        service: String,
        instance: String,
        time: i64,
        doc: String,
        /// The registry entry's ordering time: the heartbeat's, clamped to the receive time.
        registry_time: i64,
        registry: String,
    },
}

fn ns(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let err = |message: String| StoreError::Embedded {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
        let path = dir.join(DB_FILE);
        let sql = |e: rusqlite::Error| err(e.to_string());
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        // WAL: readers never block the writer; synchronous=FULL makes every committed batch
        // survive a power loss, not only a crash of this process, since the stage acknowledges
        // Kafka offsets right after the commit.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let mut known_operations = HashSet::new();
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
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql)?;
            reader.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
            readers.push(Arc::new(Mutex::new(reader)));
        }
        Ok(EmbeddedStore {
            path: dir.to_path_buf(),
            writer: Arc::new(Mutex::new(Writer {
                conn,
                known_operations,
            })),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Runs a read on one of the reader connections, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.readers.len();
        let reader = Arc::clone(&self.readers[i]);
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Embedded {
                path: path.clone(),
                message: "a reader panicked earlier".into(),
            })?;
            f(&conn)
        })
        .await
        .map_err(|e| self.error(format!("read task failed: {e}")))?
    }

    async fn with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let mut guard = writer.lock().map_err(|_| StoreError::Embedded {
                path,
                message: "the writer panicked earlier".into(),
            })?;
            f(&mut guard)
        })
        .await
        .map_err(|e| self.error(format!("write task failed: {e}")))?
    }
}

/// The row a document is written as, received at `now` (ns since the Unix epoch).
fn to_row(doc: &Document, now: u64) -> Result<Row, serde_json::Error> {
    Ok(match doc {
        Document::Span(s) => Row::Span {
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            parent: s.parent_span_id.clone(),
            service: s.service.name.clone(),
            operation: s.name.clone(),
            kind: s.kind.as_str(),
            start: ns(s.start_unix_nano),
            duration: ns(s.duration_nanos()),
            error: s.is_error(),
            doc: serde_json::to_string(s)?,
        },
        Document::Log(l) => Row::Log {
            id: l.doc_id(),
            time: ns(l.time_unix_nano),
            service: l.service.name.clone(),
            level: l.level.clone(),
            trace_id: l.trace_id.clone(),
            body: l.body.clone(),
            doc: serde_json::to_string(l)?,
        },
        Document::Heartbeat(h) => {
            let registry = RegistryEntry::from_heartbeat(h, now);
            Row::Heartbeat {
                id: h.doc_id(),
                service: h.service.name.clone(),
                instance: h.service.instance_key().to_string(),
                time: ns(h.time_unix_nano),
                doc: serde_json::to_string(h)?,
                registry_time: ns(registry.last_heartbeat_unix_nano),
                registry: serde_json::to_string(&registry)?,
            }
        }
    })
}

fn insert_rows(writer: &mut Writer, rows: &[Option<Row>]) -> rusqlite::Result<()> {
    let tx = writer.conn.transaction()?;
    {
        let mut span_stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO spans (trace_id, span_id, parent_span_id, service, operation, \
             start_ns, duration_ns, is_error, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut op_stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO operations (service, operation, span_kind) VALUES (?1, ?2, ?3)",
        )?;
        let mut log_stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO logs (doc_id, time_ns, service, level, trace_id, body, doc) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut hb_stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO heartbeats (doc_id, service, instance, time_ns, doc) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        // A replayed older heartbeat must not roll the registry back.
        let mut reg_stmt = tx.prepare_cached(
            "INSERT INTO registry (service, instance, last_ns, doc) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (service, instance) DO UPDATE SET last_ns = excluded.last_ns, \
             doc = excluded.doc WHERE excluded.last_ns >= registry.last_ns",
        )?;
        let mut new_ops = Vec::new();
        for row in rows.iter().flatten() {
            match row {
                Row::Span {
                    trace_id,
                    span_id,
                    parent,
                    service,
                    operation,
                    kind,
                    start,
                    duration,
                    error,
                    doc,
                } => {
                    span_stmt.execute(params![
                        trace_id, span_id, parent, service, operation, start, duration, error, doc
                    ])?;
                    let key = (service.clone(), operation.clone(), (*kind).to_string());
                    if !writer.known_operations.contains(&key) {
                        op_stmt.execute(params![key.0, key.1, key.2])?;
                        new_ops.push(key);
                    }
                }
                Row::Log {
                    id,
                    time,
                    service,
                    level,
                    trace_id,
                    body,
                    doc,
                } => {
                    log_stmt.execute(params![id, time, service, level, trace_id, body, doc])?;
                }
                Row::Heartbeat {
                    id,
                    service,
                    instance,
                    time,
                    doc,
                    registry_time,
                    registry,
                } => {
                    hb_stmt.execute(params![id, service, instance, time, doc])?;
                    reg_stmt.execute(params![service, instance, registry_time, registry])?;
                }
            }
        }
        drop((span_stmt, op_stmt, log_stmt, hb_stmt, reg_stmt));
        tx.commit()?;
        // Only remembered once committed: a rolled-back batch must insert them again.
        writer.known_operations.extend(new_ops);
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(id: &str, doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        message: e.to_string(),
    })
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

/// Accumulates a WHERE clause and its parameters.
#[derive(Default)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<rusqlite::types::Value>,
}

impl Filter {
    fn push(&mut self, clause: &str, values: impl IntoIterator<Item = rusqlite::types::Value>) {
        // Placeholders are written as `?` and numbered here, so clauses compose.
        let mut numbered = String::with_capacity(clause.len() + 8);
        for c in clause.chars() {
            if c == '?' {
                self.params.push(rusqlite::types::Value::Null);
                numbered.push_str(&format!("?{}", self.params.len()));
            } else {
                numbered.push(c);
            }
        }
        let start = self.params.len() - clause.matches('?').count();
        for (slot, value) in self.params[start..].iter_mut().zip(values) {
            *slot = value;
        }
        self.clauses.push(numbered);
    }

    fn range(&mut self, column: &str, time: TimeRange) {
        if let Some(s) = time.start_unix_nano {
            self.push(&format!("{column} >= ?"), [ns(s).into()]);
        }
        if let Some(e) = time.end_unix_nano {
            self.push(&format!("{column} <= ?"), [ns(e).into()]);
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn text(s: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(s.to_string())
}

fn spans_of(conn: &Connection, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
    let sql = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
    let mut stmt = conn
        .prepare_cached("SELECT span_id, doc FROM spans WHERE trace_id = ?1")
        .map_err(sql)?;
    let rows = stmt
        .query_map([trace_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql)?;
    let mut spans = Vec::new();
    for row in rows {
        let (id, doc) = row.map_err(sql)?;
        spans.push(parse::<SpanRecord>(&id, &doc)?);
    }
    sort_spans(&mut spans);
    Ok(spans)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn write(&self, docs: &[Document]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(docs.len());
        let mut rows = Vec::with_capacity(docs.len());
        let now = crate::store::now_unix_nano();
        for doc in docs {
            match to_row(doc, now) {
                Ok(row) => {
                    rows.push(Some(row));
                    outcomes.push(WriteOutcome::Written);
                }
                Err(e) => {
                    rows.push(None);
                    outcomes.push(WriteOutcome::Rejected(format!(
                        "{} {} cannot be serialized: {e}",
                        doc.kind(),
                        doc.id()
                    )));
                }
            }
        }
        let path = self.path.display().to_string();
        self.with_writer(move |w| {
            // Disk full, I/O errors and lock timeouts may pass: the stage retries the batch.
            insert_rows(w, &rows)
                .map_err(|e| StoreError::Unavailable(format!("embedded store at {path}: {e}")))
        })
        .await?;
        Ok(outcomes)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let trace_id = trace_id.to_ascii_lowercase();
        self.read(move |conn| spans_of(conn, &trace_id)).await
    }

    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        let mut f = Filter::default();
        if let Some(s) = &query.service {
            f.push("service = ?", [text(s)]);
        }
        if let Some(o) = &query.operation {
            f.push("operation = ?", [text(o)]);
        }
        if let Some(d) = query.min_duration {
            f.push("duration_ns >= ?", [ns(d.as_nanos() as u64).into()]);
        }
        if let Some(d) = query.max_duration {
            f.push("duration_ns <= ?", [ns(d.as_nanos() as u64).into()]);
        }
        f.range("start_ns", query.time);
        for (k, v) in &query.attributes {
            // `->` yields the JSON text of the value: `"GET"` for strings, `200`, `true`.
            f.push(
                "(doc -> ('$.attributes.' || json_quote(?))) IN (json_quote(?), ?)",
                [text(k), text(v), text(v)],
            );
        }
        let limit = effective_limit(query.limit);
        let sql = format!(
            "SELECT trace_id, MAX(start_ns) AS latest FROM spans {} GROUP BY trace_id \
             ORDER BY latest DESC, trace_id LIMIT {limit}",
            f.sql()
        );
        let params = f.params;
        self.read(move |conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn.prepare(&sql).map_err(err)?;
            let ids = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    r.get::<_, String>(0)
                })
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            // Kept in the order they were picked in (latest matching span first), the order
            // the Elasticsearch backend returns too.
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(summary) = TraceSummary::from_spans(&spans_of(conn, &id)?) {
                    out.push(summary);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn search_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let mut f = Filter::default();
        if let Some(t) = query.text.as_deref().filter(|t| !t.is_empty()) {
            f.push(
                "body LIKE ('%' || ? || '%') ESCAPE '\\'",
                [text(&like_escape(t))],
            );
        }
        if let Some(s) = &query.service {
            f.push("service = ?", [text(s)]);
        }
        if let Some(l) = &query.level {
            f.push("level = ?", [text(&l.to_ascii_uppercase())]);
        }
        if let Some(t) = &query.trace_id {
            f.push("trace_id = ?", [text(&t.to_ascii_lowercase())]);
        }
        f.range("time_ns", query.time);
        let sql = format!(
            "SELECT doc_id, doc FROM logs {} ORDER BY time_ns DESC, doc_id LIMIT {}",
            f.sql(),
            effective_limit(query.limit)
        );
        let params = f.params;
        self.read(move |conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn.prepare(&sql).map_err(err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, doc) = row.map_err(err)?;
                out.push(parse::<LogEntry>(&id, &doc)?);
            }
            Ok(out)
        })
        .await
    }

    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn
                .prepare("SELECT DISTINCT service FROM operations ORDER BY service")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(err)
        })
        .await
    }

    async fn operations(&self, service: &str) -> Result<Vec<Operation>, StoreError> {
        let service = service.to_string();
        self.read(move |conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn
                .prepare(
                    "SELECT operation, span_kind FROM operations WHERE service = ?1 \
                     ORDER BY operation, span_kind",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([service], |r| {
                    Ok(Operation {
                        name: r.get(0)?,
                        span_kind: r.get(1)?,
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    async fn dependencies(&self, time: TimeRange) -> Result<Dependencies, StoreError> {
        let mut f = Filter::default();
        f.push("c.service <> p.service", []);
        f.range("c.start_ns", time);
        let sql = format!(
            "SELECT p.service, c.service, COUNT(*), SUM(c.is_error) FROM spans c \
             JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id \
             {} GROUP BY p.service, c.service ORDER BY p.service, c.service",
            f.sql()
        );
        let params = f.params;
        self.read(move |conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn.prepare(&sql).map_err(err)?;
            let observed = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok(DependencyEdge {
                        caller: r.get(0)?,
                        callee: r.get(1)?,
                        calls: r.get::<_, i64>(2)? as u64,
                        errors: r.get::<_, i64>(3)? as u64,
                    })
                })
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let mut declared = Vec::new();
            for entry in registry(conn, None)? {
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

    async fn service_status(&self, query: &StatusQuery) -> Result<Vec<InstanceStatus>, StoreError> {
        let service = query.service.clone();
        let now = query
            .now_unix_nano
            .unwrap_or_else(crate::store::now_unix_nano);
        let silent_after = query.silent_after;
        self.read(move |conn| {
            Ok(registry(conn, service.as_deref())?
                .into_iter()
                .map(|e| InstanceStatus::derive(e, now, silent_after))
                .collect())
        })
        .await
    }

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
        let path = self.path.display().to_string();
        self.with_writer(move |w| {
            let mut run = || -> rusqlite::Result<()> {
                let tx = w.conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO alerts (id, service, state, last_seen, doc) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?;
                    for (id, service, state, last, doc) in &rows {
                        stmt.execute(params![id, service, state, last, doc])?;
                    }
                }
                tx.commit()
            };
            run().map_err(|e| StoreError::Unavailable(format!("embedded store at {path}: {e}")))
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
        self.read(move |conn| {
            let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
            let mut stmt = conn.prepare(&sql).map_err(err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, doc) = row.map_err(err)?;
                out.push(parse::<AlertDoc>(&id, &doc)?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_silence(&self, silence: &crate::silence::Silence) -> Result<(), StoreError> {
        crate::silence::sqlite::put_silence(&self.path, silence).await
    }

    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        crate::silence::sqlite::delete_silence(&self.path, id).await
    }

    async fn list_silences(&self) -> Result<Vec<crate::silence::Silence>, StoreError> {
        crate::silence::sqlite::list_silences(&self.path).await
    }

    async fn ack_alert(&self, ack: &crate::silence::AlertAck) -> Result<(), StoreError> {
        crate::silence::sqlite::put_ack(&self.path, ack).await
    }

    async fn list_acks(&self) -> Result<Vec<crate::silence::AlertAck>, StoreError> {
        crate::silence::sqlite::list_acks(&self.path).await
    }
}

fn registry(conn: &Connection, service: Option<&str>) -> Result<Vec<RegistryEntry>, StoreError> {
    let err = |e: rusqlite::Error| StoreError::Unavailable(e.to_string());
    let mut stmt = conn
        .prepare_cached(
            "SELECT instance, doc FROM registry WHERE (?1 IS NULL OR service = ?1) \
             ORDER BY service, instance",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([service], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, doc) = row.map_err(err)?;
        out.push(parse::<RegistryEntry>(&id, &doc)?);
    }
    Ok(out)
}

/// Counts rows of a table, for tests and diagnostics (`spans`, `logs`, `heartbeats`, ...).
pub fn count_rows(dir: impl AsRef<Path>, table: &str) -> Result<u64, StoreError> {
    let dir = dir.as_ref();
    let err = |e: rusqlite::Error| StoreError::Embedded {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::InvalidQuery(format!(
            "`{table}` is not a table name"
        )));
    }
    let conn = Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map_err(err)
    .map(|n| n.unwrap_or(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_literally() {
        assert_eq!(like_escape("50%_off\\"), "50\\%\\_off\\\\");
    }

    #[test]
    fn filter_numbers_placeholders_in_order() {
        let mut f = Filter::default();
        f.push("a = ?", [text("x")]);
        f.push("b IN (?, ?)", [text("y"), text("z")]);
        assert_eq!(f.sql(), "WHERE a = ?1 AND b IN (?2, ?3)");
        assert_eq!(f.params.len(), 3);
    }
}
