//! Prometheus metrics of a node, served at `GET /metrics`.
//!
//! One [`Metrics`] per node (its own registry, no process-wide state), so
//! several nodes in one test process keep their own figures. Counters the
//! upload rules already keep (bytes, chunks, requests in flight) are read
//! from [`Node`] at scrape time by a collector instead of being counted
//! twice; the open-session gauge is one `COUNT` in the session store per
//! scrape.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use upline_core::Node;
use upline_storage::SyncObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    /// `upload` (the protocol's completion callback) or `notify` (the app
    /// API's notification).
    kind: &'static str,
    outcome: &'static str,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Histogram>,
    callbacks: Family<CallbackLabels, Counter>,
    syncs: Histogram,
    sessions_open: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// 0.25 ms to ~16 s: a query answers in a fraction of a millisecond, a
/// 4 MiB chunk from a phone takes seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_25, 2.0, 17)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("upline");
        let requests =
            Family::<RequestLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request (to the response head), by endpoint and status",
            requests.clone(),
        );
        let callbacks = Family::<CallbackLabels, Counter>::default();
        registry.register(
            "callbacks",
            "Completion callbacks and app notifications sent, by outcome",
            callbacks.clone(),
        );
        let syncs = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "fsync_duration_seconds",
            "Time of each chunk's closing fdatasync (local-disk storage)",
            syncs.clone(),
        );
        let sessions_open = Gauge::default();
        registry.register(
            "sessions_open",
            "Upload sessions not yet complete (whole session store)",
            sessions_open.clone(),
        );
        Self {
            registry,
            requests,
            callbacks,
            syncs,
            sessions_open,
        }
    }

    /// Adds the figures the node keeps itself.
    pub fn watch(&mut self, node: Arc<Node>) {
        self.registry.register_collector(Box::new(NodeFigures(node)));
    }

    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .observe(took.as_secs_f64());
    }

    /// What the callback client counts its outcomes with.
    pub fn callback_outcomes(&self) -> CallbackOutcomes {
        CallbackOutcomes(self.callbacks.clone())
    }

    /// What the local-disk store reports its syncs to.
    pub fn sync_observer(&self) -> SyncObserver {
        let h = self.syncs.clone();
        SyncObserver::new(move |d| h.observe(d.as_secs_f64()))
    }

    /// The text exposition, after refreshing the session gauge.
    pub async fn render(&self, node: &Node) -> String {
        match node.sessions_open().await {
            Ok(n) => {
                self.sessions_open.set(n as i64);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: counting open sessions failed"),
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts callback outcomes (a handle on the metrics' counter family).
#[derive(Clone, Default)]
pub struct CallbackOutcomes(Family<CallbackLabels, Counter>);

impl CallbackOutcomes {
    pub fn record(&self, kind: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.0.get_or_create(&CallbackLabels { kind, outcome }).inc();
    }
}

/// The node's own counters, read at scrape time.
struct NodeFigures(Arc<Node>);

impl std::fmt::Debug for NodeFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeFigures")
    }
}

impl Collector for NodeFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.0;
        let bytes = ConstCounter::new(node.bytes_received());
        bytes.encode(encoder.encode_descriptor(
            "bytes_received",
            "Chunk body bytes received, stored or not (re-sent bytes count again)",
            None,
            bytes.metric_type(),
        )?)?;
        let chunks = ConstCounter::new(node.chunks_stored());
        chunks.encode(encoder.encode_descriptor(
            "chunks_stored",
            "Chunks answered 200 (replays included)",
            None,
            chunks.metric_type(),
        )?)?;
        let quarantined = ConstCounter::new(node.quarantined());
        quarantined.encode(encoder.encode_descriptor(
            "quarantined",
            "Blobs moved to quarantine since start: damaged bytes found at start, by the scrub or by a download (see the log)",
            None,
            quarantined.metric_type(),
        )?)?;
        let in_flight = ConstGauge::new(node.in_flight() as i64);
        in_flight.encode(encoder.encode_descriptor(
            "chunk_uploads_in_flight",
            "Chunk uploads being received or stored now",
            None,
            in_flight.metric_type(),
        )?)?;
        Ok(())
    }
}
