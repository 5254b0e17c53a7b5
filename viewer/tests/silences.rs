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
    // Without tokens nobody is known, and anyone may change silences.
    let (_, me) = get(&format!("{base}/api/v1/whoami")).await;
    assert_eq!(me, json!({"name": null, "role": "admin"}));

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

/// POSTs JSON with a bearer token or a session cookie.
async fn post_as(url: &str, auth: &Auth<'_>, body: Value) -> (u16, Value) {
    let request = reqwest::Client::new().post(url).json(&body);
    let request = match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Cookie(cookie) => request.header("cookie", *cookie),
    };
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

enum Auth<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

/// Signs in on /login with a token and returns the session cookie (`name=value`).
async fn sign_in(base: &str, token: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

const TOKEN_FILE: &str = "# the viewer's people\n\
alice:admin:alice-0123456789\n\
bob:read:bob-0123456789\n\
legacy-0123456789\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_tokens_silence_and_ack_and_the_token_names_the_author() {
    let (store, dir) = embedded().await;
    seed(store.as_ref()).await;
    let tokens = dir.path().join("viewer-tokens");
    std::fs::write(&tokens, TOKEN_FILE).unwrap();
    let (viewer, base) = viewer(
        Arc::clone(&store),
        ViewerConfig {
            auth_token_file: Some(tokens),
            ..ViewerConfig::default()
        },
    )
    .await;
    let silences = format!("{base}/api/v1/silences");
    let acks = format!("{base}/api/v1/acks");
    let client = reqwest::Client::new();

    // A read-only token reads, and is refused every change with 403 naming the role.
    let res = client
        .get(&silences)
        .bearer_auth("bob-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // The UI asks who it is, to show the author and hide what a read token cannot do.
    let me: Value = client
        .get(format!("{base}/api/v1/whoami"))
        .bearer_auth("bob-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"name": "bob", "role": "read"}));
    let bob = Auth::Bearer("bob-0123456789");
    let (status, body) = post_as(&silences, &bob, json!({"service": "db", "duration": "1h"})).await;
    assert_eq!(status, 403, "{body}");
    let msg = body["errors"][0]["msg"].as_str().unwrap();
    assert!(msg.contains("admin role") && msg.contains("`bob`"), "{msg}");
    let (status, body) = post_as(&acks, &bob, json!({"alert_id": "alert-db-errors"})).await;
    assert_eq!(status, 403, "{body}");
    // The same through a browser session signed in with the read-only token.
    let bob_cookie = sign_in(&base, "bob-0123456789").await;
    let (status, _) = post_as(
        &silences,
        &Auth::Cookie(&bob_cookie),
        json!({"service": "db", "duration": "1h"}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(store.list_silences().await.unwrap().is_empty());
    assert!(store.list_acks().await.unwrap().is_empty());

    // An admin token silences; the author is its name, not the one the request claims.
    let alice = Auth::Bearer("alice-0123456789");
    let (status, created) = post_as(
        &silences,
        &alice,
        json!({"service": "db", "duration": "1h", "created_by": "mallory"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "alice");
    let stored = store.list_silences().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].created_by, "alice");
    let id = created["id"].as_str().unwrap().to_string();

    // A read-only token cannot expire it; the admin can.
    let url = format!("{silences}/{id}");
    let res = client
        .delete(&url)
        .bearer_auth("bob-0123456789")
        .header("x-dlog-request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(store.list_silences().await.unwrap().len(), 1);

    // An ack through the admin's browser session is recorded under the admin's name.
    let alice_cookie = sign_in(&base, "alice-0123456789").await;
    let (status, ack) = post_as(
        &acks,
        &Auth::Cookie(&alice_cookie),
        json!({"alert_id": "alert-db-errors", "by": "mallory"}),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["by"], "alice");
    let me: Value = client
        .get(format!("{base}/api/v1/whoami"))
        .header("cookie", &alice_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"name": "alice", "role": "admin"}));
    assert_eq!(store.list_acks().await.unwrap()[0].by, "alice");
    let res = client
        .delete(&url)
        .bearer_auth("alice-0123456789")
        .header("x-dlog-request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);

    // A bare token (the receivers' one-per-line format) is an admin named by its count.
    let (status, created) = post_as(
        &silences,
        &Auth::Bearer("legacy-0123456789"),
        json!({"rule": "error_rate", "duration": "15m"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "token-1");
    viewer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_with_an_unknown_role_is_refused_naming_the_line() {
    let (store, dir) = embedded().await;
    let tokens = dir.path().join("viewer-tokens");
    std::fs::write(
        &tokens,
        "alice:admin:alice-0123456789\ncarol:reader:carol-0123456789\n",
    )
    .unwrap();
    let config = ViewerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth_token_file: Some(tokens),
        ..ViewerConfig::default()
    };
    let message = match dlog_viewer::start(config, store).await {
        Ok(_) => panic!("a token file with an unknown role was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("line 2")
            && message.contains("`reader`")
            && !message.contains("carol-0123456789"),
        "{message}"
    );
}
