//! Upgrades: a store written by the first release's layout (one `dlog.sqlite3` of JSON
//! documents) is migrated when opened, and a store from a newer dlog is refused with a
//! message that says what to do.

mod common;

use std::path::Path;

use common::conformance::{alert, fixture_heartbeats, fixture_logs, fixture_spans, TRACE_A};
use dlog_storage::embedded::{DB_FILE, SCHEMA_VERSION, V1_FILE};
use dlog_storage::{open_store, AlertQuery, LogQuery, RegistryEntry, StatusQuery, StoreConfig};

/// The first release's schema, exactly as it created it.
const V1_SCHEMA: &str = r#"
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

/// Writes the fixture the way the first release did: whole JSON documents next to the
/// columns it filtered on.
fn write_v1_store(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(V1_SCHEMA).unwrap();
    for s in fixture_spans() {
        conn.execute(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, service, operation, start_ns, \
             duration_ns, is_error, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.service.name,
                s.name,
                s.start_unix_nano as i64,
                s.duration_nanos() as i64,
                s.is_error(),
                serde_json::to_string(&s).unwrap()
            ],
        )
        .unwrap();
    }
    for l in fixture_logs() {
        conn.execute(
            "INSERT INTO logs (doc_id, time_ns, service, level, trace_id, body, doc) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                l.doc_id(),
                l.time_unix_nano as i64,
                l.service.name,
                l.level,
                l.trace_id,
                l.body,
                serde_json::to_string(&l).unwrap()
            ],
        )
        .unwrap();
    }
    for h in fixture_heartbeats() {
        conn.execute(
            "INSERT OR REPLACE INTO heartbeats (doc_id, service, instance, time_ns, doc) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                h.doc_id(),
                h.service.name,
                h.service.instance_key(),
                h.time_unix_nano as i64,
                serde_json::to_string(&h).unwrap()
            ],
        )
        .unwrap();
        let entry = RegistryEntry::from_heartbeat(&h, u64::MAX);
        conn.execute(
            "INSERT INTO registry (service, instance, last_ns, doc) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (service, instance) DO UPDATE SET last_ns = excluded.last_ns, \
             doc = excluded.doc WHERE excluded.last_ns >= registry.last_ns",
            rusqlite::params![
                entry.service,
                entry.instance_id,
                entry.last_heartbeat_unix_nano as i64,
                serde_json::to_string(&entry).unwrap()
            ],
        )
        .unwrap();
    }
    let a = alert("al-1", "backend", "firing", 7);
    conn.execute(
        "INSERT INTO alerts (id, service, state, last_seen, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            a.id,
            a.service,
            a.state,
            7,
            serde_json::to_string(&a).unwrap()
        ],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_first_layout_is_migrated_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path());

    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let expected: Vec<_> = fixture_spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_A)
        .collect();
    assert_eq!(store.get_trace(TRACE_A).await.unwrap(), expected);
    let mut logs = fixture_logs();
    logs.reverse();
    assert_eq!(store.search_logs(&LogQuery::default()).await.unwrap(), logs);
    let status = store.service_status(&StatusQuery::default()).await.unwrap();
    assert_eq!(
        status
            .iter()
            .map(|s| (
                s.entry.instance_id.as_str(),
                s.entry.last_heartbeat_unix_nano
            ))
            .collect::<Vec<_>>(),
        vec![
            ("be-1", common::conformance::T0 + 5_000_000_000),
            ("fe-1", common::conformance::T0 + 1_000_000_000),
            ("fe-2", common::conformance::T0 + 2_000_000_000),
        ]
    );
    assert_eq!(
        store.list_alerts(&AlertQuery::default()).await.unwrap(),
        vec![alert("al-1", "backend", "firing", 7)]
    );
    assert_eq!(
        store.find_traces(&Default::default()).await.unwrap().len(),
        2
    );
    // The old file is gone once its documents are in the new layout, and the new layout
    // carries its version.
    assert!(!dir.path().join(V1_FILE).exists());
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Opening again migrates nothing twice.
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    assert_eq!(store.get_trace(TRACE_A).await.unwrap(), expected);
    assert_eq!(
        store.search_logs(&LogQuery::default()).await.unwrap().len(),
        logs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_dlog_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        open_store(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap(),
    );
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let message = match open_store(&StoreConfig::embedded(dir.path())).await {
        Ok(_) => panic!("a store of a newer schema was opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
            && message.contains(&format!("reads version {SCHEMA_VERSION}"))
            && message.contains("move"),
        "{message}"
    );
}

/// Writes `logs` into a new store in `dir`, then takes it back to layout 2 (no span id
/// column, no index, version 2 everywhere); the partitions' paths.
async fn layout_2_store(
    dir: &Path,
    logs: &[dlog_core::model::LogEntry],
) -> Vec<std::path::PathBuf> {
    {
        let store = open_store(&StoreConfig::embedded(dir)).await.unwrap();
        let docs: Vec<_> = logs
            .iter()
            .cloned()
            .map(dlog_storage::Document::Log)
            .collect();
        store.write(&docs).await.unwrap();
    }
    let parts = common::partition_files(dir);
    assert!(!parts.is_empty());
    for part in &parts {
        let conn = rusqlite::Connection::open(part).unwrap();
        conn.execute_batch(
            "DROP INDEX logs_by_span; ALTER TABLE logs DROP COLUMN span_id; \
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    rusqlite::Connection::open(dir.join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", 2)
        .unwrap();
    parts
}

/// Two processes opening a layout 2 store at once (`dlog up` and `dlog viewer`) both open
/// it, the column added once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_2_store_opened_twice_at_once_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    // Enough records that the first migration is still running when the second starts.
    let base = fixture_logs();
    let logs: Vec<_> = (0..20_000u64)
        .map(|i| {
            let mut l = base[i as usize % base.len()].clone();
            l.body = format!("{} #{i}", l.body);
            l
        })
        .collect();
    layout_2_store(dir.path(), &logs).await;
    let config = StoreConfig::embedded(dir.path());
    let open =
        |config: StoreConfig| tokio::spawn(async move { open_store(&config).await.map(|_| ()) });
    let (a, b) = tokio::join!(open(config.clone()), open(config.clone()));
    a.unwrap().expect("the first open");
    b.unwrap().expect("the second open");
    let store = open_store(&config).await.unwrap();
    let of_span = store
        .search_logs(&LogQuery {
            trace_id: Some(TRACE_A.into()),
            span_id: Some("b000000000000003".into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_span.len(), 5);
    assert!(of_span.iter().all(|l| l.body.starts_with("charge slow")));
}

/// A record whose encoded rest is unreadable does not keep a layout 2 store from opening: it
/// keeps no span id, and the others are found by span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_does_not_keep_a_layout_2_store_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let parts = layout_2_store(dir.path(), &fixture_logs()).await;
    let conn = rusqlite::Connection::open(&parts[0]).unwrap();
    let spoiled = conn
        .execute(
            "UPDATE logs SET rest = x'ff00ff' WHERE id = (SELECT min(id) FROM logs \
             WHERE body != 'charge slow')",
            [],
        )
        .unwrap();
    assert_eq!(spoiled, 1);
    drop(conn);
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .expect("opens");
    let of_span = store
        .search_logs(&LogQuery {
            trace_id: Some(TRACE_A.into()),
            span_id: Some("b000000000000003".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        of_span.iter().map(|l| l.body.as_str()).collect::<Vec<_>>(),
        vec!["charge slow"]
    );
}

/// A store of layout 2 kept a log's span id only inside its encoded record: opening it adds
/// the span id column, fills it for the records already stored, and searches by span find
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_2_store_gains_the_span_id_column_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let logs = fixture_logs();
    let parts = layout_2_store(dir.path(), &logs).await;

    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let of_span = store
        .search_logs(&LogQuery {
            trace_id: Some(TRACE_A.into()),
            span_id: Some("b000000000000003".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        of_span.iter().map(|l| l.body.as_str()).collect::<Vec<_>>(),
        vec!["charge slow"]
    );
    assert_eq!(
        store.search_logs(&LogQuery::default()).await.unwrap().len(),
        logs.len()
    );
    drop(store);
    for file in parts.iter().chain([&dir.path().join(DB_FILE)]) {
        let version: i32 = rusqlite::Connection::open(file)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION, "{}", file.display());
    }
}

/// A store of layout 3 did not mark the traces whose spans name parents their partition does
/// not hold, and kept log identities in a table apart: opening it marks them (a search
/// completes those from every partition) and gives each log its identity, which orders a
/// page oldest first and keeps a replayed log from being stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_3_store_gains_the_open_trace_mark_when_opened() {
    use common::conformance::{service, span};
    let dir = tempfile::tempdir().unwrap();
    let svc = service("late", "lt-1", &[]);
    let t = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let kind = dlog_core::model::SpanKind::Server;
    let complete = "0000000000000000000000000000c0de";
    // Ten logs sharing one time.
    let logs: Vec<_> = (0..10)
        .map(|i| common::conformance::log(&svc, t, "INFO", &format!("same time {i}"), None, &[]))
        .collect();
    let orphan = "0000000000000000000000000000f00d";
    {
        let store = open_store(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let docs = vec![
            span(complete, "00000000000000a1", None, &svc, "root", kind, t, 5),
            span(
                complete,
                "00000000000000a2",
                Some("00000000000000a1"),
                &svc,
                "c",
                kind,
                t,
                1,
            ),
            span(
                orphan,
                "00000000000000b2",
                Some("00000000000000b1"),
                &svc,
                "c",
                kind,
                t,
                1,
            ),
        ];
        store
            .write(
                &docs
                    .into_iter()
                    .map(dlog_storage::Document::Span)
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        store
            .write(
                &logs
                    .iter()
                    .cloned()
                    .map(dlog_storage::Document::Log)
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
    }
    let parts = common::partition_files(dir.path());
    assert_eq!(parts.len(), 1);
    {
        let conn = rusqlite::Connection::open(&parts[0]).unwrap();
        conn.execute_batch(
            "DROP INDEX traces_open; ALTER TABLE traces DROP COLUMN open; \
             DROP INDEX logs_by_time; ALTER TABLE logs DROP COLUMN doc_id; \
             CREATE INDEX logs_by_time ON logs (time_ns); \
             CREATE TABLE log_ids (doc_id BLOB PRIMARY KEY) WITHOUT ROWID; \
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", 3)
        .unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_traces(&dlog_storage::TraceQuery::default())
            .await
            .unwrap()
            .len(),
        2
    );
    // A replay stores nothing; pages of three, oldest first, give each log once, in order.
    store
        .write(
            &logs
                .iter()
                .cloned()
                .map(dlog_storage::Document::Log)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut expected = logs.clone();
    expected.sort_by_key(dlog_storage::LogCursor::of);
    let mut got = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store
            .search_logs(&LogQuery {
                order: dlog_storage::LogOrder::OldestFirst,
                after: after.clone(),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(dlog_storage::LogCursor::of(last));
        got.extend(page);
    }
    assert_eq!(got, expected);
    drop(store);
    let conn = rusqlite::Connection::open(&parts[0]).unwrap();
    let open: Vec<String> = conn
        .prepare("SELECT hex(trace_id) FROM traces WHERE open = 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(open, vec![orphan.to_uppercase()]);
    common::assert_schema_version(&[&parts[0], &dir.path().join(DB_FILE)]);
}

/// Regression: two processes opening a store of the first layout at once (`dlog up` and
/// `dlog viewer`) raced: one moved the old file aside while the other read it, created the
/// new layout next to it or removed it while the first still imported it. Both opens now
/// succeed, and the store holds every document once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_first_layout_store_opened_twice_at_once_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path());
    // Enough records that the first migration is still running when the second starts.
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let base = fixture_logs();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..20_000u64 {
            let mut l = base[i as usize % base.len()].clone();
            l.body = format!("{} #{i}", l.body);
            tx.execute(
                "INSERT INTO logs (doc_id, time_ns, service, level, trace_id, body, doc) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    l.doc_id(),
                    l.time_unix_nano as i64,
                    l.service.name,
                    l.level,
                    l.trace_id,
                    l.body,
                    serde_json::to_string(&l).unwrap()
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let total = fixture_logs().len() + 20_000;
    let opens: Vec<_> = (0..2)
        .map(|_| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                dlog_storage::embedded::EmbeddedStore::open(&dir).map(|_| ())
            })
        })
        .collect();
    for open in opens {
        open.join().unwrap().expect("both opens succeed");
    }
    assert!(!dir.path().join(V1_FILE).exists());
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let logs = store
        .search_logs(&LogQuery {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.len(), total);
    let expected: Vec<_> = fixture_spans()
        .into_iter()
        .filter(|s| s.trace_id == TRACE_A)
        .collect();
    assert_eq!(store.get_trace(TRACE_A).await.unwrap(), expected);
}

/// Regression: a time past i64::MAX is stored clipped, so a layout 3 partition could hold two
/// logs that differed only there and read the same. Giving each log its identity made both
/// the same, and building the unique time index failed on every open. The store now opens,
/// keeps both records, and a replay of the log stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_layout_3_store_with_two_logs_that_read_the_same_opens() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::conformance::service("clip", "cl-1", &[]);
    let t = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let log = common::conformance::log(&svc, t, "INFO", "read alike", None, &[]);
    {
        let store = open_store(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        store
            .write(&[dlog_storage::Document::Log(log.clone())])
            .await
            .unwrap();
    }
    let part = std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite3"))
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&part).unwrap();
        conn.execute_batch(
            "DROP INDEX traces_open; ALTER TABLE traces DROP COLUMN open; \
             DROP INDEX logs_by_time; ALTER TABLE logs DROP COLUMN doc_id; \
             CREATE INDEX logs_by_time ON logs (time_ns); \
             CREATE TABLE log_ids (doc_id BLOB PRIMARY KEY) WITHOUT ROWID; \
             INSERT INTO logs (time_ns, resource, level, severity, trace_id, body, rest, span_id) \
                 SELECT time_ns, resource, level, severity, trace_id, body, rest, span_id \
                 FROM logs; \
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", 3)
        .unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    store
        .write(&[dlog_storage::Document::Log(log.clone())])
        .await
        .unwrap();
    let found = store.search_logs(&LogQuery::default()).await.unwrap();
    assert_eq!(found, vec![log.clone(), log]);
}

/// Regression: only a first-layout store was upgraded under the migration lock; a layout 3
/// store's partitions were upgraded under their own transactions, with a 10 s busy wait, so
/// a second process opening it during a large partition's upgrade failed ("database is
/// locked"). Opening a store below this layout now waits for the lock.
#[test]
fn regression_a_layout_3_store_is_upgraded_under_the_migration_lock() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = open_store(&StoreConfig::embedded(dir.path()))
                .await
                .unwrap();
            let svc = common::conformance::service("lock", "lk-1", &[]);
            let t = dlog_storage::now_unix_nano() - 3_600_000_000_000;
            let log = common::conformance::log(&svc, t, "INFO", "locked", None, &[]);
            store
                .write(&[dlog_storage::Document::Log(log)])
                .await
                .unwrap();
        });
    }
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA user_version = 3;")
        .unwrap();
    // Another process upgrading: it holds the lock.
    let lock =
        rusqlite::Connection::open(dir.path().join(dlog_storage::embedded::MIGRATION_LOCK_FILE))
            .unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let path = dir.path().to_path_buf();
    let opener =
        std::thread::spawn(move || dlog_storage::embedded::EmbeddedStore::open(&path).map(|_| ()));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!opener.is_finished(), "the open did not wait for the lock");
    lock.execute_batch("COMMIT").unwrap();
    opener.join().unwrap().unwrap();
}

/// A store of layout 4 kept its attribute index as one row per (key, value, trace number):
/// opening it turns the rows into posting lists, and every search by attribute, service and
/// operation finds what it found before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_4_store_turns_its_attribute_index_into_posting_lists() {
    use common::conformance::{service, span};
    use dlog_storage::TraceQuery;
    let dir = tempfile::tempdir().unwrap();
    let svc = service("tiered", "ti-1", &[]);
    let t = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let kind = dlog_core::model::SpanKind::Server;
    let traces = [
        ("000000000000000000000000000000a1", "gold"),
        ("000000000000000000000000000000a2", "silver"),
        ("000000000000000000000000000000a3", "gold"),
    ];
    {
        let store = open_store(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let docs: Vec<_> = traces
            .iter()
            .enumerate()
            .map(|(i, (id, tier))| {
                let mut s = span(
                    id,
                    "00000000000000b1",
                    None,
                    &svc,
                    "checkout",
                    kind,
                    t + i as u64,
                    5,
                );
                s.attributes.insert("tier".into(), serde_json::json!(tier));
                dlog_storage::Document::Span(s)
            })
            .collect();
        store.write(&docs).await.unwrap();
    }
    let parts = common::partition_files(dir.path());
    assert_eq!(parts.len(), 1);
    // The index as layout 4 wrote it: the attribute, the resource and the operation of each
    // trace's span, one row each.
    {
        let conn = rusqlite::Connection::open(&parts[0]).unwrap();
        conn.execute(
            "ATTACH DATABASE ?1 AS shared",
            [dir.path().join(DB_FILE).display().to_string()],
        )
        .unwrap();
        conn.execute_batch(
            "DROP TABLE postings;
             CREATE TABLE attrs (
                 key      INTEGER NOT NULL,
                 value    ANY NOT NULL,
                 trace_no INTEGER NOT NULL,
                 PRIMARY KEY (key, value, trace_no)
             ) WITHOUT ROWID;
             INSERT INTO attrs SELECT -1, r.id, t.trace_no FROM shared.resources r, traces t;
             INSERT INTO attrs SELECT -2, s.id, t.trace_no
                 FROM shared.strings s, traces t WHERE s.text = 'checkout';",
        )
        .unwrap();
        for (id, tier) in traces {
            conn.execute(
                "INSERT INTO attrs SELECT s.id, ?2, t.trace_no FROM shared.strings s, traces t \
                 WHERE s.text = 'tier' AND hex(t.trace_id) = upper(?1)",
                [id, tier],
            )
            .unwrap();
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM attrs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 9);
        conn.execute_batch("DETACH DATABASE shared; PRAGMA user_version = 4;")
            .unwrap();
    }
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", 4)
        .unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let found = |q: TraceQuery| {
        let store = store.clone();
        async move {
            let mut ids: Vec<String> = store
                .find_traces(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.trace_id)
                .collect();
            ids.sort();
            ids
        }
    };
    let tier = |v: &str| TraceQuery {
        attributes: [("tier".to_string(), v.to_string())].into(),
        ..Default::default()
    };
    assert_eq!(found(tier("gold")).await, vec![traces[0].0, traces[2].0]);
    assert_eq!(found(tier("silver")).await, vec![traces[1].0]);
    let all: Vec<&str> = traces.iter().map(|t| t.0).collect();
    let by_service = TraceQuery {
        service: Some("tiered".into()),
        ..Default::default()
    };
    assert_eq!(found(by_service).await, all);
    let by_op = TraceQuery {
        operation: Some("checkout".into()),
        ..Default::default()
    };
    assert_eq!(found(by_op).await, all);
    // Written on after the upgrade: a new trace's value joins the lists.
    let mut s = span(
        "000000000000000000000000000000a4",
        "00000000000000b1",
        None,
        &svc,
        "checkout",
        kind,
        t + 10,
        5,
    );
    s.attributes
        .insert("tier".into(), serde_json::json!("gold"));
    store
        .write(&[dlog_storage::Document::Span(s)])
        .await
        .unwrap();
    assert_eq!(
        found(tier("gold")).await,
        vec![traces[0].0, traces[2].0, "000000000000000000000000000000a4"]
    );
    drop(store);
    let conn = rusqlite::Connection::open(&parts[0]).unwrap();
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'attrs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0);
    common::assert_schema_version(&[&parts[0], &dir.path().join(DB_FILE)]);
}
