//! Alerts POSTed as JSON to an HTTP endpoint, one request per transition, retried with
//! exponential backoff.
//!
//! Each request carries `Content-Type: application/json` and `Idempotency-Key: <id>-<revision>`,
//! so a receiver can drop a repeat delivery. Connection errors, timeouts, 408, 429 and 5xx are
//! retried (a `Retry-After` header in seconds sets the wait); any other status is final: that
//! alert is rejected (dropped, logged and counted in `dlog_alerter_output_rejected`) and the
//! following alerts still go out, so one bad alert cannot block a required webhook.
//!
//! Redirects are not followed (a 3xx is a refusal), and logs and errors show the endpoint as
//! `scheme://host:port` only: its path or query often holds a token.

use std::time::Duration;

use async_trait::async_trait;
use dlog_core::stage::Backoff;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

pub mod config;

use std::sync::Arc;

use super::{AlertJson, AlertSink, Delivery, Output, SinkError};
use crate::alert::Transition;
use config::WebhookConfig;

/// The webhook output `config` describes, if enabled.
pub fn build(config: &WebhookConfig) -> Result<Option<Output>, SinkError> {
    if !config.enabled {
        return Ok(None);
    }
    Ok(Some(Output {
        sink: Arc::new(WebhookSink::new(config)?),
        filter: config.filter(),
        required: config.required,
        queue: config.queue,
    }))
}

/// Header carrying `<alert id>-<revision>`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// `scheme://host:port` of a URL: what logs and errors may show of a webhook endpoint, whose
/// path, query or userinfo often carry a secret token.
pub fn shown_url(url: &reqwest::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Posts alerts.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// [`shown_url`] of `url`.
    shown: String,
    max_attempts: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl WebhookSink {
    /// A sink for the configured endpoint.
    pub fn new(config: &WebhookConfig) -> Result<Self, SinkError> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| SinkError::new("webhook", format!("url is not valid: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| SinkError::new("webhook", format!("header `{k}`: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| SinkError::new("webhook", format!("header `{k}` value: {e}")))?;
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                SinkError::new("webhook", format!("ca_file {}: {e}", path.display()))
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SinkError::new("webhook", format!("ca_file {}: {e}", path.display()))
            })?;
            if roots.is_empty() {
                return Err(SinkError::new(
                    "webhook",
                    format!("ca_file {}: holds no PEM certificate", path.display()),
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .use_rustls_tls()
            .timeout(Duration::from_millis(config.timeout_ms))
            .default_headers(headers)
            .user_agent(concat!("dlog-alerter/", env!("CARGO_PKG_VERSION")))
            // A redirect would send the alert, and its headers, somewhere the configuration
            // never named: a 3xx is a refusal.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                SinkError::new(
                    "webhook",
                    format!("cannot build HTTP client: {}", dlog_core::error_chain(&e)),
                )
            })?;
        Ok(WebhookSink {
            client,
            shown: shown_url(&url),
            url,
            max_attempts: config.max_attempts.max(1),
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(
                config.backoff_max_ms.max(config.backoff_initial_ms),
            ),
        })
    }

    async fn post(&self, transition: &Transition) -> Delivery {
        match self.try_post(transition).await {
            Ok(()) => Delivery::Delivered,
            Err((e, true)) => Delivery::Retry(e.message),
            Err((e, false)) => Delivery::Rejected(e.message),
        }
    }

    /// Posts with retries; the error says whether retrying later could help.
    async fn try_post(&self, transition: &Transition) -> Result<(), (SinkError, bool)> {
        let body = serde_json::to_vec(&AlertJson::new(transition)).map_err(|e| {
            (
                SinkError::new("webhook", format!("cannot encode alert: {e}")),
                false,
            )
        })?;
        let key = format!("{}-{}", transition.alert.id, transition.alert.revision);
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        let mut last_error = String::new();
        for attempt in 1..=self.max_attempts {
            let result = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(IDEMPOTENCY_KEY_HEADER, &key)
                .body(body.clone())
                .send()
                .await;
            let mut retry_after = None;
            match result {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    last_error = format!("{} answered {status}", self.shown);
                    let retryable = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT;
                    if !retryable {
                        return Err((SinkError::new("webhook", last_error), false));
                    }
                }
                // The reason of a TLS failure (unknown issuer, name mismatch) is in the sources.
                Err(e) => {
                    last_error = format!(
                        "POST {}: {}",
                        self.shown,
                        dlog_core::error_chain(&e.without_url())
                    )
                }
            }
            if attempt < self.max_attempts {
                let wait = backoff.next_delay();
                let pause = retry_after.unwrap_or(wait).min(self.backoff_max);
                tracing::debug!(attempt, error = %last_error, ?pause, "webhook delivery failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
        Err((
            SinkError::new(
                "webhook",
                format!("gave up after {} attempts: {last_error}", self.max_attempts),
            ),
            true,
        ))
    }
}

#[async_trait]
impl AlertSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, transitions: &[Transition]) -> Result<(), SinkError> {
        let mut failed = Vec::new();
        for d in self.send_each(transitions).await {
            match d {
                Delivery::Delivered => {}
                Delivery::Rejected(e) | Delivery::Retry(e) => failed.push(e),
            }
        }
        match failed.first() {
            None => Ok(()),
            Some(first) => Err(SinkError::new(
                "webhook",
                format!(
                    "{} of {} alerts not delivered: {first}",
                    failed.len(),
                    transitions.len()
                ),
            )),
        }
    }

    /// One request per transition, in order. A refused one (a 4xx other than 408/429) is
    /// rejected and the rest still go out; once one cannot get through (the endpoint is
    /// down), the rest are left to retry so that the receiver still sees them in order.
    async fn send_each(&self, transitions: &[Transition]) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(transitions.len());
        let mut down: Option<String> = None;
        for t in transitions {
            if let Some(e) = &down {
                out.push(Delivery::Retry(e.clone()));
                continue;
            }
            let d = self.post(t).await;
            if let Delivery::Retry(e) = &d {
                down = Some(e.clone());
            }
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: errors and logs printed the whole webhook URL, token in path and query
    /// included.
    #[test]
    fn regression_webhook_url_is_shown_as_scheme_host_and_port() {
        let url = reqwest::Url::parse("http://user:pw@127.0.0.1:9/hooks/T0K3N?key=s3cret").unwrap();
        assert_eq!(shown_url(&url), "http://127.0.0.1:9");
        let url = reqwest::Url::parse("http://hooks.local/x/T0K3N").unwrap();
        assert_eq!(shown_url(&url), "http://hooks.local:80");
    }

    #[tokio::test]
    async fn regression_webhook_errors_do_not_carry_the_path_or_query() {
        // Nothing listens on port 9 of loopback: the connection is refused.
        let config = WebhookConfig {
            enabled: true,
            url: "http://127.0.0.1:9/hooks/T0K3N?key=s3cret".into(),
            max_attempts: 1,
            ..WebhookConfig::default()
        };
        let sink = WebhookSink::new(&config).unwrap();
        let alert = crate::alert::Alert::firing(
            "error_log",
            "svc|E1".into(),
            crate::alert::Severity::Critical,
            "svc",
            "boom".into(),
            1,
        );
        let t = Transition {
            kind: crate::alert::TransitionKind::Fired,
            alert,
        };
        let err = sink.send(&[t]).await.unwrap_err().to_string();
        assert!(err.contains("http://127.0.0.1:9"), "{err}");
        assert!(!err.contains("T0K3N") && !err.contains("s3cret"), "{err}");
    }

    /// Over https, a certificate the configured CA did not sign is a failed delivery whose
    /// error names the endpoint (not its secret path) and the TLS reason.
    #[tokio::test]
    async fn an_untrusted_https_certificate_fails_naming_the_endpoint_and_the_reason() {
        use dlog_testkit::tls::{Pki, TlsProxy};

        let dir = tempfile::tempdir().unwrap();
        let trusted = Pki::issue("trusted").unwrap().write(dir.path()).unwrap();
        let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = format!("http://{}", endpoint.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/alerts/T0K3N",
            axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
        );
        let server = tokio::spawn(async move { axum::serve(endpoint, app).await });
        let impostor = TlsProxy::start(&plain, &Pki::issue("impostor").unwrap()).unwrap();
        let config = WebhookConfig {
            enabled: true,
            url: format!("{}/alerts/T0K3N", impostor.url),
            ca_file: Some(trusted.ca),
            max_attempts: 1,
            ..WebhookConfig::default()
        };
        let sink = WebhookSink::new(&config).unwrap();
        let alert = crate::alert::Alert::firing(
            "error_log",
            "svc|E1".into(),
            crate::alert::Severity::Critical,
            "svc",
            "boom".into(),
            1,
        );
        let t = Transition {
            kind: crate::alert::TransitionKind::Fired,
            alert,
        };
        let results = sink.send_each(&[t]).await;
        let [Delivery::Retry(error)] = &results[..] else {
            panic!("{results:?}");
        };
        assert!(error.contains(&impostor.url), "names the endpoint: {error}");
        assert!(!error.contains("T0K3N"), "{error}");
        assert!(
            error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
            "names the TLS reason: {error}"
        );
        assert!(impostor.saw_failed_handshake(Duration::from_secs(5)));
        server.abort();
    }

    /// Regression: the client followed redirects, so a 307 from the endpoint sent the alert,
    /// and its configured headers, to a host the configuration never named.
    #[tokio::test]
    async fn regression_webhook_does_not_follow_redirects() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;

        let elsewhere_hits = Arc::new(AtomicU32::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_url = format!("http://{}/stolen", elsewhere.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/stolen",
            axum::routing::post(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
        let stolen = tokio::spawn(async move { axum::serve(elsewhere, app).await });
        let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", endpoint.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move || async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, elsewhere_url)],
                )
            }),
        );
        let server = tokio::spawn(async move { axum::serve(endpoint, app).await });

        let mut config = WebhookConfig {
            enabled: true,
            url,
            max_attempts: 1,
            ..WebhookConfig::default()
        };
        config
            .headers
            .insert("authorization".into(), "Bearer secret".into());
        let sink = WebhookSink::new(&config).unwrap();
        let alert = crate::alert::Alert::firing(
            "error_log",
            "svc|E1".into(),
            crate::alert::Severity::Critical,
            "svc",
            "boom".into(),
            1,
        );
        let t = Transition {
            kind: crate::alert::TransitionKind::Fired,
            alert,
        };
        let results = sink.send_each(&[t]).await;
        assert!(
            matches!(&results[..], [Delivery::Rejected(e)] if e.contains("307")),
            "{results:?}"
        );
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
        server.abort();
        stolen.abort();
    }
}
