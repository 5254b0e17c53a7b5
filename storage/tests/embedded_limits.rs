//! The embedded store under what a long run or a hostile sender brings: many day partitions
//! (open files bounded, a dropped day's file really closed), a service with tens of thousands
//! of instances (no query parameter per instance), and random attribute keys (the dictionary
//! bounded, the spans still stored whole).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::conformance::{log, service, span};
use dlog_core::model::SpanKind;
use dlog_storage::embedded::{self, EmbeddedStore, MAX_OPEN_PARTITIONS};
use dlog_storage::prelude::*;
use dlog_storage::{
    open_store, Document, LogQuery, RetentionPolicy, StoreConfig, TimeWindow, TraceQuery,
};
use serde_json::json;

const MS: u64 = 1_000_000;
const DAY: u64 = 86_400_000 * MS;

/// Files of `dir`'s day partitions this process holds open, as `/proc/self/fd` shows them
/// (a deleted file shows as `<path> (deleted)`), one entry per descriptor.
fn open_partition_files(dir: &Path) -> Vec<String> {
    let partitions = dir.join(embedded::PARTITIONS_DIR);
    let partitions = partitions.to_string_lossy();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(partitions.as_ref()))
        .collect()
}

/// Connections to partition files: descriptors on a partition's main file (each connection
/// also holds its `-wal` and `-shm`).
fn partition_connections(dir: &Path) -> usize {
    open_partition_files(dir)
        .iter()
        .filter(|p| p.ends_with(".sqlite3"))
        .count()
}

fn trace_id(day: u64) -> String {
    format!("{:032x}", 0xda70_0000 + day)
}

/// Regression: reader connections to day partitions were cached forever. A store that did not
/// run retention itself (the viewer's, next to the indexer's) kept dropped days' files open,
/// so their space was not returned until a restart, and every day queried stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_dropped_partitions_are_closed_and_open_partitions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let days = 100u64;
    let window = TimeWindow {
        max_age_nanos: (days + 10) * DAY,
        max_ahead_nanos: DAY,
    };
    // The indexer's store writes and runs retention; the viewer's only reads.
    let indexer = EmbeddedStore::open_with_window(dir.path(), window).unwrap();
    let viewer = EmbeddedStore::open_with_window(dir.path(), window).unwrap();
    let now = dlog_storage::now_unix_nano();
    let svc = service("daily", "daily-1", &[]);
    let docs: Vec<Document> = (0..days)
        .map(|k| {
            Document::Span(span(
                &trace_id(k),
                "00000000000000a1",
                None,
                &svc,
                "tick",
                SpanKind::Server,
                now - k * DAY,
                1,
            ))
        })
        .collect();
    for chunk in docs.chunks(10) {
        indexer.write(chunk).await.unwrap();
    }
    let all = TraceQuery {
        limit: 1000,
        ..Default::default()
    };
    // Twice: reads take turns over the reader connection sets, and each set answers over
    // every day whatever it had to close.
    for _ in 0..2 {
        let found = viewer.find_traces(&all).await.unwrap();
        assert_eq!(found.len(), days as usize);
    }
    for k in [0, days / 2, days - 1] {
        assert_eq!(viewer.get_trace(&trace_id(k)).await.unwrap().len(), 1);
    }
    // The indexer's store has only its writer's partitions open (it has not read), the
    // viewer's only its readers': together at most one store's bound.
    let connections = partition_connections(dir.path());
    assert!(
        connections <= MAX_OPEN_PARTITIONS,
        "{connections} connections to partition files over {days} days, more than \
         {MAX_OPEN_PARTITIONS}"
    );

    // Retention drops the days older than 40 days; the viewer's store learns of it only
    // from the files being gone.
    let report = indexer
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_nanos(40 * DAY)),
                max_bytes: None,
            },
            now,
        )
        .await
        .unwrap();
    assert!(report.dropped.len() >= 58, "{:?}", report.dropped);
    let dropped: BTreeSet<String> = report.dropped.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = viewer.find_traces(&all).await.unwrap();
        assert_eq!(found.len(), days as usize - dropped.len());
        let still_open: Vec<String> = open_partition_files(dir.path())
            .into_iter()
            .filter(|p| dropped.iter().any(|d| p.contains(d.as_str())))
            .collect();
        if still_open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "files of dropped days still open (their space is not returned): {still_open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !open_partition_files(dir.path())
            .iter()
            .any(|p| p.ends_with("(deleted)")),
        "no deleted partition file is held open"
    );
}

/// Regression: a query listed one SQL parameter per resource id, and a service with more
/// than 32,766 instances failed every log search and trace search by service ("too many SQL
/// variables").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_service_with_40000_instances_is_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let instances = 40_000u64;
    let docs: Vec<Document> = (0..instances)
        .flat_map(|i| {
            let svc = service("crowd", &format!("crowd-{i}"), &[]);
            let trace = format!("{:032x}", 0xc0_0000_0000u64 + i);
            [
                Document::Span(span(
                    &trace,
                    "00000000000000c1",
                    None,
                    &svc,
                    "gather",
                    SpanKind::Server,
                    now + i * MS,
                    1,
                )),
                Document::Log(log(
                    &svc,
                    now + i * MS,
                    "INFO",
                    &format!("arrived {i}"),
                    None,
                    &[],
                )),
            ]
        })
        .collect();
    for chunk in docs.chunks(5000) {
        store.write(chunk).await.unwrap();
    }
    let newest = format!("{:032x}", 0xc0_0000_0000u64 + instances - 1);

    let logs = store
        .search_logs(&LogQuery {
            service: Some("crowd".into()),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let bodies: Vec<&str> = logs.iter().map(|l| l.body.as_str()).collect();
    assert_eq!(bodies, ["arrived 39999", "arrived 39998", "arrived 39997"]);

    let by_service = store
        .find_traces(&TraceQuery {
            service: Some("crowd".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_service.len(), 2);
    assert_eq!(by_service[0].trace_id, newest);

    // Every instance's resource has host.name = vm1: a resource attribute filter lists them
    // all.
    let by_resource = store
        .find_traces(&TraceQuery {
            attributes: BTreeMap::from([("host.name".to_string(), "vm1".to_string())]),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_resource.len(), 1);
    assert_eq!(by_resource[0].trace_id, newest);
}

/// Regression: every new attribute key went into the dictionary, held in memory and on disk
/// for good, so random keys from a sender grew both without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_random_attribute_keys_do_not_grow_the_dictionary_past_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    // The default cap, through the store configuration.
    let config = StoreConfig::embedded(dir.path());
    let cap = config.max_dictionary_entries;
    assert_eq!(cap, dlog_storage::config::DEFAULT_MAX_DICTIONARY_ENTRIES);
    let store = open_store(&config).await.unwrap();
    let svc = service("noisy", "noisy-1", &[]);
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // A legitimate span first: its key is indexed.
    let mut known = span(
        &format!("{:032x}", 0xabcdu64),
        "00000000000000b1",
        None,
        &svc,
        "checkout",
        SpanKind::Server,
        now,
        1,
    );
    known.attributes.insert("order.id".into(), json!("o-first"));
    store.write(&[Document::Span(known.clone())]).await.unwrap();

    // Then 2,000 spans with 100 random keys each: 200,000 distinct keys.
    let spans: Vec<_> = (0..2000u64)
        .map(|i| {
            let mut s = span(
                &format!("{:032x}", 0x1_0000_0000u64 + i),
                "00000000000000b2",
                None,
                &svc,
                "spray",
                SpanKind::Server,
                now + (i + 1) * MS,
                1,
            );
            for k in 0..100u64 {
                s.attributes.insert(
                    format!(
                        "k{:016x}",
                        (i * 100 + k).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ),
                    json!(k),
                );
            }
            s.attributes
                .insert("order.id".into(), json!(format!("o-{i}")));
            s
        })
        .collect();
    for chunk in spans.chunks(200) {
        let docs: Vec<Document> = chunk.iter().cloned().map(Document::Span).collect();
        let outcomes = store.write(&docs).await.unwrap();
        assert!(outcomes
            .iter()
            .all(|o| *o == dlog_storage::WriteOutcome::Written));
    }

    // Names (service, operation, scope) are outside the cap; attribute keys are within it.
    let strings = embedded::count_rows(dir.path(), "strings").unwrap()
        - embedded::count_rows(dir.path(), "names").unwrap();
    assert!(
        strings <= cap as u64,
        "{strings} attribute dictionary entries, more than the cap of {cap}"
    );
    let usage = store.usage().await.unwrap();
    // Each key beyond the room left was counted.
    assert!(
        usage.unindexed_attributes >= 200_000 + 1 - cap as u64,
        "{}",
        usage.unindexed_attributes
    );

    // Every span is stored whole, keys beyond the cap included.
    for s in [&spans[0], &spans[1999]] {
        assert_eq!(store.get_trace(&s.trace_id).await.unwrap(), vec![s.clone()]);
    }
    assert_eq!(
        store.get_trace(&known.trace_id).await.unwrap(),
        vec![known.clone()]
    );
    // Search by the key indexed before the dictionary filled still finds its span.
    let found = store
        .find_traces(&TraceQuery {
            attributes: BTreeMap::from([("order.id".to_string(), "o-first".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found
            .iter()
            .map(|t| t.trace_id.as_str())
            .collect::<Vec<_>>(),
        [known.trace_id.as_str()]
    );
    let found = store
        .find_traces(&TraceQuery {
            attributes: BTreeMap::from([("order.id".to_string(), "o-1999".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].trace_id, spans[1999].trace_id);

    // A reopened store reads the same spans (the keys written out are in the span bodies).
    drop(store);
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.get_trace(&spans[1234].trace_id).await.unwrap(),
        vec![spans[1234].clone()]
    );
}

/// A span with one attribute, for the tests below.
fn span_with(
    trace: u64,
    svc: &dlog_core::model::ServiceInfo,
    name: &str,
    time: u64,
    key: &str,
    value: &str,
) -> dlog_core::model::SpanRecord {
    let mut s = span(
        &format!("{trace:032x}"),
        "00000000000000c1",
        None,
        svc,
        name,
        SpanKind::Server,
        time,
        1,
    );
    s.attributes.insert(key.into(), json!(value));
    s
}

async fn traces_with(store: &EmbeddedStore, key: &str, value: &str) -> Vec<String> {
    store
        .find_traces(&TraceQuery {
            attributes: BTreeMap::from([(key.to_string(), value.to_string())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.trace_id)
        .collect()
}

/// Regression: a day file dropped for size and created again by a late write was not noticed
/// by another store holding a connection to the deleted file: it kept returning the deleted
/// spans, missed the new ones and kept the deleted file's space taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_day_dropped_and_written_again_is_read_from_its_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let indexer = EmbeddedStore::open(dir.path()).unwrap();
    let viewer = EmbeddedStore::open(dir.path()).unwrap();
    let now = dlog_storage::now_unix_nano();
    let svc = service("late", "late-1", &[]);
    let day_ago = now - 2 * DAY;
    let old = span_with(0xd1, &svc, "old", day_ago, "order.id", "o-old");
    indexer.write(&[Document::Span(old.clone())]).await.unwrap();
    // The viewer opens the day's file.
    assert_eq!(
        viewer.get_trace(&old.trace_id).await.unwrap(),
        vec![old.clone()]
    );

    // Over budget: every day before today is dropped, the viewer's only learns of it from
    // the file system.
    let report = indexer
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(1),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    // A late span for the same day creates its file again.
    let late = span_with(0xd2, &svc, "late", day_ago + MS, "order.id", "o-late");
    indexer
        .write(&[Document::Span(late.clone())])
        .await
        .unwrap();

    // Read at once (before any periodic check could close the old connection).
    assert_eq!(viewer.get_trace(&old.trace_id).await.unwrap(), vec![]);
    assert_eq!(
        viewer.get_trace(&late.trace_id).await.unwrap(),
        vec![late.clone()]
    );
    assert_eq!(
        traces_with(&viewer, "order.id", "o-late").await,
        std::slice::from_ref(&late.trace_id)
    );
    assert!(traces_with(&viewer, "order.id", "o-old").await.is_empty());
    let deleted: Vec<String> = open_partition_files(dir.path())
        .into_iter()
        .filter(|p| p.ends_with("(deleted)"))
        .collect();
    assert!(
        deleted.is_empty(),
        "deleted partition files held open: {deleted:?}"
    );
}

/// Regression: span, service and scope names counted against the dictionary cap, so span
/// names built from URLs filled it and every new attribute key, legitimate ones included, was
/// left unindexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_distinct_span_names_do_not_use_up_the_attribute_key_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 100;
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_dictionary_entries(cap);
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // 3,000 distinct span names (30 times the cap), from 30 services.
    let spans: Vec<Document> = (0..3000u64)
        .map(|i| {
            let svc = service(&format!("svc-{}", i % 30), "i-1", &[]);
            Document::Span(span_with(
                0x5000 + i,
                &svc,
                &format!("GET /orders/{i}"),
                now + i * MS,
                "http.method",
                "GET",
            ))
        })
        .collect();
    for chunk in spans.chunks(500) {
        store.write(chunk).await.unwrap();
    }
    assert_eq!(store.usage().await.unwrap().unindexed_attributes, 0);
    // A new, legitimate key is still indexed.
    let svc = service("svc-0", "i-1", &[]);
    let s = span_with(0x9001, &svc, "GET /orders/new", now, "order.id", "o-1");
    store.write(&[Document::Span(s.clone())]).await.unwrap();
    assert_eq!(
        traces_with(&store, "order.id", "o-1").await,
        std::slice::from_ref(&s.trace_id)
    );
    assert_eq!(store.usage().await.unwrap().unindexed_attributes, 0);

    // The names are known as names after a reopen too.
    drop(store);
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_dictionary_entries(cap);
    let s = span_with(0x9002, &svc, "GET /orders/newer", now, "customer.id", "c-1");
    store.write(&[Document::Span(s.clone())]).await.unwrap();
    assert_eq!(
        traces_with(&store, "customer.id", "c-1").await,
        std::slice::from_ref(&s.trace_id)
    );
    assert_eq!(store.usage().await.unwrap().unindexed_attributes, 0);
    let keys = embedded::count_rows(dir.path(), "strings").unwrap()
        - embedded::count_rows(dir.path(), "names").unwrap();
    assert!(keys <= cap as u64, "{keys} attribute entries, cap {cap}");
}

/// Regression: attributes left unindexed were counted before the partition writes, so a batch
/// whose partition write failed and was retried counted them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_retried_batch_counts_its_unindexed_attributes_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_dictionary_entries(1);
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let svc = service("retry", "retry-1", &[]);
    // Fills the dictionary (one key) and creates the day's file.
    let first = span_with(0xe1, &svc, "first", now, "a", "1");
    store.write(&[Document::Span(first)]).await.unwrap();
    drop(store);
    let parts = dir.path().join(embedded::PARTITIONS_DIR);
    let file = std::fs::read_dir(&parts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite3"))
        .unwrap();
    // The day's file is replaced by something that cannot be opened: the write fails.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    std::fs::create_dir(&file).unwrap();
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_dictionary_entries(1);
    let before = store.usage().await.unwrap().unindexed_attributes;
    let mut second = span_with(0xe2, &svc, "second", now + MS, "b", "2");
    second.attributes.insert("c".into(), json!("3"));
    let batch = [Document::Span(second.clone())];
    assert!(store.write(&batch).await.is_err());
    // Retried once the file system is back.
    std::fs::remove_dir(&file).unwrap();
    store.write(&batch).await.unwrap();
    assert_eq!(
        store.get_trace(&second.trace_id).await.unwrap(),
        vec![second]
    );
    // Two new keys past the cap, written once.
    assert_eq!(
        store.usage().await.unwrap().unindexed_attributes - before,
        2
    );
}

/// Regression: a day file that exists but could not be opened was taken for a missing day, so
/// a query answered without that day's data and without saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_day_file_that_cannot_be_opened_fails_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let svc = service("broken", "broken-1", &[]);
    let s = span_with(0xf1, &svc, "op", now, "order.id", "o-1");
    store.write(&[Document::Span(s.clone())]).await.unwrap();
    drop(store);
    let file = std::fs::read_dir(dir.path().join(embedded::PARTITIONS_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite3"))
        .unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let err = store
        .find_traces(&TraceQuery::default())
        .await
        .expect_err("a day that cannot be read is an error, not an empty answer");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.to_string().contains(&name), "{err}");
}

/// Writes `spans` in batches of `batch`, each answered written, then `logs` in one batch.
async fn write_all(
    store: &EmbeddedStore,
    spans: &[dlog_core::model::SpanRecord],
    logs: &[dlog_core::model::LogEntry],
    batch: usize,
) {
    for chunk in spans.chunks(batch) {
        let docs: Vec<Document> = chunk.iter().cloned().map(Document::Span).collect();
        let outcomes = store.write(&docs).await.unwrap();
        assert!(outcomes
            .iter()
            .all(|o| *o == dlog_storage::WriteOutcome::Written));
    }
    store
        .write(&logs.iter().cloned().map(Document::Log).collect::<Vec<_>>())
        .await
        .unwrap();
}

/// Regression: the resources table was uncapped, so random resource attributes from a hostile
/// sender (a new `host.id` on every record) grew it, and the catalog every store holds in
/// memory, without bound. Past `max_resources`, records are stored whole and found by their
/// service's name; the count survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_random_resource_attributes_do_not_grow_the_resources_table_past_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 50usize;
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_resources(cap);
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let instance = |i: u64| {
        let mut svc = service("spray", &format!("sp-{i}"), &[]);
        svc.attributes
            .insert("host.id".into(), json!(format!("h-{i:08x}")));
        svc
    };
    // 300 records, each from a new instance: 200 spans, 100 logs.
    let spans: Vec<_> = (0..200u64)
        .map(|i| span_with(0x5e00 + i, &instance(i), "spray", now + i * MS, "k", "v"))
        .collect();
    let logs: Vec<_> = (200..300u64)
        .map(|i| {
            log(
                &instance(i),
                now + i * MS,
                "INFO",
                &format!("log {i}"),
                None,
                &[],
            )
        })
        .collect();
    write_all(&store, &spans, &logs, 40).await;

    // The table stops at the cap, plus the service's stand-in (its name alone).
    let rows = embedded::count_rows(dir.path(), "resources").unwrap();
    assert!(rows <= cap as u64 + 1, "{rows} resources, cap {cap}");
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.unindexed_resources, 300 - cap as u64);

    // Every record reads back whole, its own resource included.
    for s in [&spans[0], &spans[cap], &spans[199]] {
        assert_eq!(store.get_trace(&s.trace_id).await.unwrap(), vec![s.clone()]);
    }
    let found = store
        .search_logs(&LogQuery {
            service: Some("spray".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut found_sorted = found.clone();
    found_sorted.sort_by_key(|l| l.time_unix_nano);
    assert_eq!(found_sorted, logs, "every log, whole, found by service");
    // Found by service, all of them.
    let by_service = store
        .find_traces(&TraceQuery {
            service: Some("spray".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_service.len(), 200);
    // By a resource attribute: the instances that found room, not the others.
    assert_eq!(
        traces_with(&store, "host.id", "h-00000000").await,
        vec![spans[0].trace_id.clone()]
    );
    assert!(traces_with(&store, "host.id", "h-000000c7")
        .await
        .is_empty());

    // The counts are kept across a restart, and known resources stay indexed.
    drop(store);
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_resources(cap);
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.unindexed_resources, 300 - cap as u64);
    let again = span_with(0x5eff, &instance(1), "spray", now + 999 * MS, "k", "v");
    store.write(&[Document::Span(again.clone())]).await.unwrap();
    assert_eq!(
        store.usage().await.unwrap().unindexed_resources,
        300 - cap as u64
    );
    assert_eq!(store.get_trace(&again.trace_id).await.unwrap(), vec![again]);
}

/// Regression: service, operation, scope and level names were never capped, so a sender
/// naming spans after raw URLs (`GET /item/81723`), or putting a random suffix on its service
/// name (which also bypassed the resources cap: one stand-in resource per service name), grew
/// the dictionary, the operation list and the catalog every store holds in memory for good
/// (dropping old days does not shrink them). Past `max_names`, records are stored whole and
/// indexed under `(names full)`; the count survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_random_names_do_not_grow_the_dictionary_past_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 40usize;
    let open = || {
        EmbeddedStore::open(dir.path())
            .unwrap()
            .with_max_resources(cap)
            .with_max_names(cap)
    };
    let store = open();
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    // 300 spans, each named after its URL, from a service with a random suffix; a tenth from
    // a steady service. 100 logs with a new service and level each.
    let steady = service("steady", "st-1", &[]);
    let spans: Vec<_> = (0..300u64)
        .map(|i| {
            let svc = if i % 10 == 0 {
                steady.clone()
            } else {
                service(&format!("spray-{i:04x}"), "sp-1", &[])
            };
            let mut s = span_with(
                0x7a00 + i,
                &svc,
                &format!("GET /item/{i}"),
                now + i * MS,
                "k",
                "v",
            );
            s.scope = format!("lib-{i}");
            // Its own service name as an attribute value too: the dictionary then holds that
            // text, which must not change how the span was indexed.
            s.attributes
                .insert("peer.service".into(), json!(svc.name.clone()));
            s
        })
        .collect();
    let logs: Vec<_> = (0..100u64)
        .map(|i| {
            log(
                &service(&format!("logger-{i:04x}"), "lg-1", &[]),
                now + (400 + i) * MS,
                &format!("LEVEL{i}"),
                &format!("log {i}"),
                None,
                &[],
            )
        })
        .collect();
    write_all(&store, &spans, &logs, 50).await;

    // The names stop at the cap, plus the stand-in name; the operation list at the cap; the
    // resources at the names that found room, plus the stand-in resource.
    let names = embedded::count_rows(dir.path(), "names").unwrap();
    assert!(names <= cap as u64 + 1, "{names} names, cap {cap}");
    let operations = embedded::count_rows(dir.path(), "operations").unwrap();
    assert!(
        operations <= cap as u64,
        "{operations} operations, cap {cap}"
    );
    let resources = embedded::count_rows(dir.path(), "resources").unwrap();
    assert!(
        resources <= cap as u64 + 1,
        "{resources} resources, cap {cap}"
    );

    // Every record reads back whole: its own service, operation, scope and level.
    for s in &spans {
        assert_eq!(
            store.get_trace(&s.trace_id).await.unwrap(),
            vec![s.clone()],
            "{}",
            s.name
        );
    }
    let overflowed_logs = store
        .search_logs(&LogQuery {
            service: Some(embedded::NAMES_FULL.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!overflowed_logs.is_empty());
    for l in &overflowed_logs {
        assert!(logs.contains(l), "{l:?} is not a log that was written");
        assert!(l.service.name.starts_with("logger-"), "{l:?}");
    }
    // Their levels found no room either: found by level `(names full)`, shown as written.
    let by_level = store
        .search_logs(&LogQuery {
            level: Some(embedded::NAMES_FULL.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_level.len(), overflowed_logs.len());
    assert!(by_level.iter().all(|l| l.level.starts_with("LEVEL")));
    // The steady service kept its name: all of its 30 traces are found by it.
    let steady_traces = store
        .find_traces(&TraceQuery {
            service: Some("steady".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(steady_traces.len(), 30);
    // The others are found, together, under the stand-in name.
    let overflowed = store
        .find_traces(&TraceQuery {
            service: Some(embedded::NAMES_FULL.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!overflowed.is_empty());
    // Exactly the spans whose service is not listed (its name found no room), though the
    // dictionary holds their names as attribute values.
    let listed = store.services().await.unwrap();
    let unlisted: BTreeSet<String> = spans
        .iter()
        .filter(|s| !listed.contains(&s.service.name))
        .map(|s| s.trace_id.clone())
        .collect();
    let found: BTreeSet<String> = overflowed.iter().map(|t| t.trace_id.clone()).collect();
    assert_eq!(found, unlisted);
    // So are the spans whose operation name found no room, the steady service's included.
    let unnamed_ops = store
        .find_traces(&TraceQuery {
            service: Some("steady".into()),
            operation: Some(embedded::NAMES_FULL.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !unnamed_ops.is_empty() && unnamed_ops.len() < 30,
        "{} of the steady service's 30 traces",
        unnamed_ops.len()
    );
    let usage = store.usage().await.unwrap();
    // Every record but the few whose names all fit before the cap was reached.
    let fitted = spans.len() + logs.len() - usage.unindexed_names as usize;
    assert!(
        usage.unindexed_names > 0 && fitted <= cap,
        "{} unindexed names, {fitted} records fitted",
        usage.unindexed_names
    );
    let services = store.services().await.unwrap();
    assert!(services.len() <= cap + 1, "{services:?}");
    assert!(
        services.iter().any(|s| s == embedded::NAMES_FULL),
        "{services:?}"
    );

    // The count is kept across a restart, and known names stay indexed.
    drop(store);
    let store = open();
    assert_eq!(
        store.usage().await.unwrap().unindexed_names,
        usage.unindexed_names
    );
    let mut again = span_with(0x7aff, &steady, &spans[0].name, now + 999 * MS, "k", "v");
    again.scope = spans[0].scope.clone();
    store.write(&[Document::Span(again.clone())]).await.unwrap();
    assert_eq!(
        store.usage().await.unwrap().unindexed_names,
        usage.unindexed_names
    );
    // A name past the length bound is written out whatever room is left.
    let store = store.with_max_names(10_000);
    let mut long = span_with(0x7afe, &steady, &"n".repeat(600), now + 998 * MS, "k", "v");
    long.scope = spans[0].scope.clone();
    store.write(&[Document::Span(long.clone())]).await.unwrap();
    assert_eq!(store.get_trace(&long.trace_id).await.unwrap(), vec![long]);
    assert_eq!(
        store.usage().await.unwrap().unindexed_names,
        usage.unindexed_names + 1
    );
    let steady_traces = store
        .find_traces(&TraceQuery {
            service: Some("steady".into()),
            operation: Some(spans[0].name.clone()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(steady_traces.len(), 2, "{steady_traces:?}");
}

/// Regression: the unindexed counts were written after the batch, in a transaction of their
/// own, and a failure there reported the stored batch as failed (its retry counted twice).
/// Now the batch is reported written, and the failure logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_failure_to_count_does_not_fail_a_stored_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path())
        .unwrap()
        .with_max_resources(1);
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let first = log(&service("one", "i-1", &[]), now, "INFO", "first", None, &[]);
    store.write(&[Document::Log(first.clone())]).await.unwrap();
    rusqlite::Connection::open(dir.path().join(embedded::DB_FILE))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER no_counts BEFORE INSERT ON counters \
             BEGIN SELECT RAISE(ABORT, 'counters are read-only'); END;",
        )
        .unwrap();
    let second = log(
        &service("one", "i-2", &[]),
        now + MS,
        "INFO",
        "second",
        None,
        &[],
    );
    let outcomes = store.write(&[Document::Log(second.clone())]).await.unwrap();
    assert_eq!(outcomes, vec![dlog_storage::WriteOutcome::Written]);
    let found = store
        .search_logs(&LogQuery {
            service: Some("one".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found, vec![second, first]);
}

/// A batch whose shared transaction fails (here the dictionary refuses new strings) leaves
/// nothing behind: the next batch is handed the same dictionary ids for other names, and its
/// operations must be listed under their own names, as must the failed batch's once retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_failed_batch_leaves_no_operation_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let now = dlog_storage::now_unix_nano() - 3_600_000 * MS;
    let first = span_with(0xf1, &service("first", "f-1", &[]), "ready", now, "a", "1");
    store.write(&[Document::Span(first)]).await.unwrap();
    let shared = rusqlite::Connection::open(dir.path().join(embedded::DB_FILE)).unwrap();
    shared
        .execute_batch(
            "CREATE TRIGGER no_strings BEFORE INSERT ON strings \
             BEGIN SELECT RAISE(ABORT, 'the dictionary is read-only'); END;",
        )
        .unwrap();
    let failed = span_with(0xf2, &service("lost", "l-1", &[]), "vanish", now, "a", "1");
    assert!(store
        .write(&[Document::Span(failed.clone())])
        .await
        .is_err());
    shared.execute_batch("DROP TRIGGER no_strings").unwrap();
    // The same kind of span, new names in the same order: the same ids as the failed batch's.
    let next = span_with(0xf3, &service("next", "n-1", &[]), "appear", now, "a", "1");
    store.write(&[Document::Span(next)]).await.unwrap();
    store.write(&[Document::Span(failed)]).await.unwrap();
    for (svc, op) in [("next", "appear"), ("lost", "vanish"), ("first", "ready")] {
        let listed: Vec<String> = store
            .operations(svc)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(listed, [op], "operations of {svc}");
    }
}
