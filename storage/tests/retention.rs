//! Retention on the embedded store while ingest runs: a small byte budget filled with seven
//! days of data. The oldest days go, the newest stay, and no write or query ever fails.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::conformance::{day_name, log, service, span};
use dlog_core::model::SpanKind;
use dlog_storage::{
    open_store, Document, LogQuery, RetentionPolicy, StoreConfig, TraceQuery, WriteOutcome,
};
use serde_json::json;

const DAY: u64 = 86_400_000_000_000;
const DAYS: u64 = 7;
const BATCHES_PER_DAY: u64 = 12;
const TRACES_PER_BATCH: u64 = 40;

/// One batch of day `day_back` (days before today): 40 traces of 5 spans and 200 logs.
fn batch(now: u64, day_back: u64, n: u64) -> Vec<Document> {
    let svc = service("filler", "filler-1", &[]);
    let base = now - day_back * DAY + n * 1_000_000;
    let mut docs = Vec::new();
    for t in 0..TRACES_PER_BATCH {
        let trace = format!("{:08x}{:08x}{:016x}", day_back, n, t);
        for s in 0..5u64 {
            let mut sp = span(
                &trace,
                &format!("{:016x}", s + 1),
                (s > 0).then(|| format!("{:016x}", s)).as_deref(),
                &svc,
                "fill",
                SpanKind::Internal,
                base + t * 1000 + s,
                1,
            );
            sp.attributes = BTreeMap::from([
                ("request.id".to_string(), json!(format!("{trace}-{s}"))),
                ("http.method".to_string(), json!("GET")),
            ]);
            docs.push(Document::Span(sp));
        }
        docs.push(Document::Log(log(
            &svc,
            base + t * 1000,
            "INFO",
            &format!(
                "day {day_back} batch {n} trace {t}: request served in {} ms",
                t * 7 % 100
            ),
            Some((&trace, "0000000000000001")),
            &[("request.id", json!(format!("{trace}")))],
        )));
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_byte_budget_drops_the_oldest_days_while_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let now = dlog_storage::now_unix_nano();
    let today = now / DAY;
    // Retention as if at least two hours into today: the retention pass packs the days that
    // ended more than an hour ago, and yesterday must be one of them whatever the clock says.
    let pass_now = now.max(today * DAY + 2 * 3_600_000_000_000);

    // How big today is, and a closed day once the retention pass packed its logs, to set a
    // budget of today and one closed day, plus as much again as today for what today's file
    // holds while it is written (its WAL): seven days (the partition window) do not fit, the
    // newest two do.
    let probe = tempfile::tempdir().unwrap();
    let probe_store = open_store(&StoreConfig::embedded(probe.path()))
        .await
        .unwrap();
    for n in 0..BATCHES_PER_DAY {
        probe_store.write(&batch(now, 0, n)).await.unwrap();
        probe_store.write(&batch(now, 2, n)).await.unwrap();
    }
    probe_store
        .apply_retention(&RetentionPolicy::default(), pass_now)
        .await
        .unwrap();
    let probed = probe_store.usage().await.unwrap();
    let closed_bytes = probed.partitions[0].bytes;
    let today_bytes = probed.partitions[1].bytes;
    let budget = probed.bytes_used + today_bytes;
    drop(probe_store);
    eprintln!(
        "today: {today_bytes} bytes, a closed day: {closed_bytes} bytes; budget {budget} bytes"
    );

    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    // Retention every 20 ms, as the indexer's loop would run it (much more often).
    let retention = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let policy = RetentionPolicy {
                max_age: None,
                max_bytes: Some(budget),
            };
            let mut dropped = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let report = store.apply_retention(&policy, pass_now).await.unwrap();
                dropped.extend(report.dropped);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            dropped.extend(
                store
                    .apply_retention(&policy, pass_now)
                    .await
                    .unwrap()
                    .dropped,
            );
            dropped
        })
    };
    // Queries all along: none may fail because a partition went away underneath.
    let reader = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut queries = 0u64;
            while !done.load(Ordering::Relaxed) {
                store
                    .find_traces(&TraceQuery {
                        service: Some("filler".into()),
                        limit: 20,
                        ..Default::default()
                    })
                    .await
                    .expect("find_traces during retention");
                store
                    .search_logs(&LogQuery {
                        text: Some("served".into()),
                        limit: 20,
                        ..Default::default()
                    })
                    .await
                    .expect("search_logs during retention");
                store
                    .dependencies(Default::default())
                    .await
                    .expect("dependencies during retention");
                queries += 3;
            }
            queries
        })
    };

    // Days oldest first, as time passes; every write is acknowledged.
    for back in (0..DAYS).rev() {
        for n in 0..BATCHES_PER_DAY {
            let docs = batch(now, back, n);
            let outcomes = store.write(&docs).await.expect("write during retention");
            assert_eq!(outcomes, vec![WriteOutcome::Written; docs.len()]);
            written.fetch_add(docs.len() as u64, Ordering::Relaxed);
        }
    }
    done.store(true, Ordering::Relaxed);
    let dropped = retention.await.unwrap();
    let queries = reader.await.unwrap();
    eprintln!(
        "{} documents written, {queries} queries, dropped {dropped:?}",
        written.load(Ordering::Relaxed)
    );

    let usage = store.usage().await.unwrap();
    let kept: Vec<String> = usage.partitions.iter().map(|p| p.name.clone()).collect();
    assert!(usage.bytes_used <= budget, "{usage:?} over {budget}");
    // The newest days stay, in one unbroken run up to today; the oldest went.
    assert!(kept.len() >= 2, "{kept:?}");
    let expected: Vec<String> = (0..kept.len() as u64)
        .rev()
        .map(|k| day_name(today - k))
        .collect();
    assert_eq!(kept, expected);
    for back in kept.len() as u64..DAYS {
        assert!(dropped.contains(&day_name(today - back)), "{dropped:?}");
    }
    // Today's data is all there; a dropped day's is not.
    let todays = store
        .find_traces(&TraceQuery {
            time: dlog_storage::TimeRange::between(today * DAY, now + DAY),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(todays.len() as u64, BATCHES_PER_DAY * TRACES_PER_BATCH);
    let oldest = format!("{:08x}{:08x}{:016x}", DAYS - 1, 0, 0);
    assert!(store.get_trace(&oldest).await.unwrap().is_empty());
    let newest = format!("{:08x}{:08x}{:016x}", 0, 0, 0);
    assert_eq!(store.get_trace(&newest).await.unwrap().len(), 5);
}
