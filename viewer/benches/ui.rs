//! Viewer benchmarks in a real browser (headless Debian chromium over WebDriver). Prints
//! figures, asserts nothing:
//! - a 10,000-span trace, from navigation to rows painted;
//! - a 100,000-span trace, from navigation to the first window painted, and to all loaded;
//! - scrolling the 10,000-span trace: frame times (requestAnimationFrame deltas) while the
//!   waterfall scrolls;
//! - live tail: from a record's write to its row on the page;
//! - search, from the click to the results, over a store of 5,000 traces plus the big ones.
//!
//! `cargo bench -p dlog-viewer --bench ui` (release build). Needs chromium and chromedriver.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::webdriver::Browser;
use common::*;
use dlog_core::model::{SpanKind, SpanRecord};
use dlog_storage::{Document, Store};
use dlog_viewer::ViewerConfig;
use serde_json::{json, Value};

const BIG: &str = "1000000000000000000000000000000a";
const HUGE: &str = "1000000000000000000000000000000b";

fn big_trace(trace: &str, n: usize, start: u64) -> Vec<SpanRecord> {
    let services: Vec<_> = (0..8).map(|i| service(&format!("svc-{i}"), &[])).collect();
    (0..n)
        .map(|i| {
            // A 4-ary tree: realistic depth (about log4 n), every level wide.
            let parent = (i > 0).then(|| format!("{:016x}", (i - 1) / 4 + 1));
            let mut s = span(
                trace,
                &format!("{:016x}", i + 1),
                parent.as_deref(),
                &services[i % services.len()],
                &format!("operation {}", i % 50),
                SpanKind::Internal,
                start + i as u64 * 10_000,
                1 + (n - i) as u64 / 100,
            );
            s.attributes = BTreeMap::from([
                ("index".to_string(), json!(i)),
                (
                    "http.route".to_string(),
                    json!(format!("/items/{}", i % 100)),
                ),
            ]);
            s
        })
        .collect()
}

async fn write_all(store: &Arc<dyn Store>, spans: Vec<SpanRecord>) {
    for chunk in spans.chunks(5000) {
        let docs: Vec<Document> = chunk.iter().cloned().map(Document::Span).collect();
        store.write(&docs).await.unwrap();
    }
    store.refresh().await.unwrap();
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn open_trace(b: &Browser, base: &str, trace: &str, all_within: Duration) -> (f64, f64) {
    b.goto("about:blank").await;
    b.goto(&format!("{base}/trace/{trace}")).await;
    let painted = b
        .wait_within(
            "rows painted",
            all_within,
            "return window.__dlogFirstRows || null",
            json!([]),
        )
        .await;
    let loaded = b
        .wait_within(
            "all spans loaded",
            all_within,
            "return document.body.dataset.traceState === 'loaded' ? performance.now() : null",
            json!([]),
        )
        .await;
    (painted.as_f64().unwrap(), loaded.as_f64().unwrap())
}

#[tokio::main]
async fn main() {
    let (store, _dir) = embedded().await;
    let now = dlog_storage::now_unix_nano();
    let t = Instant::now();
    write_all(&store, big_trace(BIG, 10_000, now - 600_000 * MS)).await;
    write_all(&store, big_trace(HUGE, 100_000, now - 1_200_000 * MS)).await;
    let mut small = Vec::new();
    for i in 0..5000u64 {
        let trace = format!("{:032x}", 0xabc0_0000u64 + i);
        let svc = service(&format!("shop-{}", i % 5), &[]);
        let mut root = span(
            &trace,
            "0000000000000001",
            None,
            &svc,
            "GET /cart",
            SpanKind::Server,
            now - (i + 1) * 500 * MS,
            5 + i % 300,
        );
        root.attributes
            .insert("user.id".into(), json!(format!("u-{}", i % 1000)));
        let child = span(
            &trace,
            "0000000000000002",
            Some("0000000000000001"),
            &svc,
            "SELECT cart",
            SpanKind::Client,
            now - (i + 1) * 500 * MS + MS,
            2,
        );
        small.push(root);
        small.push(child);
    }
    write_all(&store, small).await;
    println!(
        "store: 10,000 + 100,000-span traces and 5,000 small traces written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    let b = Browser::start().await;
    // Warm up the browser and the store's caches once.
    open_trace(&b, &base, BIG, Duration::from_secs(120)).await;

    let runs = 5;
    let mut first = Vec::new();
    let mut all = Vec::new();
    for _ in 0..runs {
        let (p, l) = open_trace(&b, &base, BIG, Duration::from_secs(120)).await;
        first.push(p);
        all.push(l);
    }
    first.sort_by(f64::total_cmp);
    all.sort_by(f64::total_cmp);
    println!("10,000-span trace, navigation to rows painted: p50 {:.0} ms, max {:.0} ms ({runs} runs; all loaded p50 {:.0} ms)", pct(&first, 0.5), pct(&first, 1.0), pct(&all, 0.5));

    // Scrolling: move the waterfall by 3 rows per frame for 300 frames; frame time is the
    // delta between animation frames.
    let frames = b
        .wait_within(
            "scroll frames",
            Duration::from_secs(60),
            "if (!window.__scroll) {
               window.__scroll = {done: false, deltas: []};
               const w = document.getElementById('waterfall'); let last = performance.now(); let n = 0;
               const step = (t) => { window.__scroll.deltas.push(t - last); last = t; w.scrollTop += 72;
                 if (++n < 300) requestAnimationFrame(step); else window.__scroll.done = true; };
               requestAnimationFrame(step);
             }
             return window.__scroll.done ? window.__scroll.deltas : null",
            json!([]),
        )
        .await;
    let mut deltas: Vec<f64> = serde_json::from_value::<Vec<f64>>(frames)
        .unwrap()
        .into_iter()
        .skip(1)
        .collect();
    deltas.sort_by(f64::total_cmp);
    println!(
        "scrolling the 10,000-span trace: frame p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} frames)",
        pct(&deltas, 0.5),
        pct(&deltas, 0.99),
        pct(&deltas, 1.0),
        deltas.len()
    );

    let mut first = Vec::new();
    let mut all = Vec::new();
    for _ in 0..3 {
        let (p, l) = open_trace(&b, &base, HUGE, Duration::from_secs(300)).await;
        first.push(p);
        all.push(l);
    }
    first.sort_by(f64::total_cmp);
    all.sort_by(f64::total_cmp);
    println!("100,000-span trace, navigation to first window painted: p50 {:.0} ms, max {:.0} ms; all 100,000 loaded p50 {:.0} ms (3 runs)", pct(&first, 0.5), pct(&first, 1.0), pct(&all, 0.5));

    // A deep link to the last span of the 100,000-span trace: navigation to its details.
    let mut linked = Vec::new();
    for _ in 0..3 {
        b.goto("about:blank").await;
        b.goto(&format!("{base}/trace/{HUGE}?uiFind={:016x}", 100_000))
            .await;
        let t = b
            .wait_within(
                "linked span",
                Duration::from_secs(120),
                "const t = document.getElementById('detail-title'); return t && t.textContent.includes('operation 49') ? performance.now() : null",
                json!([]),
            )
            .await;
        linked.push(t.as_f64().unwrap());
    }
    linked.sort_by(f64::total_cmp);
    println!("100,000-span trace, deep link to its last span, navigation to the span's details: p50 {:.0} ms, max {:.0} ms (3 runs)", pct(&linked, 0.5), pct(&linked, 1.0));

    // The API alone: paging through the 100,000-span trace, 5,000 spans a page (the page that
    // was loading the trace is left first).
    b.goto("about:blank").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = reqwest::Client::new();
    let mut pages = Vec::new();
    let mut url = format!("{base}/api/v1/traces/{HUGE}/spans?limit=5000");
    loop {
        let t = Instant::now();
        let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        pages.push(t.elapsed().as_secs_f64() * 1000.0);
        let Some(next) = body["next"].as_object() else {
            break;
        };
        url = format!(
            "{base}/api/v1/traces/{HUGE}/spans?limit=5000&after_start_ns={}&after_span={}",
            next["after_start_ns"].as_str().unwrap(),
            next["after_span"].as_str().unwrap()
        );
    }
    let first_page = pages[0];
    pages.sort_by(f64::total_cmp);
    println!(
        "API, 100,000-span trace in pages of 5,000: {} pages, first {:.0} ms, p50 {:.0} ms, max {:.0} ms, total {:.0} ms",
        pages.len(),
        first_page,
        pct(&pages, 0.5),
        pct(&pages, 1.0),
        pages.iter().sum::<f64>()
    );

    // Live tail: write a record, time until its row is on the page.
    b.goto(&format!("{base}/logs?service=shop-1")).await;
    b.wait("logs page", "return document.getElementById('logs-status') && document.getElementById('logs-status').textContent.endsWith('records')", json!([])).await;
    b.click("#l-live").await;
    b.wait(
        "tail open",
        "return document.body.dataset.tail === 'open'",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tail = Vec::new();
    for i in 0..10 {
        let body = format!("tail probe {i}");
        let t = Instant::now();
        let entry = log(
            &service("shop-1", &[]),
            dlog_storage::now_unix_nano(),
            "INFO",
            &body,
            None,
        );
        store.write(&[Document::Log(entry)]).await.unwrap();
        store.refresh().await.unwrap();
        b.wait("tailed row", "const r = document.querySelector('#logs-table tbody tr.log .body'); return r && r.textContent === arguments[0]", json!([body])).await;
        tail.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    tail.sort_by(f64::total_cmp);
    println!("live tail, write to row on the page (poll 100 ms): p50 {:.0} ms, max {:.0} ms (10 records)", pct(&tail, 0.5), pct(&tail, 1.0));

    // Search: click to results, by attribute over every trace, and by service.
    let mut search = Vec::new();
    for q in ["user.id=u-7", "user.id=u-900", "http.route=/items/3"] {
        b.goto(&format!("{base}/search?lookback=168h&limit=20"))
            .await;
        b.wait("search form", "return document.querySelectorAll('#f-service option').length > 1 && !document.querySelector('#results .muted')", json!([])).await;
        b.type_into("#f-tags", q).await;
        b.js("window.__t0 = performance.now(); document.getElementById('f-submit').click(); window.__t1 = null;
              new MutationObserver((m, o) => { if (document.getElementById('result-count') && !document.querySelector('#results p.muted')) { window.__t1 = performance.now(); o.disconnect(); } })
                .observe(document.getElementById('results'), {childList: true, subtree: true});", json!([])).await;
        let ms: Value = b
            .wait_within(
                "results",
                Duration::from_secs(60),
                "return window.__t1 ? window.__t1 - window.__t0 : null",
                json!([]),
            )
            .await;
        search.push(ms.as_f64().unwrap());
    }
    search.sort_by(f64::total_cmp);
    println!("search by attribute over 5,002 traces / 120,000 spans, click to results: p50 {:.0} ms, max {:.0} ms (3 queries)", pct(&search, 0.5), pct(&search, 1.0));

    // The service map's API, which samples up to 50 traces for the p95 per edge.
    let client = reqwest::Client::new();
    let mut deps = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let res = client
            .get(format!("{base}/api/v1/dependencies?lookback=168h"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        let body: Value = res.json().await.unwrap();
        deps.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(body["latency_sample"]["traces"].as_u64().unwrap() > 0);
    }
    deps.sort_by(f64::total_cmp);
    println!("service map API with the sampled p95 (50 traces), over the same store: p50 {:.0} ms, max {:.0} ms (5 calls)", pct(&deps, 0.5), pct(&deps, 1.0));

    b.close().await;
    viewer.shutdown().await;
}
