//! Silences and acknowledgements: `GET/POST /api/v1/silences`, `DELETE
//! /api/v1/silences/{id}`, `GET/POST /api/v1/acks`. Stored through the `Store` trait and
//! honoured by the alerter's notifying outputs.
//!
//! State-changing calls must carry `Content-Type: application/json` (POST) or the
//! `X-Dlog-Request` header (DELETE; JSON also accepted). A cross-site form cannot send
//! either without a CORS preflight the viewer never grants, and the session cookie is
//! SameSite=Strict besides.
//!
//! With a token file, they need a token (or a session signed in with one) of the admin role,
//! and are recorded under the token's name, whatever author the request names.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use dlog_storage::{AlertAck, AlertDoc, Silence, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Identity, Role};
use crate::params::{parse_duration, ApiError};
use crate::AppState;

/// Longest silence.
pub const MAX_SILENCE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Longest comment, author, service or rule name (characters).
pub const MAX_TEXT: usize = 1000;
/// The header a DELETE must carry (any value) when it has no JSON content type.
pub const CSRF_HEADER: &str = "x-dlog-request";

fn us(ns: u64) -> u64 {
    ns / 1_000
}

fn forbidden(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        message: message.to_string(),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "state-changing requests need Content-Type: application/json".into(),
        })
    }
}

fn text(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    let value = value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if let Some(v) = &value {
        if v.chars().count() > MAX_TEXT {
            return Err(ApiError::bad_param(
                name,
                format!("longer than {MAX_TEXT} characters"),
            ));
        }
    }
    Ok(value)
}

/// Who is changing silences or acks: with tokens, the admin token's name (a read-only token is
/// refused, 403 naming the role it lacks); with access open, no one is known.
fn admin(identity: &Option<Extension<Identity>>) -> Result<Option<String>, ApiError> {
    match identity {
        None => Ok(None),
        Some(Extension(id)) if id.role == Role::Admin => Ok(Some(id.name.clone())),
        Some(Extension(id)) => Err(forbidden(&format!(
            "silencing and acknowledging need the admin role; token `{}` has the {} role",
            id.name,
            id.role.as_str()
        ))),
    }
}

/// The author recorded: the token's name when there is one (a client-named author is then
/// ignored), else the client's, else `viewer`.
fn author(
    field: &str,
    token_name: Option<String>,
    claimed: Option<String>,
) -> Result<String, ApiError> {
    let claimed = text(field, claimed)?;
    Ok(token_name.or(claimed).unwrap_or_else(|| "viewer".into()))
}

/// `GET /api/v1/whoami`: the name and role of the token the request came with, so that the
/// UI can say who will be recorded and hide what a read token cannot do. With access open:
/// no name, and the admin role (anyone may silence).
pub async fn whoami(identity: Option<Extension<Identity>>) -> Json<Value> {
    Json(match identity {
        Some(Extension(id)) => json!({"name": id.name, "role": id.role.as_str()}),
        None => json!({"name": null, "role": Role::Admin.as_str()}),
    })
}

/// A silence in the API: times in µs, and whether it is active now.
pub fn silence_json(s: &Silence, now: u64) -> Value {
    json!({
        "id": s.id,
        "service": s.service,
        "rule": s.rule,
        "starts_us": us(s.starts_unix_nano),
        "ends_us": us(s.ends_unix_nano),
        "created_by": s.created_by,
        "comment": s.comment,
        "active": s.active_at(now),
    })
}

fn ack_json(a: &AlertAck) -> Value {
    json!({
        "alert_id": a.alert_id,
        "acked_us": us(a.acked_unix_nano),
        "by": a.by,
        "comment": a.comment,
    })
}

/// Silences and acks, or none when the store keeps none (`Refused`).
pub async fn load(state: &AppState) -> Result<(Vec<Silence>, Vec<AlertAck>), ApiError> {
    let silences = match state.store.list_silences().await {
        Err(StoreError::Refused(_)) => Vec::new(),
        r => r?,
    };
    let acks = match state.store.list_acks().await {
        Err(StoreError::Refused(_)) => Vec::new(),
        r => r?,
    };
    Ok((silences, acks))
}

/// Adds `silenced_by` (the active silences matching it) and `ack` to an alert's JSON.
pub fn annotate(
    value: &mut Value,
    alert: &AlertDoc,
    silences: &[Silence],
    acks: &[AlertAck],
    now: u64,
) {
    let by: Vec<&str> = silences
        .iter()
        .filter(|s| s.active_at(now) && s.matches(&alert.service, &alert.rule))
        .map(|s| s.id.as_str())
        .collect();
    let ack = acks
        .iter()
        .find(|a| a.alert_id == alert.id && a.covers(alert.first_seen_unix_nano))
        .map(ack_json);
    if let Some(o) = value.as_object_mut() {
        o.insert("silenced".into(), json!(!by.is_empty()));
        o.insert("silenced_by".into(), json!(by));
        o.insert("ack".into(), ack.unwrap_or(Value::Null));
    }
}

/// `GET /api/v1/silences`: every silence kept (active first by end, then expired ones), and
/// the acknowledgements.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = dlog_storage::now_unix_nano();
    let (mut silences, acks) = load(&state).await?;
    // Active ones first, each group by latest end.
    silences.sort_by_key(|s| !s.active_at(now));
    Ok(Json(json!({
        "silences": silences.iter().map(|s| silence_json(s, now)).collect::<Vec<_>>(),
        "acks": acks.iter().map(ack_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    service: Option<String>,
    rule: Option<String>,
    /// `2h`, `30m`, `1d` is not a unit: `24h`.
    duration: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    require_json(headers)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// `POST /api/v1/silences` `{"service"?, "rule"?, "duration", "comment"?, "created_by"?}`:
/// silences a service, a rule, or a rule on a service from now for the duration.
pub async fn create(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token_name = admin(&identity)?;
    let new: NewSilence = parse_body(&headers, &body)?;
    let service = text("service", new.service)?;
    let rule = text("rule", new.rule)?;
    if service.is_none() && rule.is_none() {
        return Err(ApiError::bad_request(
            "a silence needs a service, a rule, or both",
        ));
    }
    let duration = parse_duration(new.duration.trim(), Duration::from_secs(1))
        .map_err(|e| ApiError::bad_param("duration", e))?;
    if duration.is_zero() || duration > MAX_SILENCE {
        return Err(ApiError::bad_param(
            "duration",
            "expecting more than 0 and at most 90 days (2160h)",
        ));
    }
    let now = dlog_storage::now_unix_nano();
    let silence = Silence {
        id: hex::encode(rand::random::<[u8; 8]>()),
        service,
        rule,
        starts_unix_nano: now,
        ends_unix_nano: now.saturating_add(duration.as_nanos() as u64),
        created_by: author("created_by", token_name, new.created_by)?,
        comment: text("comment", new.comment)?.unwrap_or_default(),
    };
    state.store.put_silence(&silence).await?;
    tracing::info!(id = %silence.id, service = ?silence.service, rule = ?silence.rule, "silence created");
    Ok((StatusCode::CREATED, Json(silence_json(&silence, now))))
}

/// `DELETE /api/v1/silences/{id}`: ends a silence now (removes it).
pub async fn delete(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let by = admin(&identity)?;
    if !is_json(&headers) && !headers.contains_key(CSRF_HEADER) {
        return Err(forbidden(
            "DELETE needs the X-Dlog-Request header or Content-Type: application/json",
        ));
    }
    if state.store.delete_silence(&id).await? {
        tracing::info!(id = %id, by = by.as_deref().unwrap_or("viewer"), "silence expired");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no silence `{id}`")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAck {
    alert_id: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

/// `POST /api/v1/acks` `{"alert_id", "comment"?, "by"?}`: acknowledges the alert's current
/// episode.
pub async fn ack(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token_name = admin(&identity)?;
    let new: NewAck = parse_body(&headers, &body)?;
    let alert_id = text("alert_id", Some(new.alert_id))?
        .ok_or_else(|| ApiError::bad_param("alert_id", "empty"))?;
    let ack = AlertAck {
        alert_id,
        acked_unix_nano: dlog_storage::now_unix_nano(),
        by: author("by", token_name, new.by)?,
        comment: text("comment", new.comment)?.unwrap_or_default(),
    };
    state.store.ack_alert(&ack).await?;
    Ok((StatusCode::CREATED, Json(ack_json(&ack))))
}
