//! The viewer's HTTP API against both backends: Jaeger's query API pinned by fixtures from
//! Jaeger's and Grafana's repositories (tests/fixtures/README.md), the calls Grafana's Jaeger
//! data source makes, dlog's own API, bounds, security headers and access control.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dlog_storage::{Document, Store};
use dlog_viewer::ViewerConfig;
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The keys of `ours` and their JSON types equal those of `theirs` (keys listed in
/// `optional` may be missing on either side). Fails naming the first difference.
fn same_shape(what: &str, ours: &Value, theirs: &Value, optional: &[&str]) {
    let (Value::Object(o), Value::Object(t)) = (ours, theirs) else {
        panic!("{what}: expected objects, got {ours} and {theirs}");
    };
    let ok: BTreeSet<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| !optional.contains(k))
        .collect();
    let tk: BTreeSet<&str> = t
        .keys()
        .map(String::as_str)
        .filter(|k| !optional.contains(k))
        .collect();
    assert_eq!(ok, tk, "{what}: keys differ from the fixture's");
    for k in ok {
        // `null` stands for an empty list or an absent error list in Jaeger's answers.
        let (a, b) = (kind(&o[k]), kind(&t[k]));
        assert!(
            a == b || a == "null" || b == "null",
            "{what}.{k}: {a} here, {b} in the fixture"
        );
    }
}

/// A tag has the fixture's keys, and its value is of the type its `type` names.
fn typed_tag(tag: &Value, fixture_tag: &Value) {
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        keys(tag),
        keys(fixture_tag),
        "tag keys differ from the fixture's"
    );
    let v = &tag["value"];
    let ok = match tag["type"].as_str().unwrap() {
        "string" => v.is_string(),
        "bool" => v.is_boolean(),
        "int64" => v.is_i64() || v.is_u64(),
        "float64" => v.is_number(),
        "binary" => v.is_string(),
        other => panic!("unknown tag type {other}"),
    };
    assert!(ok, "tag {tag}: the value is not of its type");
}

fn span<'a>(trace: &'a Value, id: &str) -> &'a Value {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spanID"] == id)
        .unwrap_or_else(|| panic!("span {id} missing"))
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} missing on {}", span["spanID"]))
}

fn trace_ids(body: &Value) -> BTreeSet<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_string())
        .collect()
}

async fn jaeger_api(base: &str, seeded: &Seeded) {
    // Services and operations.
    let (status, body) = get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200);
    same_shape("services", &body, &fixture("jaeger_services.json"), &[]);
    assert_eq!(body["data"], json!(["backend", "db", "edge", "frontend"]));
    assert_eq!(body["total"], 4);
    let (_, body) = get(&format!("{base}/api/services/frontend/operations")).await;
    assert_eq!(
        body["data"],
        json!(["GET /checkout", "GET /health", "POST /charge"])
    );
    let (_, body) = get(&format!(
        "{base}/api/operations?service=frontend&spanKind=client"
    ))
    .await;
    same_shape("operations", &body, &fixture("jaeger_operations.json"), &[]);
    same_shape(
        "operation",
        &body["data"][0],
        &fixture("jaeger_operations.json")["data"][0],
        &[],
    );
    assert_eq!(
        body["data"],
        json!([{"name": "POST /charge", "spanKind": "client"}])
    );

    // One trace, in the shape of Jaeger's UI model and of the answer Grafana reads.
    let (status, body) = get(&format!("{base}/api/traces/{CHECKOUT}")).await;
    assert_eq!(status, 200);
    let grafana = fixture("grafana_trace_response.json");
    let ui = fixture("jaeger_ui_01.json");
    same_shape("envelope", &body, &grafana, &[]);
    let trace = &body["data"][0];
    same_shape("trace", trace, &ui, &[]);
    same_shape("trace", trace, &grafana["data"][0], &[]);
    for s in trace["spans"].as_array().unwrap() {
        same_shape("span", s, &ui["spans"][0], &[]);
        same_shape("span", s, &grafana["data"][0]["spans"][0], &["flags"]);
        for t in s["tags"].as_array().unwrap() {
            typed_tag(t, &ui["spans"][1]["tags"][0]);
        }
        for r in s["references"].as_array().unwrap() {
            same_shape("reference", r, &ui["spans"][2]["references"][0], &[]);
        }
    }
    for p in trace["processes"].as_object().unwrap().values() {
        same_shape("process", p, &ui["processes"]["p1"], &[]);
    }
    assert_eq!(trace["traceID"], CHECKOUT);
    assert_eq!(trace["spans"].as_array().unwrap().len(), 4);
    let root = span(trace, ROOT);
    assert_eq!(root["operationName"], "GET /checkout");
    assert_eq!(root["references"], json!([]));
    assert_eq!(root["startTime"], seeded.checkout_start / 1000);
    assert_eq!(root["duration"], 400_000);
    assert_eq!(tag(root, "http.status_code")["type"], "int64");
    assert_eq!(tag(root, "http.status_code")["value"], 500);
    assert_eq!(tag(root, "span.kind")["value"], "server");
    let charge = span(trace, CHARGE);
    assert_eq!(
        charge["references"],
        json!([{"refType": "CHILD_OF", "traceID": CHECKOUT, "spanID": CLIENT}])
    );
    assert_eq!(tag(charge, "user.id")["type"], "string");
    assert_eq!(tag(charge, "retry")["type"], "bool");
    assert_eq!(tag(charge, "amount")["type"], "float64");
    assert_eq!(tag(charge, "amount")["value"], 12.5);
    assert_eq!(
        charge["logs"],
        json!([{"timestamp": (seeded.checkout_start + 60 * MS) / 1000, "fields": [
            {"key": "event", "type": "string", "value": "card authorised"},
            {"key": "auth.code", "type": "string", "value": "A1"},
        ]}])
    );
    assert!(charge["spans"].is_null());
    let query = span(trace, QUERY);
    assert_eq!(
        tag(query, "error"),
        &json!({"key": "error", "type": "bool", "value": true})
    );
    assert_eq!(
        tag(query, "otel.status_description")["value"],
        "deadlock detected"
    );
    assert_eq!(
        query["references"][1],
        json!({"refType": "FOLLOWS_FROM", "traceID": HEALTH, "spanID": HEALTH_SPAN})
    );
    assert!(
        root["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["key"] != "error"),
        "a span that did not fail carries no error tag"
    );
    let processes = trace["processes"].as_object().unwrap();
    let names: BTreeSet<&str> = processes
        .values()
        .map(|p| p["serviceName"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["backend", "db", "frontend"]));
    assert_eq!(processes.len(), 3, "one process per service resource");
    let db_process = &processes[query["processID"].as_str().unwrap()];
    assert_eq!(db_process["serviceName"], "db");
    assert!(db_process["tags"]
        .as_array()
        .unwrap()
        .contains(&json!({"key": "service.version", "type": "string", "value": "1.4.2"})));

    // Search: attributes (JSON, logfmt, key:value), trace-level durations, limit, ids.
    let search = |q: &str| format!("{base}/api/traces?{q}");
    let tags = urlencode(r#"{"user.id":"u-42"}"#);
    let (_, body) = get(&search(&format!("service=backend&tags={tags}"))).await;
    assert_eq!(trace_ids(&body), BTreeSet::from([CHECKOUT.to_string()]));
    same_shape("search", &body, &grafana, &[]);
    let (_, body) = get(&search("service=backend&tags=user.id%3Du-42+retry%3Dtrue")).await;
    assert_eq!(trace_ids(&body), BTreeSet::from([CHECKOUT.to_string()]));
    let (_, body) = get(&search("service=backend&tag=user.id:u-41")).await;
    assert_eq!(trace_ids(&body), BTreeSet::new());
    let (_, body) = get(&search("service=frontend&minDuration=300ms")).await;
    assert_eq!(trace_ids(&body), BTreeSet::from([CHECKOUT.to_string()]));
    let (_, body) = get(&search("service=frontend&maxDuration=100ms")).await;
    assert_eq!(trace_ids(&body), BTreeSet::from([HEALTH.to_string()]));
    let (_, body) = get(&search("service=frontend&limit=1")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = get(&search("service=frontend&operation=GET%20%2Fhealth")).await;
    assert_eq!(trace_ids(&body), BTreeSet::from([HEALTH.to_string()]));
    let (_, body) = get(&search(&format!("traceID={CHECKOUT}&traceID={HEALTH}"))).await;
    assert_eq!(
        trace_ids(&body),
        BTreeSet::from([CHECKOUT.to_string(), HEALTH.to_string()])
    );
    // A window that ends before the traces began finds nothing.
    let end = seeded.checkout_start / 1000 - 10 * 60 * 1_000_000;
    let (_, body) = get(&search(&format!(
        "service=frontend&start={}&end={end}",
        end - 3_600_000_000
    )))
    .await;
    assert_eq!(trace_ids(&body), BTreeSet::new());

    // Dependencies.
    let now_ms = dlog_storage::now_unix_nano() / 1_000_000;
    let (_, body) = get(&format!(
        "{base}/api/dependencies?endTs={now_ms}&lookback=3600000"
    ))
    .await;
    same_shape(
        "dependencies",
        &body,
        &fixture("jaeger_dependencies.json"),
        &[],
    );
    let mut links: Vec<Value> = body["data"].as_array().unwrap().clone();
    links.sort_by_key(|l| l["parent"].as_str().unwrap().to_string());
    assert_eq!(
        links,
        vec![
            json!({"parent": "backend", "child": "db", "callCount": 1}),
            json!({"parent": "frontend", "child": "backend", "callCount": 1}),
        ]
    );

    // Errors: Jaeger's shape, 400, naming the parameter.
    let (status, body) = get(&search("service=frontend&minDuration=abc")).await;
    assert_eq!(status, 400);
    same_shape("error", &body, &fixture("jaeger_error.json"), &[]);
    same_shape(
        "error item",
        &body["errors"][0],
        &fixture("jaeger_error.json")["errors"][0],
        &[],
    );
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("'minDuration'"),
        "{body}"
    );
    let (status, body) = get(&search("operation=x")).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("'service'"),
        "{body}"
    );
    let (status, body) = get(&search("service=frontend&tags=%7Bbroken")).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("'tags'"),
        "{body}"
    );
    let (status, body) = get(&search("service=frontend&minDuration=2s&maxDuration=1s")).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("maxDuration"),
        "{body}"
    );
    let (status, _) = get(&format!("{base}/api/traces/not-hex")).await;
    assert_eq!(status, 400);
    let (status, body) = get(&format!("{base}/api/traces/{}", "f".repeat(32))).await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], 404);
    let (status, body) = get(&search(&format!("service={}", "a".repeat(3000)))).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("'service'"),
        "{body}"
    );
    let (status, _) = get(&search(&"x=y&".repeat(3000))).await;
    assert_eq!(status, 400);
    // A huge limit is clamped, not refused.
    let (status, _) = get(&search("service=frontend&limit=99999999")).await;
    assert_eq!(status, 200);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The calls Grafana's Jaeger data source makes (public/app/plugins/datasource/jaeger:
/// datasource.ts, components/SearchForm.tsx, responseTransform.ts), and the fields it reads
/// from each answer.
async fn grafana_calls(base: &str) {
    // testDatasource: GET /api/services, success when `data` is a non-empty list.
    let (status, body) = get(&format!("{base}/api/services")).await;
    assert_eq!(status, 200);
    let services: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
    assert!(!services.is_empty());
    // SearchForm: the operations of the chosen service, `encodeURIComponent`-ed into the path.
    let (status, body) = get(&format!(
        "{base}/api/services/{}/operations",
        urlencode("frontend")
    ))
    .await;
    assert_eq!(status, 200);
    let ops: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
    assert!(ops.contains(&"GET /checkout".to_string()));
    // A search: the form's fields (tags converted from logfmt to JSON by
    // `convertTagsLogfmt`), then `start`/`end` in µs from the dashboard's range, and
    // `lookback=custom`.
    let now_us = dlog_storage::now_unix_nano() / 1000;
    let tags = urlencode(r#"{"user.id":"u-42"}"#);
    let url = format!(
        "{base}/api/traces?service=backend&tags={tags}&minDuration=1ms&maxDuration=10s&limit=20&start={}&end={now_us}&lookback=custom",
        now_us - 3_600_000_000
    );
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "{body}");
    // createTableFrame → transformTraceData: traceID, spans' startTime and duration, the
    // root span's process serviceName and operationName as the trace name.
    let traces = body["data"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    let spans = t["spans"].as_array().unwrap();
    let root = spans
        .iter()
        .find(|s| s["references"].as_array().unwrap().is_empty())
        .unwrap();
    let trace_name = format!(
        "{}: {}",
        t["processes"][root["processID"].as_str().unwrap()]["serviceName"]
            .as_str()
            .unwrap(),
        root["operationName"].as_str().unwrap()
    );
    assert_eq!(trace_name, "frontend: GET /checkout");
    assert!(spans
        .iter()
        .all(|s| s["startTime"].is_u64() && s["duration"].is_u64()));
    // The trace query: GET /api/traces/{encodeURIComponent(id)}, then `data[0]`, and per span
    // (toSpanRow) the CHILD_OF reference's spanID as the parent, the logs' timestamps, and
    // processes[processID].serviceName / .tags.
    let (status, body) = get(&format!("{base}/api/traces/{}", urlencode(CHECKOUT))).await;
    assert_eq!(status, 200);
    let t = &body["data"][0];
    let ids: BTreeSet<&str> = t["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanID"].as_str().unwrap())
        .collect();
    for s in t["spans"].as_array().unwrap() {
        let parent = s["references"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .map(|r| r["spanID"].as_str().unwrap());
        if let Some(parent) = parent {
            assert!(
                ids.contains(parent),
                "parent {parent} of {} is in the trace",
                s["spanID"]
            );
        }
        for l in s["logs"].as_array().unwrap() {
            assert!(l["timestamp"].is_u64());
            assert!(l["fields"].is_array());
        }
        let process = &t["processes"][s["processID"].as_str().unwrap()];
        assert!(process["serviceName"].is_string());
        assert!(process["tags"].is_array());
        assert!(s["tags"].is_array());
    }
}

async fn dlog_api(base: &str, store: &Arc<dyn Store>, seeded: &Seeded) {
    // Trace summaries: attribute filters without a service.
    let (status, body) = get(&format!("{base}/api/v1/traces?attr=user.id%3Du-42")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["traces"],
        json!([{
            "trace_id": CHECKOUT,
            "start_us": seeded.checkout_start / 1000,
            "duration_us": 400000.0,
            "root_service": "frontend",
            "root_operation": "GET /checkout",
            "span_count": 4,
            "error_count": 1,
            "services": ["backend", "db", "frontend"],
        }])
    );
    // Trace windows: pages of two, in start order, with a cursor.
    let mut ids = Vec::new();
    let mut url = format!("{base}/api/v1/traces/{CHECKOUT}/spans?limit=2");
    for _ in 0..5 {
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{body}");
        for s in body["spans"].as_array().unwrap() {
            ids.push(s["span_id"].as_str().unwrap().to_string());
        }
        let Some(next) = body["next"].as_object() else {
            break;
        };
        url = format!(
            "{base}/api/v1/traces/{CHECKOUT}/spans?limit=2&after_start_ns={}&after_span={}",
            next["after_start_ns"].as_str().unwrap(),
            next["after_span"].as_str().unwrap()
        );
    }
    assert_eq!(ids, vec![ROOT, CLIENT, CHARGE, QUERY]);
    // The window around one span: the spans before and after it in start order.
    let window = |body: &Value| -> Vec<String> {
        body["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["span_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = get(&format!(
        "{base}/api/v1/traces/{CHECKOUT}/spans?limit=2&around={CHARGE}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(window(&body), vec![CLIENT, CHARGE]);
    let (_, body) = get(&format!(
        "{base}/api/v1/traces/{CHECKOUT}/spans?limit=3&around={CLIENT}"
    ))
    .await;
    assert_eq!(window(&body), vec![ROOT, CLIENT, CHARGE]);
    let (status, _) = get(&format!(
        "{base}/api/v1/traces/{CHECKOUT}/spans?around={HEALTH_SPAN}"
    ))
    .await;
    assert_eq!(status, 404);
    let (status, body) = get(&format!(
        "{base}/api/v1/traces/{CHECKOUT}/spans?after_span=a0"
    ))
    .await;
    assert_eq!(status, 400);
    assert!(body["errors"][0]["msg"]
        .as_str()
        .unwrap()
        .contains("'after_start_ns'"));
    // Logs: inside one span, by text, by level.
    let (_, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={CHECKOUT}&span_id={CHARGE}"
    ))
    .await;
    let bodies: Vec<&str> = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["charging card for u-42"]);
    // The limit counts the span's own records, not the trace's.
    let (_, body) = get(&format!(
        "{base}/api/v1/logs?trace_id={CHECKOUT}&span_id={CHARGE}&limit=1"
    ))
    .await;
    assert_eq!(body["logs"][0]["body"], "charging card for u-42");
    let (_, body) = get(&format!("{base}/api/v1/logs?text=deadlock")).await;
    assert_eq!(body["logs"][0]["body"], "deadlock detected on payments");
    assert_eq!(body["logs"][0]["span_id"], QUERY);
    let (_, body) = get(&format!("{base}/api/v1/logs?level=error&service=db")).await;
    assert_eq!(body["logs"].as_array().unwrap().len(), 1);
    let (status, body) = get(&format!("{base}/api/v1/logs?span_id={CHARGE}")).await;
    assert_eq!(status, 400);
    assert!(body["errors"][0]["msg"]
        .as_str()
        .unwrap()
        .contains("'span_id'"));
    // Alerts and incidents.
    let (_, body) = get(&format!("{base}/api/v1/alerts")).await;
    assert_eq!(body["alerts"][0]["id"], "alert-db-errors");
    assert_eq!(body["alerts"][0]["example_trace_ids"], json!([CHECKOUT]));
    assert_eq!(body["incidents"][0]["root_cause"], "db");
    assert_eq!(body["incidents"][0]["state"], "firing");
    assert_eq!(
        body["incidents"][0]["alert_ids"],
        json!(["alert-db-errors"])
    );
    let (status, _) = get(&format!("{base}/api/v1/alerts?state=burning")).await;
    assert_eq!(status, 400);
    // Status.
    let (_, body) = get(&format!("{base}/api/v1/status")).await;
    let statuses: Vec<(String, String)> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["service"].as_str().unwrap().into(),
                i["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("backend".into(), "UP".into()),
            ("db".into(), "UP".into()),
            ("frontend".into(), "UP".into())
        ]
    );
    // Declared versus observed.
    let (_, body) = get(&format!("{base}/api/v1/dependencies?lookback=1h")).await;
    let edge = |caller: &str, callee: &str| {
        body["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["caller"] == caller && e["callee"] == callee)
            .cloned()
            .unwrap_or_else(|| panic!("edge {caller} → {callee} missing in {body}"))
    };
    let fb = edge("frontend", "backend");
    assert_eq!(
        (
            fb["observed"].clone(),
            fb["declared"].clone(),
            fb["calls"].clone()
        ),
        (json!(true), json!(true), json!(1))
    );
    let bd = edge("backend", "db");
    assert_eq!(
        (
            bd["observed"].clone(),
            bd["declared"].clone(),
            bd["errors"].clone()
        ),
        (json!(true), json!(false), json!(1))
    );
    assert_eq!(bd["error_rate"], 1.0);
    // p95 of the callee's spans under the caller's, from the sampled traces: the backend's
    // "charge card" (200 ms) under the frontend's client span, the db's insert (100 ms).
    assert_eq!(
        (fb["p95_us"].clone(), fb["p95_samples"].clone()),
        (json!(200_000), json!(1))
    );
    assert_eq!(
        (bd["p95_us"].clone(), bd["p95_samples"].clone()),
        (json!(100_000), json!(1))
    );
    assert!(
        body["latency_sample"]["traces"].as_u64().unwrap() >= 1,
        "{body}"
    );
    let fc = edge("frontend", "cache");
    assert_eq!(
        (fc["observed"].clone(), fc["declared"].clone()),
        (json!(false), json!(true))
    );
    assert!(body["services"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "cache", "status": "UNKNOWN"})));
    assert!(body["services"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "db", "status": "UP"})));

    // Live tail: a record written after the tail opened arrives as an event.
    let mut tail = reqwest::get(format!("{base}/api/v1/logs/tail?service=backend"))
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    assert_eq!(tail.headers()["content-type"], "text/event-stream");
    // First a record from a sender whose clock runs an hour ahead: it is shown, and must not
    // hide the records that come after it.
    let ahead = log(
        &service("backend", &[]),
        dlog_storage::now_unix_nano() + 3_600_000_000_000,
        "WARN",
        "clock ahead by an hour",
        None,
    );
    store.write(&[Document::Log(ahead)]).await.unwrap();
    store.refresh().await.unwrap();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = tail.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("clock ahead by an hour") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "tail output: {seen}");
    let fresh = log(
        &service("backend", &[]),
        dlog_storage::now_unix_nano(),
        "WARN",
        "card network slow",
        None,
    );
    store.write(&[Document::Log(fresh)]).await.unwrap();
    store.refresh().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = tail.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("card network slow") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "tail output: {seen}");
    assert_eq!(
        seen.matches("clock ahead by an hour").count(),
        1,
        "a record from the future is sent once"
    );
    assert!(seen.contains("event: log"));
    assert!(
        !seen.contains("deadlock"),
        "the tail keeps to its service filter"
    );
}

async fn headers(base: &str) {
    for path in ["/search", "/trace/abc", "/api/services", "/static/app.js"] {
        let res = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let page = reqwest::get(format!("{base}/search"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>"), "no inline script in the page");
    assert!(page.contains("src=\"/static/app.js\""));
    let js = reqwest::get(format!("{base}/static/app.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!js.contains(".innerHTML"), "the UI never assigns innerHTML");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_the_embedded_store() {
    let (store, _dir) = embedded().await;
    let seeded = seed(store.as_ref()).await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    jaeger_api(&base, &seeded).await;
    grafana_calls(&base).await;
    dlog_api(&base, &store, &seeded).await;
    headers(&base).await;
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_elasticsearch() {
    let (store, _es) = elastic().await;
    let seeded = seed(store.as_ref()).await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    jaeger_api(&base, &seeded).await;
    grafana_calls(&base).await;
    dlog_api(&base, &store, &seeded).await;
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_and_a_login_sets_a_strict_cookie() {
    let (store, dir) = embedded().await;
    seed(store.as_ref()).await;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# viewer\ns3cret-token\n").unwrap();
    let (viewer, base) = viewer(
        store,
        ViewerConfig {
            auth_token_file: Some(tokens),
            ..ViewerConfig::default()
        },
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .get(format!("{base}/api/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let res = client
        .get(format!("{base}/api/services"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .get(format!("{base}/api/services"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Pages send browsers to the login form.
    let res = client.get(format!("{base}/search")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/login");
    let res = client.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("name=\"token\"") && !page.contains("<script"),
        "{page}"
    );
    // The form's style sheet loads before signing in; it holds no data.
    let res = client
        .get(format!("{base}/static/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let form = |token: &str| {
        client
            .post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let res = form("nope").await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());
    let res = form("s3cret-token").await.unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains("s3cret-token"),
        "the cookie is a session id, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let res = client
        .get(format!("{base}/api/services"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .get(format!("{base}/api/services"))
        .header("cookie", "dlog_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Signing out ends the session.
    client
        .post(format!("{base}/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let res = client
        .get(format!("{base}/api/services"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    viewer.shutdown().await;
}

/// Listening on loopback, the viewer answers only to this machine's names: a page whose own
/// name was rebound to 127.0.0.1 (DNS rebinding) gets a 421 from the API, not the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_only_local_host_names_are_answered() {
    let (store, _dir) = embedded().await;
    seed(store.as_ref()).await;
    let (viewer, base) = viewer(store, ViewerConfig::default()).await;
    let port = viewer.addr().port();
    let client = reqwest::Client::new();
    for (host, status) in [
        (format!("evil.example:{port}"), 421),
        ("attacker.test".to_string(), 421),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
    ] {
        let res = client
            .get(format!("{base}/api/services"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "Host: {host}");
    }
    viewer.shutdown().await;
}
