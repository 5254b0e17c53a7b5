//! Log search by span and the live tail under bursts, against both backends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_storage::{Document, LogCursor, Store};
use dlog_viewer::ViewerConfig;
use serde_json::Value;

const BUSY_TRACE: &str = "7b000000000000000000000000000b05";
const QUIET_SPAN: &str = "a0000000000000aa";
const BUSY_SPAN: &str = "a0000000000000bb";

/// A span's records in a trace whose other spans logged far more: the store filters by span,
/// so the span's 20 records show however many newer ones the rest of the trace has.
async fn a_busy_traces_span_shows_its_own_records(base: &str, store: &Arc<dyn Store>) {
    let svc = service("busy", &[]);
    let start = dlog_storage::now_unix_nano() - 3_600_000_000_000;
    let mut docs = Vec::new();
    for i in 0..20u64 {
        docs.push(Document::Log(log(
            &svc,
            start + i * MS,
            "INFO",
            &format!("quiet span record {i}"),
            Some((BUSY_TRACE, QUIET_SPAN)),
        )));
    }
    for i in 0..10_050u64 {
        docs.push(Document::Log(log(
            &svc,
            start + (100 + i) * MS,
            "INFO",
            &format!("busy span record {i}"),
            Some((BUSY_TRACE, BUSY_SPAN)),
        )));
    }
    for chunk in docs.chunks(2_000) {
        store.write(chunk).await.unwrap();
    }
    store.refresh().await.unwrap();
    let (status, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={BUSY_TRACE}&span_id={QUIET_SPAN}&limit=50"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let bodies: Vec<&str> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20)
        .rev()
        .map(|i| format!("quiet span record {i}"))
        .collect();
    assert_eq!(
        bodies, expected,
        "the quiet span's own records, newest first"
    );
    // The limit applies to the span's records.
    let (_, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={BUSY_TRACE}&span_id={BUSY_SPAN}&limit=3"
    ))
    .await;
    let logs = body["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 3, "{body}");
    assert_eq!(logs[0]["body"], "busy span record 10049");
    assert!(logs.iter().all(|l| l["span_id"] == BUSY_SPAN));
}

/// Reads server-sent `log` events until `done` says so or the deadline passes; returns the
/// records' JSON in arrival order.
async fn read_tail(
    tail: &mut reqwest::Response,
    buffer: &mut String,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
    got: &mut Vec<Value>,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(got) {
        let chunk = tokio::time::timeout_at(deadline, tail.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.lines().any(|l| l == "event: log") {
                continue;
            }
            let id = event.lines().find_map(|l| l.strip_prefix("id: "));
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let mut record: Value = serde_json::from_str(data).unwrap();
                    record["event_id"] = id.into();
                    got.push(record);
                }
            }
        }
    }
}

/// 3,000 records written at once between two polls of a live tail: it delivers all of them,
/// each once, oldest first (by time, then document id).
async fn a_burst_reaches_the_tail_whole_once_and_in_order(base: &str, store: &Arc<dyn Store>) {
    let svc = service("burst", &[]);
    let mut tail = reqwest::get(format!("{base}/api/v1/logs/tail?service=burst"))
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let mut buffer = String::new();
    let mut got = Vec::new();
    // First one record, to know the tail is reading.
    let opening = log(
        &svc,
        dlog_storage::now_unix_nano(),
        "INFO",
        "tail open",
        None,
    );
    store
        .write(&[Document::Log(opening.clone())])
        .await
        .unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| !g.is_empty(),
        &mut got,
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "tail open");
    // Then the burst: pairs of records share a time, all after the first record.
    let burst: Vec<_> = (0..3_000u64)
        .map(|i| {
            log(
                &svc,
                opening.time_unix_nano + 1_000 + (i / 2) * 1_000,
                "INFO",
                &format!("burst record {i}"),
                None,
            )
        })
        .collect();
    store
        .write(&burst.iter().cloned().map(Document::Log).collect::<Vec<_>>())
        .await
        .unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(40),
        |g| g.len() > burst.len(),
        &mut got,
    )
    .await;
    // Nothing more than the burst arrives (no repeats): a marker written after it, once it
    // arrives, shows the tail has polled again past the burst.
    let marker = log(
        &svc,
        dlog_storage::now_unix_nano().max(opening.time_unix_nano + 2 * MS),
        "INFO",
        "after the burst",
        None,
    );
    store.write(&[Document::Log(marker)]).await.unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| g.iter().any(|l| l["body"] == "after the burst"),
        &mut got,
    )
    .await;
    assert_eq!(
        got.last().map(|l| l["body"].clone()),
        Some("after the burst".into()),
        "the marker arrives last"
    );
    got.pop();
    let mut expected = burst.clone();
    expected.sort_by_key(LogCursor::of);
    let expected: Vec<&str> = expected.iter().map(|l| l.body.as_str()).collect();
    let arrived: Vec<&str> = got[1..]
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        arrived.len(),
        expected.len(),
        "every burst record arrives exactly once"
    );
    assert!(arrived == expected, "the burst arrives oldest first");
}

/// The grace of the tails below: how late a record may be stored and still arrive.
const GRACE: Duration = Duration::from_secs(5);

/// The records' bodies, sorted: which arrived, however two written together were split
/// between polls.
fn bodies(got: &[Value]) -> Vec<&str> {
    let mut bodies: Vec<&str> = got.iter().map(|l| l["body"].as_str().unwrap()).collect();
    bodies.sort_unstable();
    bodies
}

/// A record stored after a newer one was sent (another service's batch arriving late) still
/// reaches the tail; a record stamped ahead of the clock arrives once, not again when the
/// clock passes it nor when the grace does; a reconnect carrying the last event id resumes
/// right after it.
async fn late_and_early_records_reach_the_tail_once(base: &str, store: &Arc<dyn Store>) {
    let svc = service("late", &[]);
    let url = format!("{base}/api/v1/logs/tail?service=late");
    let mut tail = reqwest::get(&url).await.unwrap();
    assert_eq!(tail.status(), 200);
    let mut buffer = String::new();
    let mut got = Vec::new();
    let t0 = dlog_storage::now_unix_nano();
    let newer = log(&svc, t0, "INFO", "newer", None);
    let ahead = log(&svc, t0 + 1_000 * MS, "INFO", "ahead of the clock", None);
    store
        .write(&[Document::Log(newer), Document::Log(ahead.clone())])
        .await
        .unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| g.len() >= 2,
        &mut got,
    )
    .await;
    assert_eq!(bodies(&got), ["ahead of the clock", "newer"]);
    // Stamped before the record already sent, stored after it.
    let late = log(&svc, t0 - MS, "INFO", "stored late", None);
    store.write(&[Document::Log(late)]).await.unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| g.len() >= 3,
        &mut got,
    )
    .await;
    assert_eq!(
        bodies(&got),
        ["ahead of the clock", "newer", "stored late"],
        "the record stored late arrives"
    );
    // Once the clock and then the grace have passed the early record, a marker: when it
    // arrives the tail has re-read that time, and nothing came twice.
    let past = ahead.time_unix_nano + GRACE.as_nanos() as u64 + 500 * MS;
    let wait = past.saturating_sub(dlog_storage::now_unix_nano());
    tokio::time::sleep(Duration::from_nanos(wait)).await;
    let marker = log(&svc, dlog_storage::now_unix_nano(), "INFO", "marker", None);
    store.write(&[Document::Log(marker)]).await.unwrap();
    store.refresh().await.unwrap();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| g.iter().any(|l| l["body"] == "marker"),
        &mut got,
    )
    .await;
    assert_eq!(
        bodies(&got),
        ["ahead of the clock", "marker", "newer", "stored late"],
        "each record once"
    );
    // The browser reconnects with the last event id: only what came after it.
    drop(tail);
    assert_eq!(got[3]["body"], "marker");
    let last_id = got[3]["event_id"].as_str().unwrap().to_string();
    let after = log(
        &svc,
        dlog_storage::now_unix_nano(),
        "INFO",
        "after the reconnect",
        None,
    );
    store.write(&[Document::Log(after)]).await.unwrap();
    store.refresh().await.unwrap();
    let mut tail = reqwest::Client::new()
        .get(&url)
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let mut buffer = String::new();
    let mut again = Vec::new();
    read_tail(
        &mut tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| !g.is_empty(),
        &mut again,
    )
    .await;
    assert_eq!(
        bodies(&again),
        ["after the reconnect"],
        "resumes after {last_id}"
    );
}

fn config() -> ViewerConfig {
    let mut config = ViewerConfig::default();
    config.options.tail_grace = GRACE;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_logs_and_tail_bursts_over_the_embedded_store() {
    let (store, _dir) = embedded().await;
    let (viewer, base) = viewer(Arc::clone(&store), config()).await;
    a_busy_traces_span_shows_its_own_records(&base, &store).await;
    a_burst_reaches_the_tail_whole_once_and_in_order(&base, &store).await;
    late_and_early_records_reach_the_tail_once(&base, &store).await;
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_logs_and_tail_bursts_over_elasticsearch() {
    let (store, _es) = elastic().await;
    let (viewer, base) = viewer(Arc::clone(&store), config()).await;
    a_busy_traces_span_shows_its_own_records(&base, &store).await;
    a_burst_reaches_the_tail_whole_once_and_in_order(&base, &store).await;
    late_and_early_records_reach_the_tail_once(&base, &store).await;
    viewer.shutdown().await;
}

/// Opens a live tail of service `svc` with `Last-Event-ID` set to these bytes.
async fn tail_with_id(base: &str, svc: &str, id: &[u8]) -> reqwest::Response {
    let tail = reqwest::Client::new()
        .get(format!("{base}/api/v1/logs/tail?service={svc}"))
        .header(
            "Last-Event-ID",
            reqwest::header::HeaderValue::from_bytes(id).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200, "{}", String::from_utf8_lossy(id));
    tail
}

/// Writes a record of service `svc` now, then reads the tail until it arrives: every record
/// the tail sent up to it.
async fn records_up_to_a_fresh_one(
    tail: &mut reqwest::Response,
    store: &Arc<dyn Store>,
    svc: &str,
) -> Vec<String> {
    let fresh = log(
        &service(svc, &[]),
        dlog_storage::now_unix_nano(),
        "INFO",
        "fresh",
        None,
    );
    store.write(&[Document::Log(fresh)]).await.unwrap();
    store.refresh().await.unwrap();
    let mut buffer = String::new();
    let mut got = Vec::new();
    read_tail(
        tail,
        &mut buffer,
        Duration::from_secs(20),
        |g| g.iter().any(|l| l["body"] == "fresh"),
        &mut got,
    )
    .await;
    got.iter()
        .map(|l| l["body"].as_str().unwrap().to_string())
        .collect()
}

/// `Last-Event-ID` is input from anyone: an id that is too long, not alphanumeric, not UTF-8,
/// out of range or full of control characters is ignored (the tail starts from its default,
/// a moment before now) or refused; a well-formed id that names no record resumes from its
/// position; one from the future does not hide the records until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_last_event_ids_are_ignored_or_refused() {
    let (store, _dir) = embedded().await;
    let (viewer, base) = viewer(Arc::clone(&store), config()).await;
    let old_time = dlog_storage::now_unix_nano() - 60_000 * MS;
    // A record a minute old in each service tailed below: a tail from its default start does
    // not send it; one that took a malformed id below as a position (time 1) would, first.
    let services: Vec<String> = (0..12).map(|i| format!("hostile-{i}")).collect();
    for svc in &services {
        let old = log(&service(svc, &[]), old_time, "INFO", "a minute old", None);
        store.write(&[Document::Log(old)]).await.unwrap();
    }
    store.refresh().await.unwrap();

    let oversized = format!("1.{}", "a".repeat(129));
    let huge = format!("1.{}", "a".repeat(8_000));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("129 characters", oversized.into_bytes()),
        ("8,000 characters", huge.into_bytes()),
        ("not alphanumeric", b"1.ab-cd".to_vec()),
        ("not UTF-8", b"1.ab\xff\xfecd".to_vec()),
        ("no separator", b"1abcd".to_vec()),
        (
            "a time out of range",
            b"99999999999999999999999.abcd".to_vec(),
        ),
        ("a negative time", b"-1.abcd".to_vec()),
        ("nothing", b"".to_vec()),
    ];
    for ((what, id), svc) in malformed.iter().zip(&services) {
        let mut tail = tail_with_id(&base, svc, id).await;
        assert_eq!(
            records_up_to_a_fresh_one(&mut tail, &store, svc).await,
            vec!["fresh".to_string()],
            "an id with {what} is ignored"
        );
    }

    // Control characters cannot travel in a header value: the server refuses the request.
    let addr = base.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(
        b"GET /api/v1/logs/tail?service=hostile-8 HTTP/1.1\r\nHost: viewer\r\n\
          Last-Event-ID: 1.ab\x01\x1b[2Jcd\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let status = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");

    // Well formed, naming no record: the tail resumes from its position, the old record
    // (after it) included.
    let before_old = format!("{}.nowhere", old_time - 1);
    let mut tail = tail_with_id(&base, &services[9], before_old.as_bytes()).await;
    assert_eq!(
        records_up_to_a_fresh_one(&mut tail, &store, &services[9]).await,
        vec!["a minute old".to_string(), "fresh".to_string()]
    );
    drop(tail);
    // From a day ahead: taken as now, so the next record arrives.
    let ahead = format!("{}.abc", dlog_storage::now_unix_nano() + 86_400_000 * MS);
    let mut tail = tail_with_id(&base, &services[10], ahead.as_bytes()).await;
    assert_eq!(
        records_up_to_a_fresh_one(&mut tail, &store, &services[10]).await,
        vec!["fresh".to_string()]
    );
    drop(tail);
    viewer.shutdown().await;
}
