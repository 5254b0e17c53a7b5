//! Keeps the exporter's own crates out of the OTLP layers.
//!
//! tonic, h2, hyper, tower, reqwest and the OpenTelemetry crates log through `tracing`. If
//! their events reached the OTLP layers, every export would produce records that need
//! exporting, and a failing export would feed itself. The filter decides once per call site
//! (`Interest::never`/`always`), so it costs nothing per event.

use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter};

use crate::export::DIAGNOSTICS_TARGET;

/// Crates (and one SDK target) whose events and spans never go to the OTLP layers. A target
/// matches a crate when it is the crate's name or starts with `name::`.
pub const EXCLUDED_TARGETS: &[&str] = &[
    "tonic",
    "h2",
    "hyper",
    "hyper_util",
    "tower",
    "reqwest",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_proto",
    "opentelemetry_appender_tracing",
    "tracing_opentelemetry",
    DIAGNOSTICS_TARGET,
];

/// True when `target` belongs to one of the [`EXCLUDED_TARGETS`].
pub fn is_excluded_target(target: &str) -> bool {
    EXCLUDED_TARGETS.iter().any(|excluded| {
        target
            .strip_prefix(excluded)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// A per-layer [`Filter`] that drops the [`EXCLUDED_TARGETS`] from the layer it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExcludeExporterCrates;

impl<S> Filter<S> for ExcludeExporterCrates {
    fn enabled(&self, metadata: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        !is_excluded_target(metadata.target())
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_excluded_target(metadata.target()) {
            Interest::never()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_crates_not_prefixes_of_other_names() {
        assert!(is_excluded_target("h2"));
        assert!(is_excluded_target("h2::codec::framed_read"));
        assert!(is_excluded_target("hyper_util::client::legacy"));
        assert!(is_excluded_target("tonic::transport::channel"));
        assert!(is_excluded_target("opentelemetry_sdk"));
        assert!(is_excluded_target(DIAGNOSTICS_TARGET));
        assert!(!is_excluded_target("h2o_service"));
        assert!(!is_excluded_target("tower_http::trace::on_response"));
        assert!(!is_excluded_target("checkout"));
        assert!(!is_excluded_target("distributed_logger::http"));
    }
}
