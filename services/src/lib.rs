//! Demo microservices that behave like a small shop's backend, and a test client that drives
//! load through them.
//!
//! The default topology is `service-a → service-b` and `service-a → service-c`:
//! * **service-a** (5000), the entry point, calls B and C for each request (a
//!   `log_service_call` record for each) and warns with `response_time_ms` /
//!   `threshold_limit_ms` when the whole request took longer than 1000 ms;
//! * **service-b** (5001), a simulated database: 100–400 ms, 30% of requests take an extra
//!   500–1000 ms, 20% fail with `DB_CONN_ERROR`, `DB_TIMEOUT` or `DB_CONSTRAINT` (500); it
//!   warns above 800 ms;
//! * **service-c** (5002) has a load level that walks randomly between 0 and 100 (steps of
//!   mean zero plus a pull back toward a baseline, so it wanders between light and overloaded);
//!   its latency grows with the load, and above 80, 20% of requests fail with
//!   `OVERLOAD_ERROR` (503) and every request warns "high load".
//!
//! With `--topology large`, service-a also calls `auth`, `inventory` and `payment`;
//! `inventory` and `auth` call `cache`, and `payment` calls `notification`, a call it does not
//! declare, while `notification` declares `cache` and never calls it: something for the
//! service map, the dependency-drift rule and root cause to show.
//!
//! Every service is an axum server instrumented with the dlog SDK only through its public API:
//! server spans from [`trace_server`], client spans and `traceparent` from
//! [`RequestBuilderExt::send_traced`], `#[instrument]` handlers, `tracing::info!` events,
//! `DistributedLogger` warnings, errors and `log_service_call` records, and registration +
//! heartbeats.
//!
//! Every rate, latency and threshold ([`Chaos`]) is a flag and an environment variable, and
//! can be read and changed at run time: `GET /chaos`, and `POST /chaos` with a JSON object of
//! the fields to change (`{"error_rate": 0.5}`); anything else is left as it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use distributed_logger::http::{trace_server, RequestBuilderExt};
use distributed_logger::{DistributedLogger, Level};
use serde::{Deserialize, Serialize};

pub mod cli;
pub mod client;

/// A demo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// service-a, the entry point.
    #[value(name = "service-a")]
    A,
    /// service-b, a simulated database.
    #[value(name = "service-b")]
    B,
    /// service-c, with a wandering load level.
    #[value(name = "service-c")]
    C,
    /// inventory (large topology), calls cache.
    Inventory,
    /// payment (large topology), calls notification without declaring it.
    Payment,
    /// notification (large topology), declares cache and never calls it.
    Notification,
    /// auth (large topology), calls cache.
    Auth,
    /// cache (large topology), fast, calls nothing.
    Cache,
}

/// Which services service-a calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Topology {
    /// A calls B and C.
    #[default]
    Small,
    /// A also calls auth, inventory and payment, which call cache and notification.
    Large,
}

impl Role {
    /// Every role, in port order.
    pub const ALL: [Role; 8] = [
        Role::A,
        Role::B,
        Role::C,
        Role::Inventory,
        Role::Payment,
        Role::Notification,
        Role::Auth,
        Role::Cache,
    ];

    /// The service name it reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::A => "service-a",
            Role::B => "service-b",
            Role::C => "service-c",
            Role::Inventory => "inventory",
            Role::Payment => "payment",
            Role::Notification => "notification",
            Role::Auth => "auth",
            Role::Cache => "cache",
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Its default port: 5000 for service-a, then one each in [`Role::ALL`]'s order.
    pub fn port(self) -> u16 {
        let index = Role::ALL.iter().position(|r| *r == self).unwrap_or(0);
        distributed_logger::names::DEMO_SERVICE_PORTS[0] + index as u16
    }

    /// The services it calls for each request, in order.
    pub fn calls(self, topology: Topology) -> Vec<Role> {
        match (self, topology) {
            (Role::A, Topology::Small) => vec![Role::B, Role::C],
            (Role::A, Topology::Large) => {
                vec![Role::Auth, Role::B, Role::C, Role::Inventory, Role::Payment]
            }
            (Role::Inventory | Role::Auth, _) => vec![Role::Cache],
            (Role::Payment, _) => vec![Role::Notification],
            _ => vec![],
        }
    }

    /// The dependencies it declares at registration. Differs from [`Role::calls`] on
    /// purpose in two places: payment does not declare notification, and notification
    /// declares cache.
    pub fn declares(self, topology: Topology) -> Vec<Role> {
        match self {
            Role::Payment => vec![],
            Role::Notification => vec![Role::Cache],
            other => other.calls(topology),
        }
    }

    /// The error codes of its injected failures.
    pub fn error_codes(self) -> &'static [&'static str] {
        match self {
            Role::B => &["DB_CONN_ERROR", "DB_TIMEOUT", "DB_CONSTRAINT"],
            Role::Inventory => &["OUT_OF_STOCK"],
            Role::Payment => &["PAYMENT_DECLINED", "GATEWAY_TIMEOUT"],
            Role::Notification => &["SMTP_TIMEOUT"],
            Role::Auth => &["TOKEN_EXPIRED"],
            _ => &["INTERNAL_ERROR"],
        }
    }
}

/// Every rate, latency and threshold of one service. Each is a flag and an env variable
/// (see [`cli::ServiceArgs`]) and can be changed at run time through `POST /chaos`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// Factor applied to every simulated delay (0.01 makes a 400 ms query take 4 ms).
    pub latency_scale: f64,
    /// Shortest simulated work per request, ms.
    pub latency_min_ms: u64,
    /// Longest simulated work per request, ms.
    pub latency_max_ms: u64,
    /// Share of requests (0..=1) that take an extra `slow_min_ms`..`slow_max_ms`.
    pub slow_rate: f64,
    /// Shortest extra delay of a slow request, ms.
    pub slow_min_ms: u64,
    /// Longest extra delay of a slow request, ms.
    pub slow_max_ms: u64,
    /// Share of requests (0..=1) that fail with 500 and one of the service's error codes.
    pub error_rate: f64,
    /// Response time above which the service logs a WARN with `response_time_ms` /
    /// `threshold_limit_ms`, ms.
    pub threshold_ms: u64,
    /// When true, every request gets 503 (heartbeats continue; stop the process to make it
    /// go silent).
    pub down: bool,
    /// The current load level, 0..=100. It moves every `load_tick_ms`; setting it starts
    /// the walk from there.
    pub load: f64,
    /// Where the load is pulled back toward.
    pub load_baseline: f64,
    /// Largest load step per tick, either way (steps are uniform, mean zero).
    pub load_step: f64,
    /// Share (0..=1) of the distance to the baseline the load moves back per tick.
    pub load_pull: f64,
    /// How often the load moves, ms (not scaled).
    pub load_tick_ms: u64,
    /// Extra latency per point of load, ms (at load 100 and 5 ms: +500 ms).
    pub load_latency_ms: f64,
    /// Load above which the service is overloaded.
    pub overload_threshold: f64,
    /// Share (0..=1) of requests that fail with `OVERLOAD_ERROR` (503) while overloaded.
    pub overload_error_rate: f64,
}

impl Chaos {
    /// The behaviour a role has unless told otherwise.
    pub fn defaults(role: Role) -> Chaos {
        let quiet = Chaos {
            latency_scale: 1.0,
            latency_min_ms: 1,
            latency_max_ms: 5,
            slow_rate: 0.0,
            slow_min_ms: 500,
            slow_max_ms: 1000,
            error_rate: 0.0,
            threshold_ms: 500,
            down: false,
            load: 0.0,
            load_baseline: 0.0,
            load_step: 0.0,
            load_pull: 0.0,
            load_tick_ms: 1000,
            load_latency_ms: 0.0,
            overload_threshold: 80.0,
            overload_error_rate: 0.2,
        };
        match role {
            Role::A => Chaos {
                threshold_ms: 1000,
                ..quiet
            },
            Role::B => Chaos {
                latency_min_ms: 100,
                latency_max_ms: 400,
                slow_rate: 0.3,
                slow_min_ms: 500,
                slow_max_ms: 1000,
                error_rate: 0.2,
                threshold_ms: 800,
                ..quiet
            },
            Role::C => Chaos {
                latency_min_ms: 10,
                latency_max_ms: 30,
                load: 40.0,
                load_baseline: 40.0,
                load_step: 12.0,
                load_pull: 0.05,
                load_latency_ms: 4.0,
                ..quiet
            },
            Role::Inventory => Chaos {
                latency_min_ms: 20,
                latency_max_ms: 80,
                error_rate: 0.02,
                ..quiet
            },
            Role::Payment => Chaos {
                latency_min_ms: 50,
                latency_max_ms: 200,
                error_rate: 0.05,
                ..quiet
            },
            Role::Notification => Chaos {
                latency_min_ms: 10,
                latency_max_ms: 60,
                error_rate: 0.05,
                ..quiet
            },
            Role::Auth => Chaos {
                latency_min_ms: 5,
                latency_max_ms: 20,
                error_rate: 0.01,
                ..quiet
            },
            Role::Cache => quiet,
        }
    }

    /// Checks every field, naming the first that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{name}` must be between 0 and 1, not {v}"))
            }
        };
        share("slow_rate", self.slow_rate)?;
        share("error_rate", self.error_rate)?;
        share("load_pull", self.load_pull)?;
        share("overload_error_rate", self.overload_error_rate)?;
        let level = |name: &str, v: f64| {
            if (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{name}` must be between 0 and 100, not {v}"))
            }
        };
        level("load", self.load)?;
        level("load_baseline", self.load_baseline)?;
        level("load_step", self.load_step)?;
        level("overload_threshold", self.overload_threshold)?;
        if !(0.0..=100.0).contains(&self.latency_scale) {
            return Err(format!(
                "`latency_scale` must be between 0 and 100, not {}",
                self.latency_scale
            ));
        }
        if !(0.0..=1000.0).contains(&self.load_latency_ms) {
            return Err(format!(
                "`load_latency_ms` must be between 0 and 1000, not {}",
                self.load_latency_ms
            ));
        }
        if self.latency_min_ms > self.latency_max_ms {
            return Err("`latency_min_ms` must not exceed `latency_max_ms`".into());
        }
        if self.slow_min_ms > self.slow_max_ms {
            return Err("`slow_min_ms` must not exceed `slow_max_ms`".into());
        }
        // A delay is bounded so that no setting can hold a request (and its memory) forever.
        for (name, v) in [
            ("latency_max_ms", self.latency_max_ms),
            ("slow_max_ms", self.slow_max_ms),
        ] {
            if v > 60_000 {
                return Err(format!("`{name}` must be at most 60000, not {v}"));
            }
        }
        if self.load_tick_ms == 0 || self.load_tick_ms > 3_600_000 {
            return Err("`load_tick_ms` must be between 1 and 3600000".into());
        }
        Ok(())
    }

    /// `self` with the fields present in `changes` (a JSON object) replaced. Unknown fields
    /// and values of the wrong type or out of range are refused, naming them.
    pub fn merged(&self, changes: &serde_json::Value) -> Result<Chaos, String> {
        let serde_json::Value::Object(changes) = changes else {
            return Err("expected a JSON object of the fields to change".into());
        };
        let mut current = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err("cannot read the current settings".into()),
        };
        for (key, value) in changes {
            if !current.contains_key(key) {
                let known: Vec<&String> = current.keys().collect();
                return Err(format!("unknown field `{key}`; known: {known:?}"));
            }
            current.insert(key.clone(), value.clone());
        }
        let merged: Chaos = serde_json::from_value(serde_json::Value::Object(current))
            .map_err(|e| e.to_string())?;
        merged.validate()?;
        Ok(merged)
    }

    fn scaled(&self, ms: f64) -> Duration {
        Duration::from_secs_f64((ms * self.latency_scale).max(0.0) / 1000.0)
    }

    /// One step of the load's walk: a uniform step of mean zero, plus the pull toward the
    /// baseline, clamped to 0..=100.
    pub fn step_load(&mut self, uniform: f64) {
        let step = (uniform * 2.0 - 1.0) * self.load_step;
        let pull = (self.load_baseline - self.load) * self.load_pull;
        self.load = (self.load + step + pull).clamp(0.0, 100.0);
    }
}

/// One demo service: its role, what it calls, and its behaviour.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Which service.
    pub role: Role,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Downstream services: (service name, base URL), called in order for each request.
    pub downstream: Vec<(String, String)>,
    /// Initial behaviour.
    pub chaos: Chaos,
}

struct AppState {
    spec: ServiceSpec,
    chaos: RwLock<Chaos>,
    client: reqwest::Client,
    logger: DistributedLogger,
}

impl AppState {
    fn chaos(&self) -> Chaos {
        *self.chaos.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds the service's router: `GET /work` (the traced request path), `GET /health`,
/// `GET|POST /chaos`. Also starts the load's walk on the current Tokio runtime; it ends when
/// the router is dropped.
pub fn router(spec: ServiceSpec, logger: DistributedLogger) -> Router {
    let state = Arc::new(AppState {
        chaos: RwLock::new(spec.chaos),
        spec,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
        logger,
    });
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        loop {
            let tick = match weak.upgrade() {
                Some(state) => {
                    let mut chaos = state.chaos.write().unwrap_or_else(|e| e.into_inner());
                    chaos.step_load(rand::random::<f64>());
                    chaos.load_tick_ms
                }
                None => return,
            };
            tokio::time::sleep(Duration::from_millis(tick)).await;
        }
    });
    Router::new()
        .route("/work", get(work))
        .route("/chaos", get(get_chaos).post(set_chaos))
        .layer(axum::middleware::from_fn(trace_server))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `router` on `spec.listen` until `shutdown` completes.
pub async fn serve(
    spec: ServiceSpec,
    logger: DistributedLogger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(spec.listen).await?;
    tracing::info!(address = %listener.local_addr()?, service = spec.role.name(), "listening");
    axum::serve(listener, router(spec, logger))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_chaos(State(state): State<Arc<AppState>>) -> Json<Chaos> {
    Json(state.chaos())
}

async fn set_chaos(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let changes: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not JSON: {e}\n")).into_response();
        }
    };
    let mut chaos = state.chaos.write().unwrap_or_else(|e| e.into_inner());
    match chaos.merged(&changes) {
        Ok(merged) => {
            *chaos = merged;
            drop(chaos);
            tracing::info!(?merged, "behaviour changed");
            Json(merged).into_response()
        }
        Err(reason) => (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
    }
}

#[derive(Debug, Serialize)]
struct WorkReply {
    service: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    downstream: BTreeMap<String, bool>,
}

fn pick<'a>(items: &[&'a str]) -> &'a str {
    items[rand::random_range(0..items.len())]
}

fn between(min: u64, max: u64) -> f64 {
    if max <= min {
        min as f64
    } else {
        rand::random_range(min as f64..=max as f64)
    }
}

#[tracing::instrument(skip(state), fields(service = state.spec.role.name()))]
async fn work(State(state): State<Arc<AppState>>) -> (StatusCode, Json<WorkReply>) {
    let started = Instant::now();
    let chaos = state.chaos();
    let role = state.spec.role;
    let mut reply = WorkReply {
        service: role.name(),
        ok: false,
        error: None,
        downstream: BTreeMap::new(),
    };
    if chaos.down {
        state.logger.error(
            "service is down for maintenance",
            "SERVICE_DOWN",
            "failure injection: down",
            None,
        );
        reply.error = Some("SERVICE_DOWN".into());
        return (StatusCode::SERVICE_UNAVAILABLE, Json(reply));
    }
    tracing::info!(load = chaos.load, "handling request");

    // The service's own work: its latency range, a slow tail, and the load's share.
    let mut work_ms = between(chaos.latency_min_ms, chaos.latency_max_ms);
    if rand::random::<f64>() < chaos.slow_rate {
        work_ms += between(chaos.slow_min_ms, chaos.slow_max_ms);
    }
    work_ms += chaos.load * chaos.load_latency_ms;
    tokio::time::sleep(chaos.scaled(work_ms)).await;

    let overloaded = chaos.load > chaos.overload_threshold;
    if overloaded {
        state
            .logger
            .event(Level::WARN)
            .message("high load")
            .field("load", chaos.load)
            .field("overload_threshold", chaos.overload_threshold)
            .emit();
        if rand::random::<f64>() < chaos.overload_error_rate {
            state.logger.error_with(
                "request rejected: overloaded",
                "OVERLOAD_ERROR",
                format!(
                    "load {:.0} above {:.0}",
                    chaos.load, chaos.overload_threshold
                ),
                None,
                [("load", chaos.load)],
            );
            reply.error = Some("OVERLOAD_ERROR".into());
            return (StatusCode::SERVICE_UNAVAILABLE, Json(reply));
        }
    }

    let mut failed_dependency = None;
    for (target, base) in &state.spec.downstream {
        let ok = call(&state, target, base).await;
        reply.downstream.insert(target.clone(), ok);
        if !ok && failed_dependency.is_none() {
            failed_dependency = Some(target.clone());
        }
    }
    if let Some(target) = failed_dependency {
        state.logger.error(
            format!("request failed: {target} did not answer OK"),
            "DEPENDENCY_FAILED",
            format!("call to {target} failed"),
            Some(target.as_str()),
        );
        reply.error = Some("DEPENDENCY_FAILED".into());
        return (StatusCode::BAD_GATEWAY, Json(reply));
    }

    if rand::random::<f64>() < chaos.error_rate {
        let code = pick(role.error_codes());
        state.logger.error(
            "request failed",
            code,
            format!("failure injection: {code}"),
            None,
        );
        reply.error = Some(code.to_string());
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(reply));
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if elapsed_ms > chaos.threshold_ms {
        state
            .logger
            .warn("slow response", elapsed_ms, chaos.threshold_ms);
    }
    tracing::info!(elapsed_ms, "request done");
    reply.ok = true;
    (StatusCode::OK, Json(reply))
}

#[tracing::instrument(skip(state, base))]
async fn call(state: &AppState, target: &str, base: &str) -> bool {
    let started = Instant::now();
    let result = state
        .client
        .get(format!("{base}/work"))
        .send_traced(target)
        .await;
    let ok = matches!(&result, Ok(r) if r.status().is_success());
    state.logger.log_service_call(target, ok, started.elapsed());
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_walk_wanders_across_the_range_and_is_pulled_back_toward_the_baseline() {
        let mut c = Chaos::defaults(Role::C);
        let mut seen_low = false;
        let mut seen_high = false;
        let mut sum = 0.0;
        let steps = 200_000;
        for _ in 0..steps {
            c.step_load(rand::random::<f64>());
            assert!((0.0..=100.0).contains(&c.load));
            seen_low |= c.load < 20.0;
            seen_high |= c.load > c.overload_threshold;
            sum += c.load;
        }
        assert!(
            seen_low && seen_high,
            "low {seen_low}, overloaded {seen_high}"
        );
        let mean = sum / steps as f64;
        assert!(
            (mean - c.load_baseline).abs() < 10.0,
            "mean {mean} should stay near the baseline {}",
            c.load_baseline
        );
        // Without steps, the pull alone brings it to the baseline.
        c.load = 100.0;
        c.load_step = 0.0;
        for _ in 0..500 {
            c.step_load(0.5);
        }
        assert!((c.load - c.load_baseline).abs() < 1.0, "{}", c.load);
    }

    #[test]
    fn chaos_changes_merge_and_bad_ones_name_the_field() {
        let c = Chaos::defaults(Role::B);
        let m = c
            .merged(&serde_json::json!({"error_rate": 0.5, "down": true}))
            .unwrap();
        assert_eq!(m.error_rate, 0.5);
        assert!(m.down);
        assert_eq!(m.latency_max_ms, c.latency_max_ms);
        let e = c
            .merged(&serde_json::json!({"eror_rate": 0.5}))
            .unwrap_err();
        assert!(e.contains("eror_rate"), "{e}");
        let e = c
            .merged(&serde_json::json!({"error_rate": 2.0}))
            .unwrap_err();
        assert!(e.contains("error_rate"), "{e}");
        let e = c
            .merged(&serde_json::json!({"latency_min_ms": 900}))
            .unwrap_err();
        assert!(e.contains("latency_min_ms"), "{e}");
        assert!(c.merged(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn the_large_topology_has_one_undeclared_call_and_one_unused_declaration() {
        let mut undeclared = Vec::new();
        let mut unused = Vec::new();
        for role in Role::ALL {
            let calls = role.calls(Topology::Large);
            let declares = role.declares(Topology::Large);
            undeclared.extend(
                calls
                    .iter()
                    .filter(|c| !declares.contains(c))
                    .map(|c| (role, *c)),
            );
            unused.extend(
                declares
                    .iter()
                    .filter(|d| !calls.contains(d))
                    .map(|d| (role, *d)),
            );
        }
        assert_eq!(undeclared, [(Role::Payment, Role::Notification)]);
        assert_eq!(unused, [(Role::Notification, Role::Cache)]);
        assert_eq!(Role::A.calls(Topology::Small), [Role::B, Role::C]);
        let ports: Vec<u16> = Role::ALL.iter().map(|r| r.port()).collect();
        assert_eq!(ports, (5000..5008).collect::<Vec<u16>>());
    }
}
