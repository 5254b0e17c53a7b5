//! Crash: the `dlog-indexer` binary is killed with SIGKILL mid-stream several times and
//! restarted. At the end every span id sent is stored exactly once in the embedded store.

mod common;

use dlog_storage::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const RECORDS: usize = 300;
const SPANS_PER_RECORD: u64 = 5;
const KILLS: usize = 3;

fn start_indexer(
    dir: &Path,
    brokers: &str,
    group: &str,
    topics: &[String; 4],
    run: usize,
    admin: &str,
) -> Child {
    let log = std::fs::File::create(dir.join(format!("indexer-{run}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dlog-indexer"))
        .args(["--data-dir", dir.join("store").to_str().unwrap(), "run"])
        .args(["--kafka-brokers", brokers, "--group-id", group])
        .args([
            "--trace-logs-topic",
            &topics[0],
            "--service-logs-topic",
            &topics[1],
        ])
        .args([
            "--heartbeat-logs-topic",
            &topics[2],
            "--dead-letters-topic",
            &topics[3],
        ])
        .args([
            "--admin",
            admin,
            "--session-timeout-ms",
            "6000",
            "--batch-max-records",
            "5",
        ])
        .env("DLOG_INDEXER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start dlog-indexer")
}

/// The embedded store's day partitions.
fn partitions(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(
        dir.join("store")
            .join(dlog_storage::embedded::PARTITIONS_DIR),
    )
    .into_iter()
    .flatten()
    .flatten()
    .map(|e| e.path())
    .filter(|p| p.extension().is_some_and(|e| e == "sqlite3"))
    .collect();
    files.sort();
    files
}

fn open_db(path: &Path) -> Option<rusqlite::Connection> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

/// Every stored span row as trace id + span id (one entry per row, over every partition);
/// empty until the store exists.
fn stored(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for path in partitions(dir) {
        let Some(conn) = open_db(&path) else {
            continue;
        };
        let Ok(mut stmt) = conn.prepare(
            "SELECT lower(hex(t.trace_id)) || lower(hex(s.span_id)) FROM spans s \
             JOIN traces t ON t.trace_no = s.trace_no",
        ) else {
            continue;
        };
        let rows: Vec<String> = match stmt.query_map([], |r| r.get::<_, String>(0)) {
            Ok(rows) => rows.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        };
        out.extend(rows);
    }
    out
}

/// Every stored span document, read back through the store, with its row's trace id + span
/// id.
async fn stored_docs(dir: &Path) -> Vec<(String, dlog_core::model::SpanRecord)> {
    let store = dlog_storage::embedded::EmbeddedStore::open(dir.join("store")).unwrap();
    let traces: BTreeSet<String> = stored(dir)
        .into_iter()
        .map(|k| k[..32].to_string())
        .collect();
    let mut out = Vec::new();
    for trace in traces {
        for span in store.get_trace(&trace).await.unwrap() {
            out.push((format!("{trace}{}", span.span_id), span));
        }
    }
    out
}

/// The most rows one (trace, span id) has in a partition's span table.
fn max_rows_per_span(dir: &Path) -> i64 {
    partitions(dir)
        .iter()
        .map(|path| {
            open_db(path)
                .unwrap()
                .query_row(
                    "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM spans \
                     GROUP BY trace_no, span_id)",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        })
        .max()
        .unwrap_or(0)
}

/// Like `wait_for`, but a timeout panics with the tails of the indexer logs.
async fn wait_logged<T, F: FnMut() -> Option<T>>(
    what: &str,
    within: Duration,
    dir: &Path,
    mut check: F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let mut logs = String::new();
            for run in 0..=KILLS {
                if let Ok(text) = std::fs::read_to_string(dir.join(format!("indexer-{run}.log"))) {
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    logs.push_str(&format!(
                        "--- run {run}:\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            panic!(
                "timed out after {within:?} waiting for {what}; {} spans stored\n{logs}",
                stored(dir).len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_is_stored_exactly_once_across_kill_9_restarts() {
    let kafka = dlog_testkit::Kafka::start().unwrap();
    let topics = [
        "trace_logs",
        "service_logs",
        "heartbeat_logs",
        "dead_letters",
    ]
    .map(dlog_testkit::unique_name);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka.create_topics(&refs, 3).await.unwrap();
    let group = dlog_testkit::unique_name("indexer");
    let dir = tempfile::tempdir().unwrap();

    // A steady stream: 300 records of 5 spans, produced over a few seconds.
    let producer = producer(&kafka.brokers);
    let topic = topics[0].clone();
    let stream = tokio::spawn(async move {
        let mut sent = BTreeSet::new();
        let now = dlog_storage::store::now_unix_nano();
        for i in 0..RECORDS {
            let trace: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
            let spans = (1..=SPANS_PER_RECORD)
                .map(|s| {
                    otlp_span(
                        &trace,
                        s,
                        (s > 1).then_some(s - 1),
                        "op",
                        SpanKind::Internal,
                        now + i as u64,
                        1,
                    )
                })
                .collect::<Vec<_>>();
            let request = traces(resource("crashy", "crashy-1", &[]), spans);
            // The ids the model gives the documents: what every write and replay must use.
            for record in dlog_core::model::spans_from_request(&request) {
                sent.insert(record.doc_id());
            }
            produce_traces(&producer, &topic, &request).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        sent
    });

    let admin = format!("127.0.0.1:{}", dlog_testkit::free_port().unwrap());
    let mut child = start_indexer(dir.path(), &kafka.brokers, &group, &topics, 0, &admin);
    let mut seen = 0;
    for kill in 1..=KILLS {
        // Kill it only once it made progress since the last restart, so the kills land
        // mid-stream, between writes and commits.
        // At least one more span than at the last kill, spread over the stream; capped at
        // the total, since a fast run may have caught up before the last kill.
        let total = RECORDS * SPANS_PER_RECORD as usize;
        let threshold = (seen + 1).max(kill * total / (KILLS + 2)).min(total);
        seen = wait_logged(
            "progress before the kill",
            Duration::from_secs(40),
            dir.path(),
            || {
                let n = stored(dir.path()).len();
                (n >= threshold).then_some(n)
            },
        )
        .await;
        eprintln!(
            "kill -9 #{kill} with {seen} of {} spans stored",
            RECORDS * SPANS_PER_RECORD as usize
        );
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        child = start_indexer(dir.path(), &kafka.brokers, &group, &topics, kill, &admin);
    }
    let sent = stream.await.unwrap();
    let path = dir.path().to_path_buf();
    let total = sent.len();
    let stored_ids = wait_for(
        "every span after the restarts",
        Duration::from_secs(60),
        || {
            let ids = stored(&path);
            async move { (ids.len() >= total).then_some(ids) }
        },
    )
    .await;
    let unique: BTreeSet<String> = stored_ids.iter().cloned().collect();
    assert_eq!(unique.len(), stored_ids.len(), "a span is stored twice");
    assert_eq!(unique, sent, "stored spans differ from the spans sent");
    // The primary key alone would hide duplicates: check the ids of the stored documents
    // themselves (every row, over every partition) and count rows per span.
    let docs = stored_docs(&path).await;
    let doc_ids: Vec<String> = docs
        .iter()
        .map(|(key, record)| {
            let id = dlog_storage::Document::Span(record.clone()).id();
            assert_eq!(&id, key, "document id differs from its row's key");
            id
        })
        .collect();
    assert_eq!(doc_ids.len(), sent.len(), "span documents stored");
    assert_eq!(
        doc_ids.into_iter().collect::<BTreeSet<_>>(),
        sent,
        "stored document ids differ from SpanRecord::doc_id() of the spans sent"
    );
    assert_eq!(max_rows_per_span(&path), 1, "a span has more than one row");

    // Graceful shutdown on SIGTERM, once the last run serves /healthz.
    let health = format!("http://{admin}/healthz");
    wait_for("the last run's /healthz", Duration::from_secs(30), || {
        let health = health.clone();
        async move {
            reqwest::get(&health)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "dlog-indexer exited with {exit} on SIGTERM");
}
