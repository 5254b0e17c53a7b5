//! The embedded store's day partitions seen from a search: a trace whose spans sit in two
//! days' files is searched and summarized as one trace.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::conformance::{service, span};
use dlog_core::model::SpanKind;
use dlog_storage::embedded::EmbeddedStore;
use dlog_storage::prelude::*;
use dlog_storage::{Document, TimeRange, TraceQuery};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

fn ids(found: &[dlog_storage::TraceSummary]) -> Vec<String> {
    found.iter().map(|t| t.trace_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_trace_split_over_two_days_is_filtered_and_summarized_whole() {
    let dir = tempfile::tempdir().unwrap();
    let today = dlog_storage::now_unix_nano() / DAY;
    let d = today - 3;
    let front = service("front", "fr-1", &[]);
    let back = service("back", "bk-1", &[]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    // The root starts at 23:59:59.5 of day d and lasts 200 ms; its child (whose spans came
    // late, after a restart) starts at 00:00:00.5 two days on and lasts 500 ms: the parts
    // last under a second each, the whole trace a day and 1.5 s.
    let root_start = (d + 1) * DAY - 500 * MS;
    let child_start = (d + 2) * DAY + 500 * MS;
    let mut root = span(
        trace,
        "00000000000000a1",
        None,
        &front,
        "GET /report",
        SpanKind::Server,
        root_start,
        200,
    );
    root.attributes = BTreeMap::from([("tenant".to_string(), json!("acme"))]);
    let mut child = span(
        trace,
        "00000000000000a2",
        Some("00000000000000a1"),
        &back,
        "render",
        SpanKind::Server,
        child_start,
        500,
    );
    child.attributes = BTreeMap::from([("format".to_string(), json!("pdf"))]);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.write(&[Document::Span(root)]).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.write(&[Document::Span(child)]).await.unwrap();
    let files = std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sqlite3")
        })
        .count();
    assert_eq!(files, 2, "the trace's parts are in two day files");

    let search = |q: TraceQuery| {
        let store = &store;
        async move { store.find_traces(&q).await.unwrap() }
    };
    // The summary shown is the whole trace's.
    let all = search(TraceQuery::default()).await;
    assert_eq!(all.len(), 1);
    let t = &all[0];
    assert_eq!(t.trace_id, trace);
    assert_eq!(t.start_unix_nano, root_start);
    assert_eq!(t.duration_nanos, DAY + 1500 * MS);
    assert_eq!(t.span_count, 2);
    assert_eq!(
        (t.root_service.as_str(), t.root_operation.as_str()),
        ("front", "GET /report")
    );
    assert_eq!(t.services, vec!["back".to_string(), "front".to_string()]);

    // Durations apply to the whole trace: at least 1 s only as a whole, at most 1 h in
    // each part but not as a whole.
    let long = search(TraceQuery {
        min_duration: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&long), vec![trace.to_string()]);
    assert_eq!(long[0].duration_nanos, DAY + 1500 * MS);
    let short = search(TraceQuery {
        max_duration: Some(Duration::from_secs(3600)),
        ..Default::default()
    })
    .await;
    assert!(short.is_empty(), "{short:?}");
    // With a span condition matched in the later part only.
    let long_pdf = search(TraceQuery {
        min_duration: Some(Duration::from_secs(1)),
        attributes: BTreeMap::from([("format".into(), "pdf".into())]),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&long_pdf), vec![trace.to_string()]);
    let short_pdf = search(TraceQuery {
        max_duration: Some(Duration::from_secs(3600)),
        service: Some("back".into()),
        ..Default::default()
    })
    .await;
    assert!(short_pdf.is_empty(), "{short_pdf:?}");

    // The trace started at 23:59:59.5 of day d: a range around that finds it through the
    // later part's span; a range starting after it does not.
    let around_start = TimeRange::between(root_start - 1000 * MS, root_start + 1000 * MS);
    let found = search(TraceQuery {
        service: Some("back".into()),
        time: around_start,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&found), vec![trace.to_string()]);
    assert_eq!(found[0].span_count, 2);
    let later = search(TraceQuery {
        time: TimeRange::between((d + 2) * DAY, (d + 3) * DAY),
        ..Default::default()
    })
    .await;
    assert!(later.is_empty(), "the trace started on day d: {later:?}");

    // Conditions on one span: each attribute matches in its own part, both together match
    // no single span.
    for (k, v) in [("tenant", "acme"), ("format", "pdf")] {
        let found = search(TraceQuery {
            attributes: BTreeMap::from([(k.into(), v.into())]),
            ..Default::default()
        })
        .await;
        assert_eq!(ids(&found), vec![trace.to_string()], "{k}={v}");
        assert_eq!(found[0].duration_nanos, DAY + 1500 * MS, "{k}={v}");
    }
    let both = search(TraceQuery {
        attributes: BTreeMap::from([
            ("tenant".into(), "acme".into()),
            ("format".into(), "pdf".into()),
        ]),
        ..Default::default()
    })
    .await;
    assert!(both.is_empty(), "{both:?}");
}

/// Connections this process holds to `dir`'s day partition files.
fn partition_connections(dir: &std::path::Path) -> usize {
    let partitions = dir.join("partitions");
    let partitions = partitions.to_string_lossy();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(partitions.as_ref()) && p.ends_with(".sqlite3"))
        .count()
}

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// A search over a time range opens only the day files whose records' times can fall in it,
/// and still finds a record whose clamped time put it in another day's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_time_range_search_opens_only_the_day_files_that_can_hold_it() {
    use common::conformance::log;
    use dlog_storage::LogQuery;
    let dir = tempfile::tempdir().unwrap();
    let now = dlog_storage::now_unix_nano();
    let svc = service("daily", "dl-1", &[]);
    let at = |k: u64| now - k * DAY - 60_000 * MS;
    // 30 days back, outside the 7-day partition window: stored in the oldest day's file.
    let ancient = now - 30 * DAY;
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for k in 0..7u64 {
            let mut docs: Vec<Document> = (0..200u64)
                .map(|i| {
                    Document::Log(log(
                        &svc,
                        at(k) + i * MS,
                        "INFO",
                        &format!("day {k} record {i}"),
                        None,
                        &[],
                    ))
                })
                .collect();
            docs.push(Document::Span(span(
                &format!("{:032x}", 0xd000 + k),
                "00000000000000a1",
                None,
                &svc,
                &format!("job {k}"),
                SpanKind::Server,
                at(k),
                5,
            )));
            store.write(&docs).await.unwrap();
        }
        store
            .write(&[Document::Log(log(
                &svc,
                ancient,
                "WARN",
                "from an old clock",
                None,
                &[],
            ))])
            .await
            .unwrap();
    }
    let days = std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sqlite3"))
        .count();
    assert_eq!(days, 8, "seven days and the oldest one of the window");

    let hour_of_day_3 = TimeRange::between(at(3) - 1_800_000 * MS, at(3) + 1_800_000 * MS);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(partition_connections(dir.path()), 0);
    let logs = store
        .search_logs(&LogQuery {
            time: hour_of_day_3,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.len(), 200);
    assert!(logs.iter().all(|l| l.body.starts_with("day 3 ")));
    let deps = store.dependencies(hour_of_day_3).await.unwrap();
    assert!(deps.observed.is_empty());
    // Each of the two reader sets opened day 3's file at most.
    let opened = partition_connections(dir.path());
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections to day files for one day's hour"
    );
    // Trace search reads the same day's candidates (each trace found is then looked up by id
    // in every day file, to complete a trace split over days).
    let traces = store
        .find_traces(&TraceQuery {
            time: hour_of_day_3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&traces), vec![format!("{:032x}", 0xd003)]);

    // The record from an old clock is in another day's file, and found by its own time.
    let old = store
        .search_logs(&LogQuery {
            time: TimeRange::between(ancient - 3_600_000 * MS, ancient + 3_600_000 * MS),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        old.iter().map(|l| l.body.as_str()).collect::<Vec<_>>(),
        vec!["from an old clock"]
    );
    drop(store);

    // The effect, printed: an hour's log search by a freshly opened store (no connection to
    // any day file yet), with the bounds, then with them forgotten (every day searched).
    let mut timings = Vec::new();
    for forget in [false, true] {
        if forget {
            rusqlite::Connection::open(dir.path().join("dlog.sqlite3"))
                .unwrap()
                .execute("DELETE FROM partition_bounds", [])
                .unwrap();
        }
        let mut took = Vec::new();
        let mut files = 0;
        for _ in 0..20 {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let t = std::time::Instant::now();
            let found = store
                .search_logs(&LogQuery {
                    time: hour_of_day_3,
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap();
            took.push(t.elapsed());
            assert_eq!(found.len(), 200);
            files = partition_connections(dir.path());
        }
        let (p50, p99) = p50_p99(took);
        timings.push((forget, files, p50, p99));
    }
    for (forget, files, p50, p99) in timings {
        println!(
            "1 hour of logs in a store of 8 day files, fresh store handle ({}): {files} day \
             files opened, p50 {p50:?}, p99 {p99:?}",
            if forget { "no bounds" } else { "with bounds" }
        );
    }
}

/// Regression: a store in another process (the viewer's, next to the indexer's) met
/// dictionary and resource ids written after it loaded its catalog (the writer commits its
/// dictionary, then the day partition; the query read the dictionary between the two, or
/// skipped loading it while another query held the catalog) and failed with `Corrupt`. It now
/// loads the catalog again on a miss and reads again, while the catalog has grown since the
/// failed read began (another query may have loaded the missing ids meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_second_store_reads_ids_written_after_it_loaded_its_catalog() {
    use common::conformance::log;
    use dlog_storage::LogQuery;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let writer = EmbeddedStore::open(dir.path()).unwrap();
    let viewer = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let done = Arc::new(AtomicBool::new(false));
    // Queries of the viewer, two at a time, while the writer adds new names.
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let viewer = Arc::clone(&viewer);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut queries = 0u32;
                while !done.load(Ordering::Relaxed) {
                    queries += 1;
                    let traces = viewer
                        .find_traces(&TraceQuery {
                            limit: 5,
                            ..Default::default()
                        })
                        .await;
                    let logs = viewer
                        .search_logs(&LogQuery {
                            limit: 5,
                            ..Default::default()
                        })
                        .await;
                    if let Err(e) = traces {
                        errors.push(format!("reader {r}: traces: {e}"));
                    }
                    if let Err(e) = logs {
                        errors.push(format!("reader {r}: logs: {e}"));
                    }
                }
                (queries, errors)
            })
        })
        .collect();
    let n = 300u64;
    for i in 0..n {
        let svc = service(&format!("svc-{i}"), &format!("in-{i}"), &[]);
        let mut s = span(
            &format!("{:032x}", 0xcafe_0000 + i),
            "00000000000000a1",
            None,
            &svc,
            &format!("op-{i}"),
            SpanKind::Server,
            t0 + i * MS,
            1,
        );
        s.attributes
            .insert(format!("key-{i}"), json!(format!("value-{i}")));
        let l = log(&svc, t0 + i * MS, "INFO", &format!("log {i}"), None, &[]);
        writer
            .write(&[Document::Span(s), Document::Log(l)])
            .await
            .unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let mut queries = 0;
    for r in readers {
        let (q, errors) = r.await.unwrap();
        queries += q;
        assert!(errors.is_empty(), "{errors:#?}");
    }
    assert!(queries > 0);
    // Everything written is read back by the second store, names resolved.
    let last = viewer
        .find_traces(&TraceQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(last[0].root_service, format!("svc-{}", n - 1));
    assert_eq!(last[0].root_operation, format!("op-{}", n - 1));
}

/// Regression: a day file was read only until it gave `limit` traces, in the order of their
/// part's start there; a trace split over days starts, as a whole, earlier than its part, so
/// it took the page's place of a newer trace further down the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_split_trace_does_not_hide_a_newer_trace_of_its_day_file() {
    let dir = tempfile::tempdir().unwrap();
    let today = dlog_storage::now_unix_nano() / DAY;
    let d = today - 3;
    let svc = service("front", "fr-1", &[]);
    let split = "0af7651916cd43dd8448eb211c80319c";
    let newer = "0000000000000000000000000000beef";
    let root = span(
        split,
        "00000000000000a1",
        None,
        &svc,
        "GET /report",
        SpanKind::Server,
        (d + 1) * DAY - 500 * MS,
        200,
    );
    let child = span(
        split,
        "00000000000000a2",
        Some("00000000000000a1"),
        &svc,
        "render",
        SpanKind::Server,
        (d + 2) * DAY + 500 * MS,
        500,
    );
    // Whole in the later day's file, starting before the split trace's part there but long
    // after the split trace as a whole.
    let other = span(
        newer,
        "00000000000000b1",
        None,
        &svc,
        "GET /other",
        SpanKind::Server,
        (d + 2) * DAY + 100 * MS,
        10,
    );
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.write(&[Document::Span(root)]).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store
        .write(&[Document::Span(child), Document::Span(other)])
        .await
        .unwrap();
    let first = store
        .find_traces(&TraceQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![newer.to_string()]);
    let both = store.find_traces(&TraceQuery::default()).await.unwrap();
    assert_eq!(ids(&both), vec![newer.to_string(), split.to_string()]);
}
