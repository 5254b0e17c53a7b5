//! Access to the viewer: off by default (it binds 127.0.0.1), or bearer tokens, each with a
//! name and a role ([`ViewerTokens`]). API clients send `Authorization: Bearer <token>`;
//! browsers sign in once with a token on `/login`, which sets an HttpOnly, SameSite=Strict
//! session cookie (a random id, never the token itself). The token's identity goes with the
//! request ([`Identity`]): silences and acknowledgements need the admin role and are recorded
//! under the token's name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use dlog_core::listen::TokensError;
use subtle::ConstantTimeEq;

use crate::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dlog_session";
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest goes when a new one would pass it.
pub const MAX_SESSIONS: usize = 10_000;
/// Largest login form body, bytes.
const MAX_LOGIN_BODY: usize = 8192;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read everything; change nothing.
    Read,
    /// Read, and silence, unsilence and acknowledge alerts.
    Admin,
}

impl Role {
    /// `read` or `admin`, as the token file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Who a request comes from: the name and role of the token it (or its session) presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name: the author recorded on silences and acknowledgements.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Longest token name, characters.
pub const MAX_TOKEN_NAME: usize = 64;

/// A line of the token file was not understood.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading, size or an empty file, as for the receivers' tokens.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// A line names an unknown role or a bad name.
    #[error("the token file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token).
        reason: String,
    },
}

/// The viewer's tokens. Each line of the file is either `NAME:ROLE:TOKEN` (ROLE `admin` or
/// `read`) or a bare token (at most one colon), the receivers' format, which is an admin
/// named `token-N`, the file's N-th bare token. Blank lines and lines starting with `#` are
/// skipped. A line with two colons and no valid role, a token or a name given twice are
/// refused, naming the line (never the token).
#[derive(Clone)]
pub struct ViewerTokens(Arc<Vec<(Box<[u8]>, Identity)>>);

impl std::fmt::Debug for ViewerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ViewerTokens({} tokens)", self.0.len())
    }
}

impl ViewerTokens {
    /// The tokens of `file`; `Ok(None)` without a file (access is open).
    pub fn load(file: Option<&Path>) -> Result<Option<ViewerTokens>, TokenFileError> {
        let Some(path) = file else {
            return Ok(None);
        };
        let read = |source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > dlog_core::listen::auth::MAX_TOKEN_FILE_BYTES {
            return Err(TokensError::TooLarge {
                path: path.to_path_buf(),
            }
            .into());
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let tokens = Self::parse(&text, &path.display().to_string())?;
        Ok(Some(tokens))
    }

    /// Tokens from the text of a token file called `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<ViewerTokens, TokenFileError> {
        let mut tokens = Vec::new();
        // The line of each token and name so far, to refuse a second one.
        let mut lines: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut names: std::collections::HashMap<String, usize> = Default::default();
        let mut bare = 0usize;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokenFileError::Line {
                path: origin.to_string(),
                line: n,
                reason,
            };
            if !line.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "holds spaces or characters other than printable ASCII".into()
                ));
            }
            // Two colons or more: a named token, or refused. A misspelt or missing role
            // must not turn the whole line into a bare admin token.
            let (token, identity) = if line.bytes().filter(|&b| b == b':').count() >= 2 {
                let mut parts = line.splitn(3, ':');
                let (name, role, token) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                let role = match role {
                    "admin" => Role::Admin,
                    "read" => Role::Read,
                    // Shown only when it looks like a word (it may be part of a secret).
                    other if !other.is_empty()
                        && other.len() <= 16
                        && other.bytes().all(|b| b.is_ascii_alphabetic()) =>
                    {
                        return Err(bad(format!(
                            "unknown role `{other}` (expecting NAME:ROLE:TOKEN, ROLE `admin` or `read`)"
                        )))
                    }
                    _ => {
                        return Err(bad(
                            "the second field is not a role (expecting NAME:ROLE:TOKEN, ROLE `admin` or `read`; a bare token has at most one colon)".into(),
                        ))
                    }
                };
                if name.is_empty() || name.chars().count() > MAX_TOKEN_NAME {
                    return Err(bad(format!(
                        "a token's name is 1 to {MAX_TOKEN_NAME} characters"
                    )));
                }
                if token.is_empty() {
                    return Err(bad(format!("`{name}` has an empty token")));
                }
                if let Some(m) = names.get(name) {
                    return Err(bad(format!("the name `{name}` is already line {m}'s")));
                }
                names.insert(name.to_string(), n);
                (
                    token,
                    Identity {
                        name: name.to_string(),
                        role,
                    },
                )
            } else {
                // Named by their count, so comments and named tokens do not rename them.
                bare += 1;
                (
                    line,
                    Identity {
                        name: format!("token-{bare}"),
                        role: Role::Admin,
                    },
                )
            };
            if let Some(m) = lines.get(token.as_bytes()) {
                return Err(bad(format!("the same token as line {m}")));
            }
            lines.insert(token.as_bytes().to_vec(), n);
            tokens.push((token.as_bytes().into(), identity));
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty {
                origin: format!("the token file {origin}"),
            }
            .into());
        }
        Ok(ViewerTokens(Arc::new(tokens)))
    }

    /// The identity of `presented`, when it is one of the tokens. Every token is compared,
    /// each in constant time, so the answer's timing tells nothing about which bytes matched.
    pub fn identify(&self, presented: &[u8]) -> Option<Identity> {
        let mut found = None;
        for (token, identity) in self.0.iter() {
            if bool::from(token.as_ref().ct_eq(presented)) && found.is_none() {
                found = Some(identity);
            }
        }
        found.cloned()
    }
}

/// Tokens and the browser sessions signed in with one.
#[derive(Clone, Default)]
pub struct Access {
    tokens: Option<ViewerTokens>,
    sessions: Arc<Mutex<HashMap<String, (Instant, Identity)>>>,
    secure_cookie: bool,
}

/// The request carries no accepted token or live session.
struct Refused;

impl Access {
    /// Access checked against `tokens` (open when `None`); `secure_cookie` marks the cookie
    /// `Secure` (the viewer speaks TLS).
    pub fn new(tokens: Option<ViewerTokens>, secure_cookie: bool) -> Self {
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

    /// Who the request comes from: `Ok(None)` when access is open, `Err` when it carries no
    /// accepted token or live session.
    fn identify(&self, request: &Request) -> Result<Option<Identity>, Refused> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let headers = request.headers();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.as_bytes();
            if let Some((scheme, token)) = value.split_at_checked(6) {
                if scheme.eq_ignore_ascii_case(b"bearer") && token.starts_with(b" ") {
                    if let Some(identity) = tokens.identify(token.trim_ascii()) {
                        return Ok(Some(identity));
                    }
                }
            }
        }
        let session = session_cookie(request).ok_or(Refused)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(session) {
            Some((expires, identity)) if *expires > Instant::now() => Ok(Some(identity.clone())),
            Some(_) => {
                sessions.remove(session);
                Err(Refused)
            }
            None => Err(Refused),
        }
    }

    fn new_session(&self, identity: Identity) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, (expires, _)| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (e, _))| *e)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), (now + SESSION_TTL, identity));
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
/// off), with the token's [`Identity`] in their extensions. Others: API routes get 401 with
/// `WWW-Authenticate: Bearer`, pages a redirect to `/login`.
pub async fn require(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // The login form and the files it loads are open; they hold no data.
    let open = path == "/login" || path == "/favicon.ico" || path.starts_with("/static/");
    match state.access.identify(&request) {
        Ok(identity) => {
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            return next.run(request).await;
        }
        Err(Refused) if open => return next.run(request).await,
        Err(Refused) => {}
    }
    let path = request.uri().path();
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
    let Some(identity) = tokens.identify(token.as_bytes()) else {
        return login_page(
            &state,
            Some("That token is not accepted."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let session = state.access.new_session(identity);
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
    use super::{is_loopback_host, Role, ViewerTokens};

    #[test]
    fn token_lines_are_named_tokens_bare_tokens_or_refused() {
        let tokens = ViewerTokens::parse(
            "# people\nalice:admin:a-secret\n\nlegacy-one\nbob:read:b:with:colons\nx:legacy-two\n",
            "f",
        )
        .unwrap();
        let who = |t: &str| tokens.identify(t.as_bytes()).map(|i| (i.name, i.role));
        assert_eq!(who("a-secret"), Some(("alice".into(), Role::Admin)));
        assert_eq!(who("b:with:colons"), Some(("bob".into(), Role::Read)));
        // Bare tokens are counted, not numbered by line.
        assert_eq!(who("legacy-one"), Some(("token-1".into(), Role::Admin)));
        assert_eq!(who("x:legacy-two"), Some(("token-2".into(), Role::Admin)));
        for (text, line, says) in [
            ("carol:read-only:s3cret\n", 1, "not a role"),
            ("ok:admin:t1\ncarol::x\n", 2, "not a role"),
            ("carol:reader:s3cret\n", 1, "`reader`"),
            ("a:admin:same\nb:read:same\n", 2, "same token as line 1"),
            ("same\nb:read:same\n", 2, "same token as line 1"),
            ("a:admin:t1\na:read:t2\n", 2, "already line 1's"),
        ] {
            let e = ViewerTokens::parse(text, "f").unwrap_err().to_string();
            assert!(
                e.contains(&format!("line {line}")) && e.contains(says),
                "{text:?}: {e}"
            );
            assert!(!e.contains("s3cret") && !e.contains("same\n"), "{e}");
        }
    }

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
