//! Alerts POSTed as JSON to an HTTP endpoint, one request per transition, retried with
//! exponential backoff.
//!
//! Each request carries `Content-Type: application/json` and `Idempotency-Key: <id>-<revision>`,
//! so a receiver can drop a repeat delivery. Connection errors, timeouts, 408, 429 and 5xx are
//! retried (a `Retry-After` header in seconds sets the wait); any other status is final: that
//! alert is rejected (dropped, logged and counted in `dlog_alerter_output_rejected`) and the
//! following alerts still go out, so one bad alert cannot block a required webhook.

use std::time::Duration;

use async_trait::async_trait;
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

/// Posts alerts.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    max_attempts: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl WebhookSink {
    /// A sink for the configured endpoint.
    pub fn new(config: &WebhookConfig) -> Result<Self, SinkError> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| SinkError::new("webhook", format!("url `{}`: {e}", config.url)))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| SinkError::new("webhook", format!("header `{k}`: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| SinkError::new("webhook", format!("header `{k}` value: {e}")))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .default_headers(headers)
            .user_agent(concat!("dlog-alerter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::new("webhook", format!("cannot build HTTP client: {e}")))?;
        Ok(WebhookSink {
            client,
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
        let mut wait = self.backoff_initial;
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
                    last_error = format!("{} answered {status}", self.url);
                    let retryable = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT;
                    if !retryable {
                        return Err((SinkError::new("webhook", last_error), false));
                    }
                }
                Err(e) => last_error = format!("POST {}: {e}", self.url),
            }
            if attempt < self.max_attempts {
                let pause = retry_after.unwrap_or(wait).min(self.backoff_max);
                tracing::debug!(attempt, error = %last_error, ?pause, "webhook delivery failed; retrying");
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(self.backoff_max);
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
