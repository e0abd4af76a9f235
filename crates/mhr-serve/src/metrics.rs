//! `GET /metrics`: the server's counters in Prometheus' text format (tokens/s is `rate()` of the token
//! counters).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

/// Every metric, shared by the HTTP handlers and the model worker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests accepted and not yet taken by the worker.
    pub queue_depth: Gauge,
    /// Rows (inputs; (input, choice) pairs for scoring) per model batch.
    pub batch_rows: Histogram,
    /// Requests per model batch: above 1, requests (of any tasks) shared a forward pass.
    pub batch_requests: Histogram,
    pub batch_seconds: Histogram,
    pub input_tokens: Counter,
    pub generated_tokens: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<EndpointLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mhr");
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for the model",
            queue_depth.clone(),
        );
        let batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register("batch_rows", "Rows per model batch", batch_rows.clone());
        let batch_requests = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "batch_requests",
            "Requests per model batch",
            batch_requests.clone(),
        );
        let batch_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("batch_seconds", "Time of one model batch", batch_seconds.clone());
        let input_tokens = Counter::default();
        registry.register("input_tokens", "Input tokens processed", input_tokens.clone());
        let generated_tokens = Counter::default();
        registry.register("generated_tokens", "Tokens generated", generated_tokens.clone());
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint and status",
            requests.clone(),
        );
        let request_seconds = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register("request_seconds", "Request latency", request_seconds.clone());
        Self {
            registry,
            queue_depth,
            batch_rows,
            batch_requests,
            batch_seconds,
            input_tokens,
            generated_tokens,
            requests,
            request_seconds,
        }
    }
}

impl Metrics {
    /// Records an answered request.
    pub fn answered(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .observe(seconds);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
