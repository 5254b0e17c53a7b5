//! Access to the viewer: off by default (it binds 127.0.0.1), or the receivers' bearer tokens.
//! API clients send `Authorization: Bearer <token>`; browsers sign in once with a token on
//! `/login`, which sets an HttpOnly, SameSite=Strict session cookie (a random id, never the
//! token itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use dlog_core::listen::Tokens;

use crate::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dlog_session";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest goes when a new one would pass it.
pub const MAX_SESSIONS: usize = 10_000;
/// Largest login form body, bytes.
const MAX_LOGIN_BODY: usize = 8192;

/// Tokens and the browser sessions signed in with one.
#[derive(Clone, Default)]
pub struct Access {
    tokens: Option<Tokens>,
    sessions: Arc<Mutex<HashMap<String, Instant>>>,
    secure_cookie: bool,
}

impl Access {
    /// Access checked against `tokens` (open when `None`); `secure_cookie` marks the cookie
    /// `Secure` (the viewer speaks TLS).
    pub fn new(tokens: Option<Tokens>, secure_cookie: bool) -> Self {
        Access {
            tokens,
            sessions: Default::default(),
            secure_cookie,
        }
    }

    /// Whether a token is needed.
    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    fn admits(&self, request: &Request) -> bool {
        let Some(tokens) = &self.tokens else {
            return true;
        };
        let headers = request.headers();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.as_bytes();
            if let Some((scheme, token)) = value.split_at_checked(6) {
                if scheme.eq_ignore_ascii_case(b"bearer")
                    && token.starts_with(b" ")
                    && tokens.accepts(token.trim_ascii())
                {
                    return true;
                }
            }
        }
        let Some(session) = session_cookie(request) else {
            return false;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(session) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                sessions.remove(session);
                false
            }
            None => false,
        }
    }

    fn new_session(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + SESSION_TTL);
        id
    }

    fn end_session(&self, request: &Request) {
        if let Some(session) = session_cookie(request) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(session);
        }
    }
}

fn session_cookie(request: &Request) -> Option<&str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Lets through requests that carry a token or a live session (or every request when auth is
/// off). Others: API routes get 401 with `WWW-Authenticate: Bearer`, pages a redirect to
/// `/login`.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The login form and the files it loads are open; they hold no data.
    let open = path == "/login" || path == "/favicon.ico" || path.starts_with("/static/");
    if open || state.access.admits(&request) {
        return next.run(request).await;
    }
    if path.starts_with("/api/") {
        let mut response = crate::params::ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong bearer token".into(),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    Redirect::to("/login").into_response()
}

/// `GET /login`: the sign-in form (no script).
pub async fn login_form(State(state): State<AppState>) -> Response {
    login_page(&state, None, StatusCode::OK)
}

fn login_page(state: &AppState, error: Option<&str>, status: StatusCode) -> Response {
    let note = if state.access.enabled() {
        error.unwrap_or("Sign in with one of the viewer's tokens.")
    } else {
        "This viewer needs no token."
    };
    // `note` is one of the fixed strings above: nothing from a request reaches this page.
    let html = crate::assets::LOGIN_HTML.replace("{{note}}", note);
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// `POST /login` (form field `token`): sets the session cookie and goes to `/search`.
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    if request.method() != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), MAX_LOGIN_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return login_page(
                &state,
                Some("The form is too large."),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        }
    };
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let token = fields
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim())
        .unwrap_or("");
    let Some(tokens) = &state.access.tokens else {
        return Redirect::to("/search").into_response();
    };
    if !tokens.accepts(token.as_bytes()) {
        return login_page(
            &state,
            Some("That token is not accepted."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let session = state.access.new_session();
    let secure = if state.access.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/search").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: ends the session.
pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    state.access.end_session(&request);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("dlog_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// Adds the security headers to every response: a Content-Security-Policy that allows
/// scripts and styles from this origin only (no inline script), `nosniff`, no framing, no
/// referrer.
pub async fn security_headers(request: Request, next: Next) -> Response<Body> {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// While the viewer listens on loopback only, refuses (421) a request whose `Host` names
/// anything but this machine: a page of another site whose name was rebound to 127.0.0.1
/// (DNS rebinding) would otherwise reach the API with the user's browser. A request without
/// a host (no browser sends one) passes.
pub async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(host) if !is_loopback_host(&host) => (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "this viewer listens on loopback and answers to the hosts localhost, 127.0.0.1 and \
             [::1] only; to serve other names, listen on another address\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// True for `localhost`, `*.localhost` and loopback addresses, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod host_tests {
    use super::is_loopback_host;

    #[test]
    fn only_this_machines_names_count_as_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:16686",
            "LOCALHOST.",
            "dlog.localhost:80",
            "127.0.0.1",
            "127.0.0.1:16686",
            "127.8.9.10:1",
            "[::1]:16686",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:16686",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:16686",
            "[::2]:16686",
            "",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
