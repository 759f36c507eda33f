//! Optional OTLP trace export: the server's spans, sent over gRPC to a
//! collector when `[tracing] otlp_endpoint` is set.
//!
//! This module owns the exporter (a tonic channel the server builds itself,
//! TLS included), the tracer provider and its batch span processor, the
//! `tracing` layer that feeds them ([`TraceExport::layer`], with its own
//! filter: `arqonbus*` spans at `debug` and above, never events), the hook
//! that puts a sampled message's span into the trace its W3C `traceparent`
//! header names ([`link_parent`]), and the bounded flush at shutdown.
//!
//! Threads: the SDK's batch processor runs on its own thread and drives each
//! export to completion there; the gRPC channel's tasks run on the tokio
//! runtime that is current when [`TraceExport::start`] is called (the
//! server's signal runtime on the main thread), which must keep being driven
//! while spans are exported.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingSection;

/// Why trace export could not start or flush.
#[derive(Debug, thiserror::Error)]
pub enum TraceExportError {
    /// The endpoint is not a usable gRPC URI, or TLS cannot be set up for it.
    #[error("tracing.otlp_endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The collector's CA file could not be read.
    #[error("tracing.ca_file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Buffered spans could not be flushed at shutdown.
    #[error("flushing spans: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// A running span exporter.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    timeout: Duration,
}

impl TraceExport {
    /// Starts exporting as `section` says, or returns `None` when it names
    /// no endpoint. Call it inside a tokio runtime context
    /// (`Runtime::enter`): the channel's tasks are spawned there. Nothing
    /// connects yet; the first export does.
    pub fn start(section: &TracingSection) -> Result<Option<Self>, TraceExportError> {
        let Some(url) = &section.otlp_endpoint else {
            return Ok(None);
        };
        let timeout = section.export_timeout();
        let endpoint_error = |source| TraceExportError::Endpoint {
            endpoint: url.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(endpoint_error)?
            .connect_timeout(timeout)
            .timeout(timeout);
        if url.starts_with("https://") {
            let tls = match &section.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| TraceExportError::CaFile {
                        path: path.clone(),
                        source,
                    })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(endpoint_error)?;
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(endpoint.connect_lazy())
            .with_timeout(timeout)
            .build()?;
        let resource = Resource::builder()
            .with_service_name(section.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        // The batch processor: a bounded queue (spans beyond it are dropped,
        // never waited for) drained by its own thread.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("arqonbus");
        Ok(Some(Self {
            provider,
            tracer,
            timeout,
        }))
    }

    /// The layer that turns the server's spans into exported ones, filtered
    /// by [`exported`] whatever the log level.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            // Parents come from the `tracing` span tree (and `link_parent`),
            // so entering a span (every poll of a connection's task) does no
            // OpenTelemetry work.
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(exported))
    }

    /// Flushes buffered spans and stops, within `export_timeout_ms`. Blocks:
    /// run it where the runtime given to [`start`](Self::start) keeps being
    /// driven (e.g. `spawn_blocking` on it).
    pub fn shutdown(self) -> Result<(), TraceExportError> {
        self.provider.shutdown_with_timeout(self.timeout)?;
        Ok(())
    }
}

/// Whether the export layer takes this callsite: spans (never events, so no
/// log line's fields are exported) of the `arqonbus` crates, at `debug` or
/// above (`connection`, `auth`, `publish`, `deliver`, `control_rpc`).
pub fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let ours =
        target == "arqonbus" || target.starts_with("arqonbus::") || target.starts_with("arqonbus_");
    meta.is_span() && ours && *meta.level() <= tracing::Level::DEBUG
}

/// The data plane's `trace_parent` hook: makes `span` (a sampled message's
/// `publish`) a child of the remote span its `traceparent` header names.
/// An invalid header changes nothing. Headers flagged not-sampled make the
/// span unsampled too (the SDK's default parent-based sampler).
pub fn link_parent(span: &tracing::Span, traceparent: &str) {
    let cx =
        TraceContextPropagator::new().extract_with_context(&Context::new(), &Header(traceparent));
    if cx.span().span_context().is_valid() {
        // Fails only if the span already started or no export layer runs;
        // either way the span keeps its local parent.
        let _ = span.set_parent(cx);
    }
}

/// A single `traceparent` header, as the propagator reads headers.
struct Header<'a>(&'a str);

impl Extractor for Header<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case("traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Records the names of the spans and events a filtered layer sees.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.lock().unwrap().push(attrs.metadata().name().into());
        }

        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(format!("event {}", event.metadata().target()));
        }
    }

    #[test]
    fn only_our_spans_at_debug_and_above_are_exported() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(
            seen.clone()
                .with_filter(tracing_subscriber::filter::filter_fn(exported)),
        );
        tracing::subscriber::with_default(subscriber, || {
            let _a = tracing::debug_span!(target: "arqonbus_dataplane::route", "publish");
            let _b = tracing::info_span!(target: "arqonbus_controlplane::service", "control_rpc");
            let _c = tracing::trace_span!(target: "arqonbus_dataplane::conn", "too_verbose");
            let _d = tracing::info_span!(target: "h2::proto", "not_ours");
            let _e = tracing::info_span!(target: "arqonbusx", "lookalike");
            tracing::info!(target: "arqonbus_dataplane::conn", secret = "x", "an event");
        });
        assert_eq!(*seen.0.lock().unwrap(), ["publish", "control_rpc"]);
    }

    /// A provider with no processor: spans get real ids, nothing is sent.
    fn with_export_layer(f: impl FnOnce()) {
        let provider = SdkTracerProvider::builder().build();
        let export = TraceExport {
            tracer: provider.tracer("test"),
            provider,
            timeout: Duration::from_secs(1),
        };
        let subscriber = tracing_subscriber::registry().with(export.layer());
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn a_valid_traceparent_becomes_the_parent() {
        with_export_layer(|| {
            let span = tracing::debug_span!(target: "arqonbus_dataplane::route", "publish");
            link_parent(
                &span,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
            let _in = span.enter();
            let child = tracing::debug_span!(target: "arqonbus_dataplane::route", "deliver");
            for s in [&span, &child] {
                let cx = s.context();
                assert_eq!(
                    cx.span().span_context().trace_id().to_string(),
                    "4bf92f3577b34da6a3ce929d0e0e4736"
                );
            }
        });
    }

    #[test]
    fn an_invalid_traceparent_changes_nothing() {
        with_export_layer(|| {
            for bad in [
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736",
            ] {
                let span = tracing::debug_span!(target: "arqonbus_dataplane::route", "publish");
                link_parent(&span, bad);
                let id = span.context().span().span_context().trace_id();
                assert_ne!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
                assert_ne!(id, opentelemetry::trace::TraceId::INVALID, "{bad}");
            }
        });
    }
}
