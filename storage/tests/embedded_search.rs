//! The embedded store's search paths at sizes the conformance fixture does not reach: log
//! text search walks its index newest row first and must still return the newest matches by
//! time, whatever order they arrived in; trace search checks its candidates span by span.

mod common;

use std::collections::BTreeMap;

use common::conformance::{log, service, span};
use dlog_core::model::SpanKind;
use dlog_storage::{open_store, Document, LogQuery, StoreConfig, TraceQuery};
use serde_json::json;

const MS: u64 = 1_000_000;

fn bodies_times(found: &[dlog_core::model::LogEntry]) -> Vec<u64> {
    found.iter().map(|l| l.time_unix_nano).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_text_search_returns_the_newest_matches_whatever_their_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("orderly", "or-1", &[]);
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // The newest match arrives first; then 3,000 older ones; then one in the middle late.
    let mut times = vec![t0 + 10_000 * MS];
    times.extend((0..3000u64).map(|i| t0 + i * MS));
    times.push(t0 + 5_000 * MS);
    for chunk in times.chunks(500) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|t| {
                Document::Log(log(
                    &svc,
                    *t,
                    "INFO",
                    &format!("payment settled at {t}"),
                    None,
                    &[],
                ))
            })
            .collect();
        store.write(&docs).await.unwrap();
    }
    let search = |text: &str, limit| LogQuery {
        text: Some(text.into()),
        limit,
        ..Default::default()
    };
    let found = store.search_logs(&search("settled", 3)).await.unwrap();
    assert_eq!(
        bodies_times(&found),
        vec![t0 + 10_000 * MS, t0 + 5_000 * MS, t0 + 2999 * MS]
    );
    let all = store
        .search_logs(&search("SETTLED at", 5000))
        .await
        .unwrap();
    assert_eq!(all.len(), times.len());
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(bodies_times(&all), sorted);
    // A substring inside a word, and one only two characters long.
    let exact = store
        .search_logs(&search(&format!("ed at {}", t0 + 17 * MS), 10))
        .await
        .unwrap();
    assert_eq!(bodies_times(&exact), vec![t0 + 17 * MS]);
    assert_eq!(store.search_logs(&search("at", 2)).await.unwrap().len(), 2);
    assert!(store
        .search_logs(&search("refunded", 10))
        .await
        .unwrap()
        .is_empty());
    // A replay stores nothing twice.
    let again: Vec<Document> = times[..100]
        .iter()
        .map(|t| {
            Document::Log(log(
                &svc,
                *t,
                "INFO",
                &format!("payment settled at {t}"),
                None,
                &[],
            ))
        })
        .collect();
    store.write(&again).await.unwrap();
    let all = store.search_logs(&search("settled", 5000)).await.unwrap();
    assert_eq!(all.len(), times.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_search_pages_past_candidates_that_do_not_match_on_one_span() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let front = service("front", "fr-1", &[]);
    let back = service("back", "bk-1", &[]);
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // 300 newer traces have GET on the front and a back span; 5 older ones have GET on
    // the back span itself. Only those match "service back and GET" on one span.
    let mut docs = Vec::new();
    for i in 0..305u64 {
        let trace = format!("{:032x}", 0xabc000 + i);
        let start = if i < 300 {
            t0 + (1000 + i) * MS
        } else {
            t0 + i * MS - 300 * MS
        };
        let mut root = span(
            &trace,
            "00000000000000f1",
            None,
            &front,
            "GET /",
            SpanKind::Server,
            start,
            5,
        );
        let mut child = span(
            &trace,
            "00000000000000f2",
            Some("00000000000000f1"),
            &back,
            "load",
            SpanKind::Server,
            start + MS,
            2,
        );
        let method = BTreeMap::from([("http.method".to_string(), json!("GET"))]);
        if i < 300 {
            root.attributes = method;
        } else {
            child.attributes = method;
        }
        docs.push(Document::Span(root));
        docs.push(Document::Span(child));
    }
    store.write(&docs).await.unwrap();
    let found = store
        .find_traces(&TraceQuery {
            service: Some("back".into()),
            attributes: BTreeMap::from([("http.method".into(), "GET".into())]),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<String> = found.iter().map(|t| t.trace_id.clone()).collect();
    let expected: Vec<String> = (300..305u64)
        .rev()
        .map(|i| format!("{:032x}", 0xabc000 + i))
        .collect();
    assert_eq!(ids, expected);
}

/// Many traces starting at the same instant (a batch stamped with one clock tick): a search
/// returns the newest by start, then by trace id, exactly as the order says, whether the tie
/// falls within the first page of candidates or past it (checked span by span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_sharing_a_start_are_returned_in_trace_id_order_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("tick", "tk-1", &[]);
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // 5 traces at t0 + 1 ms, then 150 at t0, their ids in no order.
    let mut starts = BTreeMap::new();
    for i in 0..155u64 {
        let trace = format!("{:032x}", (i * 7_919) % 1_009 + 0x7000);
        let start = if i < 5 { t0 + MS } else { t0 };
        starts.insert(trace, start);
    }
    let docs: Vec<Document> = starts
        .iter()
        .map(|(trace, start)| {
            let mut s = span(
                trace,
                "00000000000000a1",
                None,
                &svc,
                "tick",
                SpanKind::Server,
                *start,
                1,
            );
            s.attributes = BTreeMap::from([("batch".to_string(), json!("b1"))]);
            Document::Span(s)
        })
        .collect();
    store.write(&docs).await.unwrap();
    // The expected order, from the written starts and ids alone.
    let mut expected: Vec<(std::cmp::Reverse<u64>, String)> = starts
        .iter()
        .map(|(id, start)| (std::cmp::Reverse(*start), id.clone()))
        .collect();
    expected.sort();
    for attributes in [
        BTreeMap::new(),
        BTreeMap::from([("batch".to_string(), "b1".to_string())]),
    ] {
        for limit in [3, 20, 100] {
            let found = store
                .find_traces(&TraceQuery {
                    service: Some("tick".into()),
                    attributes: attributes.clone(),
                    limit,
                    ..Default::default()
                })
                .await
                .unwrap();
            let ids: Vec<String> = found.iter().map(|t| t.trace_id.clone()).collect();
            let want: Vec<String> = expected
                .iter()
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect();
            assert_eq!(ids, want, "limit {limit}, attributes {attributes:?}");
        }
    }

    // Ids that are not lowercase hex are kept as text, which the store's index orders before
    // every id kept as bytes: the tie must not end at a text id that sorts after the limit-th
    // trace found while a byte id that sorts before it is still to come.
    let mixed = service("mixed", "mx-1", &[]);
    let tied: Vec<Document> = ["G1", "z9", "00ff"]
        .iter()
        .map(|id| {
            Document::Span(span(
                id,
                "00000000000000a1",
                None,
                &mixed,
                "tick",
                SpanKind::Server,
                t0,
                1,
            ))
        })
        .collect();
    store.write(&tied).await.unwrap();
    for limit in [1, 2, 3] {
        let found = store
            .find_traces(&TraceQuery {
                service: Some("mixed".into()),
                limit,
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<&str> = found.iter().map(|t| t.trace_id.as_str()).collect();
        assert_eq!(ids, ["00ff", "G1", "z9"][..limit], "limit {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_count_each_edge_once_through_late_parents_replays_and_moves() {
    use dlog_storage::{DependencyEdge, TimeRange};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let front = service("front", "fr-1", &[]);
    let back = service("back", "bk-1", &[]);
    let hour = 3_600_000 * MS;
    // Mid-hour, so that ranges have ragged ends.
    let t0 = (dlog_storage::now_unix_nano() - 5 * hour) / hour * hour + hour / 2;
    let trace = "0123456789abcdef0123456789abcdef";
    let child = |start| {
        Document::Span(span(
            trace,
            "00000000000000c1",
            Some("00000000000000b1"),
            &back,
            "load",
            SpanKind::Server,
            start,
            2,
        ))
    };
    let parent = Document::Span(span(
        trace,
        "00000000000000b1",
        None,
        &front,
        "GET /",
        SpanKind::Server,
        t0 - MS,
        5,
    ));
    // The child arrives first: no edge until its parent does; replays change nothing.
    store.write(&[child(t0)]).await.unwrap();
    let deps = |s: u64, e: u64| {
        let store = std::sync::Arc::clone(&store);
        async move {
            store
                .dependencies(TimeRange::between(s, e))
                .await
                .unwrap()
                .observed
                .iter()
                .map(|d: &DependencyEdge| (d.caller.clone(), d.callee.clone(), d.calls))
                .collect::<Vec<_>>()
        }
    };
    assert!(deps(0, u64::MAX / 2).await.is_empty());
    for _ in 0..2 {
        store.write(&[parent.clone(), child(t0)]).await.unwrap();
    }
    let one = vec![("front".to_string(), "back".to_string(), 1)];
    assert_eq!(
        deps(t0 - 3 * hour, t0 + 3 * hour).await,
        one,
        "whole hours and ragged ends"
    );
    assert_eq!(deps(t0, t0).await, one, "inside one hour");
    assert!(deps(t0 + 1, t0 + 3 * hour).await.is_empty());
    assert_eq!(deps(0, u64::MAX / 2).await, one);
    // The child span written again with another start moves its edge.
    store.write(&[child(t0 + 2 * hour)]).await.unwrap();
    assert!(deps(t0 - hour, t0 + hour).await.is_empty());
    assert_eq!(deps(t0 + hour, t0 + 3 * hour).await, one);
    assert_eq!(deps(0, u64::MAX / 2).await, one);
}

/// One batch over several blocks of log row ids (1,024 each), the newest records first and
/// replays mixed in: the newest time up to each block is carried to the blocks after it, so
/// the text search's walk from the newest row does not stop before the newest records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_log_blocks_keeps_the_newest_records_findable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("blocks", "bl-1", &[]);
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let record = |t: u64| {
        Document::Log(log(
            &svc,
            t,
            "INFO",
            &format!("invoice settled at {t}"),
            None,
            &[],
        ))
    };
    let newest: Vec<u64> = (0..10).map(|i| t0 + (10_000 + i) * MS).collect();
    let older: Vec<u64> = (0..3_500).map(|i| t0 + i * MS).collect();
    let mut batch: Vec<Document> = newest.iter().map(|t| record(*t)).collect();
    for (i, t) in older.iter().enumerate() {
        batch.push(record(*t));
        if i.is_multiple_of(35) {
            // A replay of a record written earlier in the same batch.
            batch.push(record(older[i / 2]));
        }
    }
    store.write(&batch).await.unwrap();
    store.write(&batch).await.unwrap();
    let search = |limit| LogQuery {
        text: Some("settled".into()),
        limit,
        ..Default::default()
    };
    let found = store.search_logs(&search(3)).await.unwrap();
    assert_eq!(bodies_times(&found), vec![newest[9], newest[8], newest[7]]);
    let all = store.search_logs(&search(10_000)).await.unwrap();
    let mut expected: Vec<u64> = newest.iter().chain(&older).copied().collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(bodies_times(&all), expected);
}

/// The hourly call counts are summed per batch before they are written: many traces of one
/// batch crossing the same services in the same hour, errors among them, replays of the whole
/// batch, and moves of some children to another hour in a batch that also brings new traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_counts_summed_over_a_batch_stay_exact_through_replays_and_moves() {
    use dlog_storage::TimeRange;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let front = service("front", "fr-1", &[]);
    let back = service("back", "bk-1", &[]);
    let db = service("db", "db-1", &[]);
    let hour = 3_600_000 * MS;
    let t0 = (dlog_storage::now_unix_nano() - 6 * hour) / hour * hour + hour / 4;
    let trace = |k: u64| format!("{k:032x}");
    // Trace k: front → back (an error when k % 3 == 0) → db, the children at `at`.
    let spans = |k: u64, at: u64| {
        let mut child = span(
            &trace(k),
            "00000000000000c1",
            Some("00000000000000b1"),
            &back,
            "load",
            SpanKind::Server,
            at,
            2,
        );
        if k.is_multiple_of(3) {
            child.status = dlog_core::model::StatusCode::Error;
        }
        vec![
            Document::Span(span(
                &trace(k),
                "00000000000000b1",
                None,
                &front,
                "GET /",
                SpanKind::Server,
                t0,
                5,
            )),
            Document::Span(child),
            Document::Span(span(
                &trace(k),
                "00000000000000d1",
                Some("00000000000000c1"),
                &db,
                "select",
                SpanKind::Client,
                at,
                1,
            )),
        ]
    };
    let deps = |s: u64, e: u64| {
        let store = std::sync::Arc::clone(&store);
        async move {
            let mut found: Vec<(String, String, u64, u64)> = store
                .dependencies(TimeRange::between(s, e))
                .await
                .unwrap()
                .observed
                .into_iter()
                .map(|d| (d.caller, d.callee, d.calls, d.errors))
                .collect();
            found.sort();
            found
        }
    };
    let edges = |calls: u64, errors: u64| {
        vec![
            ("back".to_string(), "db".to_string(), calls, 0),
            ("front".to_string(), "back".to_string(), calls, errors),
        ]
    };
    let batch: Vec<Document> = (0..60).flat_map(|k| spans(k, t0 + k * MS)).collect();
    for _ in 0..3 {
        store.write(&batch).await.unwrap();
        assert_eq!(deps(t0 - hour, t0 + hour).await, edges(60, 20));
    }
    // Children of traces 0..15 move two hours on (5 of them errors); traces 60..70 are new,
    // in the first hour (4 errors: 60, 63, 66, 69).
    let moved: Vec<Document> = (0..15)
        .flat_map(|k| spans(k, t0 + 2 * hour + k * MS))
        .chain((60..70).flat_map(|k| spans(k, t0 + k * MS)))
        .collect();
    store.write(&moved).await.unwrap();
    store.write(&moved).await.unwrap();
    assert_eq!(deps(t0 - hour, t0 + hour).await, edges(55, 19));
    assert_eq!(deps(t0 + hour, t0 + 3 * hour).await, edges(15, 5));
    assert_eq!(deps(0, u64::MAX / 2).await, edges(70, 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_search_with_too_many_conditions_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let attributes = (0..65)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let err = store
        .find_traces(&TraceQuery {
            attributes,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, dlog_storage::StoreError::InvalidQuery(ref m) if m.contains("65 attribute filters")),
        "{err}"
    );
}

/// Regression: a replay was found by decoding every stored log of the same time, so a sender
/// stamping all its records with one time made each write scan all the earlier ones (and the
/// indexer fall behind for good). Now one index lookup finds it: 20,000 distinct logs of one
/// time are all stored, a replay of all of them adds none, and a new one still goes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_logs_sharing_one_time_are_deduplicated_by_identity_not_by_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("stamper", "st-1", &[]);
    let t = dlog_storage::now_unix_nano() - 60_000 * MS;
    let docs = |from: u32, to: u32| -> Vec<Document> {
        (from..to)
            .map(|n| Document::Log(log(&svc, t, "INFO", &format!("line {n}"), None, &[])))
            .collect()
    };
    for start in (0..20_000).step_by(1000) {
        store.write(&docs(start, start + 1000)).await.unwrap();
    }
    for start in (0..20_000).step_by(1000) {
        store.write(&docs(start, start + 1000)).await.unwrap();
    }
    store.write(&docs(20_000, 20_001)).await.unwrap();
    let stored = store
        .search_logs(&LogQuery {
            service: Some("stamper".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 20_001);
    let distinct: std::collections::BTreeSet<&str> =
        stored.iter().map(|l| l.body.as_str()).collect();
    assert_eq!(distinct.len(), 20_001);
}

/// Regression: a new trace refused for holding more than `MAX_TRACE_SPANS` spans left a blank
/// summary row behind, and every later trace search that reached it failed. The refusal names
/// the trace, and the store's other traces are still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_trace_refused_for_its_size_leaves_search_working() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("huge", "hg-1", &[]);
    let t0 = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let fine = "0000000000000000000000000000f1ae";
    store
        .write(&[Document::Span(span(
            fine,
            "00000000000000a1",
            None,
            &svc,
            "GET",
            SpanKind::Server,
            t0,
            5,
        ))])
        .await
        .unwrap();
    let huge = "00000000000000000000000000000b16";
    let docs: Vec<Document> = (0..dlog_storage::embedded::MAX_TRACE_SPANS as u64 + 1)
        .map(|n| {
            Document::Span(span(
                huge,
                &format!("{:016x}", n + 1),
                None,
                &svc,
                "step",
                SpanKind::Internal,
                t0 + n,
                1,
            ))
        })
        .collect();
    let outcomes = store.write(&docs).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, dlog_storage::WriteOutcome::Rejected(m) if m.contains(huge))),
        "{:?}",
        &outcomes[..1]
    );
    for query in [
        TraceQuery::default(),
        TraceQuery {
            service: Some("huge".into()),
            ..Default::default()
        },
        TraceQuery {
            min_duration: Some(std::time::Duration::from_millis(1)),
            ..Default::default()
        },
    ] {
        let found = store.find_traces(&query).await.unwrap();
        assert_eq!(
            found
                .iter()
                .map(|t| t.trace_id.as_str())
                .collect::<Vec<_>>(),
            [fine],
            "{query:?}"
        );
    }
    assert!(store.get_trace(huge).await.unwrap().is_empty());
}

/// The attribute index keeps, per value, the list of traces holding it, in chunks: a value
/// held by thousands of traces in a day (more chunks than one, and more candidates than are
/// looked up one by one) and one held by three are both found newest first; conditions
/// intersect; a late span of an old trace adds its values to the lists; a replay of every
/// trace changes no result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_lists_find_common_and_rare_values_through_late_spans_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let svc = service("lists", "ls-1", &[]);
    let other = service("elsewhere", "el-1", &[]);
    // One hour into yesterday (UTC): every trace in one day file, so that one file's list of
    // `parity=even` holds more candidates than are looked up one by one.
    const DAY: u64 = 86_400_000 * MS;
    let t0 = (dlog_storage::now_unix_nano() / DAY - 1) * DAY + 3_600_000 * MS;
    const N: u64 = 9000;
    let trace_of = |i: u64| format!("{:032x}", 0xabc0_0000 + i);
    let span_of = |i: u64| {
        let mut s = span(
            &trace_of(i),
            &format!("{:016x}", i + 1),
            None,
            if i.is_multiple_of(3) { &other } else { &svc },
            "work",
            SpanKind::Server,
            t0 + i * MS,
            1,
        );
        s.attributes = BTreeMap::from([
            (
                "parity".to_string(),
                json!(if i.is_multiple_of(2) { "even" } else { "odd" }),
            ),
            ("n".to_string(), json!(i)),
        ]);
        if [5, 4000, 8001].contains(&i) {
            s.attributes.insert("flag".into(), json!("x"));
        }
        // One value in three forms: an integer, a float and a text.
        let code = match i % 3 {
            0 => json!(200),
            1 => json!(200.0),
            _ => json!("200"),
        };
        s.attributes.insert("code".into(), code);
        s
    };
    let all: Vec<Document> = (0..N).map(|i| Document::Span(span_of(i))).collect();
    for batch in all.chunks(700) {
        store.write(batch).await.unwrap();
    }
    // A late span of trace 10, with a value no other span has.
    let mut late = span(
        &trace_of(10),
        "00000000000fffff",
        Some(&format!("{:016x}", 11)),
        &svc,
        "late",
        SpanKind::Internal,
        t0 + 10 * MS,
        1,
    );
    // Trace 10 is even: its late span adds it to the odd list, past many chunks.
    late.attributes = BTreeMap::from([
        ("late".to_string(), json!("yes")),
        ("parity".to_string(), json!("odd")),
    ]);
    store.write(&[Document::Span(late)]).await.unwrap();

    let search = |pairs: &[(&str, &str)], service: Option<&str>, limit: usize| TraceQuery {
        attributes: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service: service.map(str::to_string),
        limit,
        ..Default::default()
    };
    let ids = |found: Vec<dlog_storage::TraceSummary>| -> Vec<String> {
        found.into_iter().map(|t| t.trace_id).collect()
    };
    let check = |store: std::sync::Arc<dyn dlog_storage::Store>| async move {
        // 4,500 candidates: read in start order, the 20 newest even ones.
        let even = ids(store
            .find_traces(&search(&[("parity", "even")], None, 20))
            .await
            .unwrap());
        let want: Vec<String> = (0..N)
            .rev()
            .filter(|i| i.is_multiple_of(2))
            .take(20)
            .map(trace_of)
            .collect();
        assert_eq!(even, want);
        // Every one of them, past one page.
        let every = store
            .find_traces(&search(&[("parity", "even")], None, 5000))
            .await
            .unwrap();
        assert_eq!(every.len(), (N / 2) as usize);
        let odd = store
            .find_traces(&search(&[("parity", "odd")], None, 5000))
            .await
            .unwrap();
        assert_eq!(odd.len(), (N / 2) as usize + 1);
        assert!(odd.iter().any(|t| t.trace_id == trace_of(10)));
        // SQLite keeps the three forms in one list; a value matches as its text renders.
        let coded = store
            .find_traces(&search(&[("code", "200")], None, 10_000))
            .await
            .unwrap();
        assert_eq!(coded.len(), (N - N / 3) as usize);
        let floats = store
            .find_traces(&search(&[("code", "200.0")], None, 10_000))
            .await
            .unwrap();
        assert_eq!(floats.len(), (N / 3) as usize);
        let rare = ids(store
            .find_traces(&search(&[("flag", "x")], None, 20))
            .await
            .unwrap());
        assert_eq!(rare, vec![trace_of(8001), trace_of(4000), trace_of(5)]);
        // Intersected: odd and flagged; even, flagged and of one service.
        let odd_flag = ids(store
            .find_traces(&search(&[("parity", "odd"), ("flag", "x")], None, 20))
            .await
            .unwrap());
        assert_eq!(odd_flag, vec![trace_of(8001), trace_of(5)]);
        let one = ids(store
            .find_traces(&search(
                &[("parity", "even"), ("flag", "x")],
                Some("lists"),
                20,
            ))
            .await
            .unwrap());
        assert_eq!(one, vec![trace_of(4000)]);
        // A number stored as an integer, asked for as text.
        let n = ids(store
            .find_traces(&search(&[("n", "6001")], None, 20))
            .await
            .unwrap());
        assert_eq!(n, vec![trace_of(6001)]);
        let by_service = store
            .find_traces(&search(&[], Some("elsewhere"), 5000))
            .await
            .unwrap();
        assert_eq!(by_service.len(), (N / 3) as usize);
        assert!(by_service
            .windows(2)
            .all(|w| w[0].start_unix_nano >= w[1].start_unix_nano));
        let late = ids(store
            .find_traces(&search(&[("late", "yes")], None, 20))
            .await
            .unwrap());
        assert_eq!(late, vec![trace_of(10)]);
        assert!(store
            .find_traces(&search(&[("flag", "y")], None, 20))
            .await
            .unwrap()
            .is_empty());
    };
    check(store.clone()).await;
    for batch in all.chunks(2000) {
        store.write(batch).await.unwrap();
    }
    check(store.clone()).await;
    // The list of a value shared by thousands of traces spans several chunks.
    drop(store);
    let mut chunks = 0i64;
    for part in std::fs::read_dir(dir.path().join("partitions"))
        .unwrap()
        .flatten()
    {
        if part.path().extension().is_some_and(|e| e == "sqlite3") {
            let conn = rusqlite::Connection::open(part.path()).unwrap();
            chunks += conn
                .query_row(
                    "SELECT count(*) FROM postings WHERE value = 'even'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap();
        }
    }
    assert!(chunks > 1, "{chunks} chunks");
}
