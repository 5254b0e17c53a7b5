//! The web UI's files, compiled into the binary: plain HTML, JavaScript, CSS and SVG, with no
//! build step and nothing fetched from elsewhere.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The one page every UI route serves; `app.js` renders the route.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The login page (a plain form, no script).
pub const LOGIN_HTML: &str = include_str!("../assets/login.html");
/// The UI's script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The UI's style sheet.
pub const APP_CSS: &str = include_str!("../assets/app.css");
/// The icon.
pub const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A UI page (`/search`, `/trace/{id}`, `/dependencies`, `/logs`, `/alerts`).
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `/static/app.js`
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `/static/app.css`
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `/favicon.ico` and `/static/favicon.svg`
pub async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}
