//! The web UI in a real browser: Debian's `chromium` headless, driven over W3C WebDriver by
//! `chromedriver` (a minimal client over reqwest below). One browser session is shared by
//! the cases. Screenshots go to `$CARGO_TARGET_DIR/viewer-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (scripts/install-test-deps.sh installs them).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::webdriver::Browser;
use common::*;
use dlog_storage::{AlertDoc, Store};
use dlog_viewer::ViewerConfig;
use serde_json::json;

const ROWS: &str = "return [...document.querySelectorAll('#rows .row')].map(r => ({
    id: r.dataset.spanId, depth: +r.dataset.depth, parent: r.dataset.parent,
    op: r.querySelector('.op').textContent, svc: r.querySelector('.svc').textContent,
    width: +r.querySelector('.bar').dataset.widthPct,
    px: r.querySelector('.bar').getBoundingClientRect().width,
    error: !!r.querySelector('.err-mark'), cls: r.className }))";

async fn trace_page(b: &Browser, base: &str) {
    b.goto(&format!("{base}/trace/{CHECKOUT}")).await;
    let rows = b
        .wait(
            "four rows",
            &format!(
                "const rows = (function(){{ {ROWS} }})(); return rows.length === 4 ? rows : null"
            ),
            json!([]),
        )
        .await;
    let rows = rows.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![ROOT, CLIENT, CHARGE, QUERY]);
    let depths: Vec<u64> = rows.iter().map(|r| r["depth"].as_u64().unwrap()).collect();
    assert_eq!(depths, vec![0, 1, 2, 3], "each span nests under its parent");
    assert_eq!(rows[2]["svc"], "backend");
    assert_eq!(rows[2]["op"], "charge card");
    // Bars in proportion to durations: 400, 300, 200, 100 ms of a 400 ms trace.
    let px: Vec<f64> = rows.iter().map(|r| r["px"].as_f64().unwrap()).collect();
    for (i, expected) in [1.0, 0.75, 0.5, 0.25].iter().enumerate() {
        let ratio = px[i] / px[0];
        assert!(
            (ratio - expected).abs() < 0.02,
            "bar {i}: {ratio} of the root's width, expected {expected}"
        );
    }
    let errors: Vec<bool> = rows.iter().map(|r| r["error"].as_bool().unwrap()).collect();
    assert_eq!(
        errors,
        vec![false, false, false, true],
        "only the failed span is marked"
    );
    b.screenshot("trace").await;

    // Clicking a span opens its attributes and the logs emitted inside it.
    b.click(&format!("#span-{CHARGE}")).await;
    let details = b
        .wait(
            "span details with logs",
            "const logs = document.querySelector('#detail-logs .span-logs');
             if (!logs) return null;
             const attrs = {};
             for (const tr of document.querySelectorAll('#detail-attributes tr')) attrs[tr.dataset.key] = tr.querySelector('td').textContent;
             return {title: document.getElementById('detail-title').textContent, attrs,
                     logs: [...logs.querySelectorAll('.body')].map(e => e.textContent),
                     events: document.getElementById('detail-events').textContent,
                     resource: document.getElementById('detail-resource').textContent,
                     url: location.pathname + location.search}",
            json!([]),
        )
        .await;
    assert_eq!(details["title"], "backend charge card");
    assert_eq!(details["attrs"]["user.id"], "u-42");
    assert_eq!(details["attrs"]["retry"], "true");
    assert_eq!(details["attrs"]["amount"], "12.5");
    assert!(
        details["attrs"]["long.value"]
            .as_str()
            .unwrap()
            .contains("show all (500 chars)"),
        "long values are cut"
    );
    assert_eq!(details["logs"], json!(["charging card for u-42"]));
    assert!(details["events"]
        .as_str()
        .unwrap()
        .contains("card authorised"));
    assert!(details["resource"].as_str().unwrap().contains("backend-1"));
    assert_eq!(details["url"], format!("/trace/{CHECKOUT}?uiFind={CHARGE}"));
    b.screenshot("span-details").await;

    // Focus on the backend span's subtree, then back to the whole trace.
    b.click("#focus-subtree").await;
    let focused = b
        .wait("focused subtree", "const r = [...document.querySelectorAll('#rows .row')].map(r => r.dataset.spanId + ':' + r.dataset.depth); return r.length === 2 ? r : null", json!([]))
        .await;
    assert_eq!(
        focused,
        json!([format!("{CHARGE}:0"), format!("{QUERY}:1")])
    );
    b.click("#unfocus").await;
    b.wait(
        "whole trace again",
        "return document.querySelectorAll('#rows .row').length === 4",
        json!([]),
    )
    .await;
    // The critical path: each span's last-finishing child, back to the start.
    b.click("#critical-path").await;
    let critical = b
        .wait("critical path", "const r = [...document.querySelectorAll('#rows .row.critical')].map(r => r.dataset.spanId); return r.length ? r : null", json!([]))
        .await;
    assert_eq!(critical, json!([ROOT, CLIENT, CHARGE, QUERY]));
    b.click("#critical-path").await;

    // Collapsing the backend span hides the db span beneath it.
    b.js(
        &format!("document.querySelector('#span-{CHARGE} .toggle').click()"),
        json!([]),
    )
    .await;
    b.wait(
        "db row hidden",
        &format!("return !document.getElementById('span-{QUERY}')"),
        json!([]),
    )
    .await;

    // A deep link opens the trace at the span, details open.
    b.goto(&format!("{base}/trace/{CHECKOUT}?uiFind={QUERY}"))
        .await;
    let opened = b
        .wait(
            "deep-linked span selected",
            &format!("const r = document.getElementById('span-{QUERY}');
             const logs = document.querySelector('#detail-logs .span-logs');
             return r && r.classList.contains('selected') && logs ? {{title: document.getElementById('detail-title').textContent, logs: logs.textContent}} : null"),
            json!([]),
        )
        .await;
    assert_eq!(opened["title"], "db INSERT payments");
    assert!(opened["logs"]
        .as_str()
        .unwrap()
        .contains("deadlock detected on payments"));
    // The #span- form too.
    b.goto(&format!("{base}/trace/{CHECKOUT}#span-{CLIENT}"))
        .await;
    b.wait("hash deep link", &format!("const r = document.getElementById('span-{CLIENT}'); return r && r.classList.contains('selected')"), json!([])).await;

    // Find in trace highlights by attribute.
    b.type_into("#find", "user.id=u-42").await;
    let found = b
        .wait("find highlights", "const m = [...document.querySelectorAll('#rows .row.match')].map(r => r.dataset.spanId); return m.length ? m : null", json!([]))
        .await;
    assert_eq!(found, json!([CHARGE]));
}

async fn search_page(b: &Browser, base: &str) {
    // By attribute.
    b.goto(&format!("{base}/search")).await;
    b.wait(
        "services loaded",
        "return document.querySelectorAll('#f-service option').length > 1",
        json!([]),
    )
    .await;
    b.type_into("#f-tags", "user.id=u-42").await;
    b.click("#f-submit").await;
    let found = b
        .wait("attribute search", "const items = [...document.querySelectorAll('#trace-list .trace-item')]; return document.getElementById('result-count') && !document.querySelector('#results .muted') ? items.map(i => ({id: i.dataset.traceId, text: i.textContent})) : null", json!([]))
        .await;
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["id"], CHECKOUT);
    let text = found[0]["text"].as_str().unwrap();
    assert!(
        text.contains("frontend: GET /checkout")
            && text.contains("4 spans")
            && text.contains("1 errors"),
        "{text}"
    );
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#scatter circle').length",
            json!([])
        )
        .await,
        1
    );
    // By duration: at least 300ms leaves the checkout trace only.
    b.type_into("#f-tags", "").await;
    b.type_into("#f-min", "300ms").await;
    b.click("#f-submit").await;
    let found = b
        .wait("duration search", "const items = [...document.querySelectorAll('#trace-list .trace-item')].map(i => i.dataset.traceId); return items.length === 1 ? items : null", json!([]))
        .await;
    assert_eq!(found, json!([CHECKOUT]));
    b.type_into("#f-min", "").await;
    b.type_into("#f-max", "50ms").await;
    b.click("#f-submit").await;
    b.wait("short traces", &format!("const items = [...document.querySelectorAll('#trace-list .trace-item')].map(i => i.dataset.traceId); return items.includes('{HEALTH}') && !items.includes('{CHECKOUT}')"), json!([])).await;
    b.screenshot("search").await;
    // UTC toggle rewrites the times.
    b.click("#tz-utc").await;
    b.wait("UTC times", "return [...document.querySelectorAll('.trace-item .start')].every(e => e.textContent.endsWith('UTC'))", json!([])).await;
    b.click("#tz-utc").await;
}

async fn service_map(b: &Browser, base: &str) {
    b.goto(&format!("{base}/dependencies")).await;
    let edges = b
        .wait("edges drawn", "const g = [...document.querySelectorAll('#service-map g.edge')]; return g.length ? g.map(e => e.dataset.caller + '>' + e.dataset.callee + ':' + e.dataset.kind) : null", json!([]))
        .await;
    let mut edges: Vec<String> = serde_json::from_value(edges).unwrap();
    edges.sort();
    assert_eq!(
        edges,
        vec![
            "backend>db:undeclared".to_string(),
            "frontend>backend:observed".to_string(),
            "frontend>cache:unobserved".to_string(),
        ]
    );
    // The undeclared edge is drawn differently (dashed) from the observed one.
    let dash = b
        .js("const s = e => getComputedStyle(document.querySelector('#service-map g.edge-' + e + ' line')).strokeDasharray; return [s('observed'), s('undeclared'), s('unobserved')]", json!([]))
        .await;
    assert_eq!(dash[0], "none");
    assert_ne!(dash[1], "none");
    assert_ne!(dash[1], dash[2]);
    let nodes = b
        .js("return Object.fromEntries([...document.querySelectorAll('#service-map .node')].map(n => [n.dataset.service, n.dataset.status]))", json!([]))
        .await;
    assert_eq!(nodes["db"], "UP");
    assert_eq!(nodes["cache"], "UNKNOWN");
    let label = b
        .js("return document.querySelector('#service-map g.edge-undeclared .edge-label').textContent", json!([]))
        .await;
    // Errors, and the p95 of the db's spans under the backend's (one call of 100 ms).
    assert!(
        label.as_str().unwrap().ends_with("100.0% err · p95 100ms"),
        "{label}"
    );
    b.screenshot("service-map").await;
    // Clicking a node searches its traces.
    b.js("document.querySelector('#service-map .node[data-service=\"db\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))", json!([])).await;
    b.wait("search for db", "return location.pathname === '/search' && document.getElementById('f-service') && document.getElementById('f-service').value === 'db'", json!([])).await;
}

async fn alerts_page(b: &Browser, base: &str, store: &Arc<dyn Store>) {
    b.goto(&format!("{base}/alerts")).await;
    b.wait(
        "first alert",
        "return document.querySelectorAll('#alerts-table tr.alert').length === 1",
        json!([]),
    )
    .await;
    // A new alert appears without a reload.
    let now = dlog_storage::now_unix_nano();
    store
        .upsert_alerts(&[AlertDoc {
            id: "alert-backend-latency".into(),
            rule: "latency".into(),
            severity: "warning".into(),
            state: "firing".into(),
            service: "backend".into(),
            instance: None,
            summary: "backend p95 over 250ms".into(),
            first_seen_unix_nano: now,
            last_seen_unix_nano: now,
            occurrences: 1,
            example_trace_ids: vec![CHECKOUT.into()],
            root_cause: Some("db".into()),
            incident_id: Some("incident-1".into()),
            labels: Default::default(),
        }])
        .await
        .unwrap();
    store.refresh().await.unwrap();
    let row = b
        .wait("new alert row", "const r = document.querySelector('#alerts-table tr.alert[data-id=\"alert-backend-latency\"]'); return r ? {text: r.textContent, link: r.querySelector('a.trace-link').getAttribute('href')} : null", json!([]))
        .await;
    assert!(row["text"]
        .as_str()
        .unwrap()
        .contains("backend p95 over 250ms"));
    assert_eq!(row["link"], format!("/trace/{CHECKOUT}"));
    let incident = b
        .js(
            "return document.querySelector('#incidents .incident').textContent",
            json!([]),
        )
        .await;
    assert!(
        incident.as_str().unwrap().contains("root cause: db"),
        "{incident}"
    );

    // Silence the db service for 2h from the page: listed with its expiry, the alert marked.
    b.type_into("#s-service", "db").await;
    b.type_into("#s-comment", "migrating <b>db</b>").await;
    b.type_into("#s-by", "ops").await;
    b.js(
        "document.getElementById('s-duration').value = '2h'; document.getElementById('s-submit').click(); return true",
        json!([]),
    )
    .await;
    let row = b
        .wait(
            "the silence listed",
            "const r = document.querySelector('#silences-table tr.silence.active[data-service=\"db\"]'); return r ? {text: r.textContent, expires: r.querySelector('.expires').textContent} : null",
            json!([]),
        )
        .await;
    let stored = store.list_silences().await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].service.as_deref(), Some("db"));
    assert_eq!(
        stored[0].ends_unix_nano - stored[0].starts_unix_nano,
        2 * 3600 * 1_000_000_000
    );
    assert_eq!(stored[0].created_by, "ops");
    let text = row["text"].as_str().unwrap();
    assert!(
        text.contains("migrating <b>db</b>") && text.contains("ops"),
        "{text}"
    );
    // The expiry shown is the stored end, in the page's time format (a year and a time).
    let expires = row["expires"].as_str().unwrap();
    assert!(expires.len() >= 16 && expires.contains(':'), "{expires}");
    b.wait(
        "the db alert marked silenced",
        "const r = document.querySelector('#alerts-table tr.alert[data-id=\"alert-db-errors\"]'); return r && r.classList.contains('silenced') && r.textContent.includes('silenced')",
        json!([]),
    )
    .await;
    // Acknowledge the backend alert.
    b.js(
        "document.querySelector('#alerts-table tr.alert[data-id=\"alert-backend-latency\"] button.ack').click(); return true",
        json!([]),
    )
    .await;
    b.wait(
        "the backend alert acknowledged",
        "const r = document.querySelector('#alerts-table tr.alert[data-id=\"alert-backend-latency\"]'); return r && r.textContent.includes('acked by ops')",
        json!([]),
    )
    .await;
    assert_eq!(
        store.list_acks().await.unwrap()[0].alert_id,
        "alert-backend-latency"
    );
    b.screenshot("alerts").await;
}

async fn logs_page(b: &Browser, base: &str, store: &Arc<dyn Store>) {
    b.goto(&format!("{base}/logs?service=db")).await;
    let row = b
        .wait("db logs", "const r = document.querySelector('#logs-table tbody tr.log'); return r ? {body: r.querySelector('.body').textContent, link: r.querySelector('a.trace-link').getAttribute('href')} : null", json!([]))
        .await;
    assert_eq!(row["body"], "deadlock detected on payments");
    assert_eq!(row["link"], format!("/trace/{CHECKOUT}?uiFind={QUERY}"));
    // Live tail: a new record appears at the top.
    b.click("#l-live").await;
    b.wait(
        "tail open",
        "return document.body.dataset.tail === 'open'",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = log(
        &service("db", &[]),
        dlog_storage::now_unix_nano(),
        "ERROR",
        "replica lag 30s",
        None,
    );
    store
        .write(&[dlog_storage::Document::Log(fresh)])
        .await
        .unwrap();
    store.refresh().await.unwrap();
    b.wait("tailed record", "const r = document.querySelector('#logs-table tbody tr.log .body'); return r && r.textContent === 'replica lag 30s'", json!([])).await;
    b.screenshot("logs").await;
}

async fn hostile_text(b: &Browser, base: &str) {
    b.js("window.__pwned = 0", json!([])).await;
    b.goto(&format!("{base}/trace/{HOSTILE}?uiFind={HOSTILE_SPAN}"))
        .await;
    let shown = b
        .wait("hostile span details", "const l = document.querySelector('#detail-logs .span-logs'); return l ? {op: document.querySelector('#rows .row .op').textContent, attrs: document.getElementById('detail-attributes').textContent, logs: l.textContent} : null", json!([]))
        .await;
    assert_eq!(shown["op"], IMG_XSS, "the span name shows as text");
    assert!(shown["attrs"].as_str().unwrap().contains(SCRIPT_XSS));
    assert!(shown["logs"].as_str().unwrap().contains(IMG_XSS));
    assert!(shown["logs"].as_str().unwrap().contains(SCRIPT_XSS));
    b.goto(&format!("{base}/logs?service=edge")).await;
    b.wait(
        "hostile logs",
        "return document.querySelectorAll('#logs-table tbody tr.log').length === 2",
        json!([]),
    )
    .await;
    b.goto(&format!("{base}/search?service=edge")).await;
    b.wait(
        "hostile search",
        "return document.querySelectorAll('#trace-list .trace-item').length === 1",
        json!([]),
    )
    .await;
    let ran = b
        .js("return {pwned: window.__pwned || 0, imgs: document.querySelectorAll('main img').length, scripts: document.querySelectorAll('main script').length}", json!([]))
        .await;
    assert_eq!(
        ran,
        json!({"pwned": 0, "imgs": 0, "scripts": 0}),
        "record text never becomes markup"
    );
    b.screenshot("hostile-text").await;
}

/// A trace larger than one window: a deep link to its last span opens there at once (the
/// window around it), the rest fills in without moving it, and the page holds only the rows
/// in view.
async fn large_trace(b: &Browser, base: &str, store: &Arc<dyn Store>) {
    const N: usize = 6000;
    let large = "6000000000000000000000000000000f";
    let svc = service("bulk", &[]);
    let start = dlog_storage::now_unix_nano() - 300_000 * MS;
    let spans: Vec<dlog_storage::Document> = (0..N)
        .map(|i| {
            let parent = (i > 0).then(|| format!("{:016x}", (i - 1) / 4 + 1));
            dlog_storage::Document::Span(span(
                large,
                &format!("{:016x}", i + 1),
                parent.as_deref(),
                &svc,
                &format!("step {i}"),
                dlog_core::model::SpanKind::Internal,
                start + i as u64 * 1000,
                1,
            ))
        })
        .collect();
    store.write(&spans).await.unwrap();
    store.refresh().await.unwrap();
    let last = format!("{N:016x}");
    b.goto(&format!("{base}/trace/{large}?uiFind={last}")).await;
    let first = b
        .wait("the linked span's details", &format!("const t = document.getElementById('detail-title'); return t && t.textContent.includes('step {}') ? document.querySelectorAll('#rows .row').length : null", N - 1), json!([]))
        .await;
    assert!(
        first.as_u64().unwrap() < 100,
        "only rows in view are in the page: {first}"
    );
    b.wait_within(
        "every span loaded",
        Duration::from_secs(60),
        &format!("return document.body.dataset.traceState === 'loaded' && document.getElementById('trace-span-count').textContent === '{N} spans'"),
        json!([]),
    )
    .await;
    let kept = b
        .js(&format!("const r = document.getElementById('span-{last}'); const w = document.getElementById('waterfall').getBoundingClientRect();
             if (!r) return null; const y = r.getBoundingClientRect(); return {{selected: r.classList.contains('selected'), inView: y.top >= w.top && y.bottom <= w.bottom, rows: document.querySelectorAll('#rows .row').length}}"), json!([]))
        .await;
    assert_eq!(kept["selected"], true, "{kept}");
    assert_eq!(kept["inView"], true, "{kept}");
    assert!(kept["rows"].as_u64().unwrap() < 100, "{kept}");
    b.screenshot("large-trace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_browser() {
    let (store, _dir) = embedded().await;
    seed(store.as_ref()).await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    let browser = Browser::start().await;
    trace_page(&browser, &base).await;
    search_page(&browser, &base).await;
    service_map(&browser, &base).await;
    logs_page(&browser, &base, &store).await;
    alerts_page(&browser, &base, &store).await;
    hostile_text(&browser, &base).await;
    large_trace(&browser, &base, &store).await;
    browser.close().await;
    viewer.shutdown().await;
}
