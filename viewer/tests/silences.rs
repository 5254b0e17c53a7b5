//! Silences and acknowledgements through the viewer's API, on both backends: create, list
//! with expiry, the alert shown silenced and acknowledged, expire; and the CSRF guard on
//! state-changing calls.

mod common;

use std::sync::Arc;

use common::*;
use dlog_storage::Store;
use dlog_viewer::ViewerConfig;
use serde_json::{json, Value};

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

fn the_alert(body: &Value) -> &Value {
    body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "alert-db-errors")
        .expect("the seeded alert")
}

async fn silences_api(base: &str, store: &Arc<dyn Store>) {
    let client = reqwest::Client::new();
    let (status, body) = get(&format!("{base}/api/v1/silences")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["silences"], json!([]));

    // A form post (what a cross-site page can send without a preflight) is refused.
    let res = client
        .post(format!("{base}/api/v1/silences"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("service=db&duration=2h")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    assert!(store.list_silences().await.unwrap().is_empty());

    // Bad input names what is wrong.
    for (body, needle) in [
        (json!({"duration": "2h"}), "a service, a rule, or both"),
        (json!({"service": "db", "duration": "abc"}), "'duration'"),
        (json!({"service": "db", "duration": "3000h"}), "90 days"),
        (
            json!({"service": "db", "duration": "1h", "color": "red"}),
            "unknown field",
        ),
    ] {
        let (status, answer) = post_json(&format!("{base}/api/v1/silences"), body).await;
        assert_eq!(status, 400, "{answer}");
        let msg = answer["errors"][0]["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    }

    let (status, created) = post_json(
        &format!("{base}/api/v1/silences"),
        json!({"service": "db", "duration": "2h", "comment": "<img src=x onerror=alert(1)>", "created_by": "alice"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["ends_us"].as_u64().unwrap() - created["starts_us"].as_u64().unwrap(),
        2 * 3600 * 1_000_000
    );
    assert_eq!(created["active"], true);

    // Listed with its expiry, who and why, and stored.
    let (_, body) = get(&format!("{base}/api/v1/silences")).await;
    let listed = &body["silences"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["service"], "db");
    assert_eq!(listed["rule"], Value::Null);
    assert_eq!(listed["ends_us"], created["ends_us"]);
    assert_eq!(listed["created_by"], "alice");
    assert_eq!(listed["comment"], "<img src=x onerror=alert(1)>");
    let stored = store.list_silences().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].service.as_deref(), Some("db"));

    // The db alert shows silenced by it.
    let (_, alerts) = get(&format!("{base}/api/v1/alerts")).await;
    let alert = the_alert(&alerts);
    assert_eq!(alert["silenced"], true, "{alert}");
    assert_eq!(alert["silenced_by"], json!([id]));
    assert_eq!(alert["ack"], Value::Null);

    // Acknowledge it.
    let (status, ack) = post_json(
        &format!("{base}/api/v1/acks"),
        json!({"alert_id": "alert-db-errors", "by": "bob", "comment": "on it"}),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    let (_, alerts) = get(&format!("{base}/api/v1/alerts")).await;
    let alert = the_alert(&alerts);
    assert_eq!(alert["ack"]["by"], "bob");
    assert_eq!(alert["ack"]["comment"], "on it");
    assert_eq!(
        store.list_acks().await.unwrap()[0].alert_id,
        "alert-db-errors"
    );

    // Expiring needs the custom header (or JSON).
    let url = format!("{base}/api/v1/silences/{id}");
    let res = client.delete(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(store.list_silences().await.unwrap().len(), 1);
    let res = client
        .delete(&url)
        .header("x-dlog-request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = client
        .delete(&url)
        .header("x-dlog-request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let (_, alerts) = get(&format!("{base}/api/v1/alerts")).await;
    assert_eq!(the_alert(&alerts)["silenced"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_over_the_embedded_store() {
    let (store, _dir) = embedded().await;
    seed(store.as_ref()).await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    silences_api(&base, &store).await;
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_over_elasticsearch() {
    let (store, _es) = elastic().await;
    seed(store.as_ref()).await;
    let (viewer, base) = viewer(Arc::clone(&store), ViewerConfig::default()).await;
    silences_api(&base, &store).await;
    viewer.shutdown().await;
}
