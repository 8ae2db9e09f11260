//! Prometheus metrics, one registry per application (so test apps never share counters),
//! rendered by `GET /metrics` in the text exposition format. Label values are bounded: routes
//! are patterns, token types are capped, reasons are a fixed set.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::token::claims::RejectReason;

/// Distinct `token_type` label values kept before the rest are counted as `other`: clients
/// choose token types, and a label set must not grow without bound.
pub const MAX_TOKEN_TYPE_LABELS: usize = 32;

pub struct Metrics {
    registry: Registry,
    token_type_labels: Mutex<HashSet<String>>,
    minted: IntCounterVec,
    redeemed: IntCounterVec,
    rejected: IntCounterVec,
    rate_limited: IntCounterVec,
    store_errors: IntCounter,
    rate_limit_degraded: IntCounter,
    store_clock_skew: prometheus::Gauge,
    request_duration: ShardedHistogramVec,
    open_sessions: IntGauge,
    revocations: IntCounterVec,
    resumed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let minted = IntCounterVec::new(
            Opts::new(
                "streamtoken_tokens_minted_total",
                "Tokens minted, by route and token type",
            ),
            &["route", "token_type"],
        )
        .expect("valid metric");
        let redeemed = IntCounterVec::new(
            Opts::new(
                "streamtoken_tokens_redeemed_total",
                "Successful redemptions (uses consumed), by token type",
            ),
            &["token_type"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "streamtoken_redemptions_rejected_total",
                "Redemptions refused, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "streamtoken_rate_limited_total",
                "Minting requests refused by the rate limit, by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let store_errors = IntCounter::new(
            "streamtoken_replay_store_errors_total",
            "Replay-store calls that failed or timed out (each answered 503)",
        )
        .expect("valid metric");
        let rate_limit_degraded = IntCounter::new(
            "streamtoken_rate_limit_degraded_total",
            "Minting requests checked against this process's buckets because the fleet-wide \
             quota store did not answer in time",
        )
        .expect("valid metric");
        let store_clock_skew = prometheus::Gauge::new(
            "streamtoken_store_clock_skew_seconds",
            "The store's clock minus this host's at the last readiness check (largest over \
             Redis nodes; positive: the store is ahead)",
        )
        .expect("valid metric");
        let request_duration = ShardedHistogramVec::new(|| {
            HistogramVec::new(
                HistogramOpts::new(
                    "streamtoken_http_request_duration_seconds",
                    "HTTP request duration, by route pattern, method and status",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
                &["route", "method", "status"],
            )
            .expect("valid metric")
        });
        let open_sessions = IntGauge::new(
            "streamtoken_stream_sessions_open",
            "WebSocket stream sessions currently open",
        )
        .expect("valid metric");

        let revocations = IntCounterVec::new(
            Opts::new(
                "streamtoken_revocations_total",
                "Revocations recorded, by what they named (token, jti, org)",
            ),
            &["kind"],
        )
        .expect("valid metric");

        let resumed = IntCounterVec::new(
            Opts::new(
                "streamtoken_sessions_resumed_total",
                "Sessions re-opened within their reconnect grace (no use consumed), by token type",
            ),
            &["token_type"],
        )
        .expect("valid metric");

        let registry = Registry::new();
        for collector in [
            Box::new(minted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(redeemed.clone()),
            Box::new(rejected.clone()),
            Box::new(rate_limited.clone()),
            Box::new(store_errors.clone()),
            Box::new(rate_limit_degraded.clone()),
            Box::new(store_clock_skew.clone()),
            Box::new(request_duration.clone()),
            Box::new(open_sessions.clone()),
            Box::new(revocations.clone()),
            Box::new(resumed.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            token_type_labels: Mutex::new(HashSet::new()),
            minted,
            redeemed,
            rejected,
            rate_limited,
            store_errors,
            rate_limit_degraded,
            store_clock_skew,
            request_duration,
            open_sessions,
            revocations,
            resumed,
        }
    }

    /// Counts one revocation; `kind` is one of `token`, `jti`, `org`.
    pub fn revoked(&self, kind: &'static str) {
        self.revocations.with_label_values(&[kind]).inc();
    }

    pub fn minted(&self, route: &str, token_type: &str) {
        let token_type = self.token_type_label(token_type);
        self.minted.with_label_values(&[route, token_type]).inc();
    }

    pub fn resumed(&self, token_type: &str) {
        let token_type = self.token_type_label(token_type);
        self.resumed.with_label_values(&[token_type]).inc();
    }

    pub fn redeemed(&self, token_type: &str) {
        let token_type = self.token_type_label(token_type);
        self.redeemed.with_label_values(&[token_type]).inc();
    }

    /// The label for `token_type`: itself while fewer than `MAX_TOKEN_TYPE_LABELS` types have
    /// been seen, `other` after that.
    fn token_type_label<'a>(&self, token_type: &'a str) -> &'a str {
        let Ok(mut seen) = self.token_type_labels.lock() else {
            return "other";
        };
        if seen.contains(token_type) {
            return token_type;
        }
        if seen.len() < MAX_TOKEN_TYPE_LABELS {
            seen.insert(token_type.to_owned());
            return token_type;
        }
        "other"
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn rejected_token(&self, reason: RejectReason) {
        self.rejected(reason.as_str());
    }

    pub fn rate_limited(&self, route: &str) {
        self.rate_limited.with_label_values(&[route]).inc();
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    pub fn rate_limit_degraded(&self) {
        self.rate_limit_degraded.inc();
    }

    pub fn store_clock_skew(&self, seconds: f64) {
        self.store_clock_skew.set(seconds);
    }

    /// Counts an open session until the returned guard is dropped.
    pub fn session_opened(&self) -> SessionGuard {
        self.open_sessions.inc();
        SessionGuard(self.open_sessions.clone())
    }

    /// Records one HTTP request under bounded labels (route pattern, method, status).
    pub fn observe_request(&self, route: &str, method: &str, status: &str, took: Duration) {
        self.request_duration
            .local()
            .with_label_values(&[route, method, status])
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own well-formed families cannot fail; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How many copies of the request-duration histogram there are; threads take them in turn.
const REQUEST_DURATION_SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's copy of a sharded metric: workers are threads, so each worker (up to
    /// `REQUEST_DURATION_SHARDS` of them) writes its own.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % REQUEST_DURATION_SHARDS;
}

/// The request-duration histogram, kept per worker and summed when scraped. Every request
/// observes it: with one shared `HistogramVec`, every worker wrote the same lock word, count,
/// bucket and sum per request, cache lines the workers then passed back and forth.
#[derive(Clone)]
struct ShardedHistogramVec {
    shards: Vec<HistogramVec>,
}

impl ShardedHistogramVec {
    fn new(build: impl Fn() -> HistogramVec) -> Self {
        ShardedHistogramVec {
            shards: (0..REQUEST_DURATION_SHARDS).map(|_| build()).collect(),
        }
    }

    /// The calling thread's copy.
    fn local(&self) -> &HistogramVec {
        &self.shards[SHARD.with(|shard| *shard)]
    }
}

impl Collector for ShardedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        self.shards[0].desc()
    }

    /// One family, as a single `HistogramVec` would give: each label set's counts, sums and
    /// buckets added up over the shards.
    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.shards[0].collect();
        let Some(merged) = families.first_mut() else {
            return families;
        };
        for shard in &self.shards[1..] {
            for family in shard.collect() {
                for metric in family.get_metric() {
                    add_histogram(merged.mut_metric(), metric);
                }
            }
        }
        families
    }
}

/// Adds `metric` to the one with its labels in `into`, or appends it.
fn add_histogram(into: &mut Vec<Metric>, metric: &Metric) {
    let Some(existing) = into
        .iter_mut()
        .find(|m| m.get_label() == metric.get_label())
    else {
        into.push(metric.clone());
        return;
    };
    let (a, b) = (existing.get_histogram(), metric.get_histogram());
    let mut sum = a.clone();
    sum.set_sample_count(a.get_sample_count() + b.get_sample_count());
    sum.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
    sum.set_bucket(
        a.get_bucket()
            .iter()
            .zip(b.get_bucket())
            .map(|(x, y)| {
                let mut bucket = x.clone();
                bucket.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                bucket
            })
            .collect(),
    );
    existing.set_histogram(sum);
}

pub struct SessionGuard(IntGauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The rendered lines of the request-duration histogram.
    fn duration_lines(metrics: &Metrics) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("streamtoken_http_request_duration_seconds"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn observations_from_many_threads_render_as_one_histogram() {
        let metrics = Arc::new(Metrics::new());
        assert!(duration_lines(&metrics).is_empty());
        let threads: Vec<_> = (0..2 * REQUEST_DURATION_SHARDS)
            .map(|i| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    let status = if i % 2 == 0 { "200" } else { "401" };
                    metrics.observe_request("/v1/tokens", "POST", status, Duration::from_millis(2));
                    metrics.observe_request("/healthz", "GET", "200", Duration::from_micros(50));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let lines = duration_lines(&metrics);
        let line = |prefix: &str| {
            let found: Vec<_> = lines.iter().filter(|l| l.starts_with(prefix)).collect();
            assert_eq!(found.len(), 1, "{prefix} in {lines:#?}");
            found[0].rsplit(' ').next().unwrap().to_owned()
        };
        let n = REQUEST_DURATION_SHARDS.to_string();
        let all = (2 * REQUEST_DURATION_SHARDS).to_string();
        let tokens_200 = r#"{method="POST",route="/v1/tokens",status="200""#;
        let count = format!("streamtoken_http_request_duration_seconds_count{tokens_200}}}");
        assert_eq!(line(&count), n);
        let le_1ms =
            format!("streamtoken_http_request_duration_seconds_bucket{tokens_200},le=\"0.001\"}}");
        assert_eq!(line(&le_1ms), "0");
        let le_2_5ms =
            format!("streamtoken_http_request_duration_seconds_bucket{tokens_200},le=\"0.0025\"}}");
        assert_eq!(line(&le_2_5ms), n);
        let healthz = r#"{method="GET",route="/healthz",status="200"}"#;
        let count = format!("streamtoken_http_request_duration_seconds_count{healthz}");
        assert_eq!(line(&count), all);
        let sum: f64 = line(&format!(
            "streamtoken_http_request_duration_seconds_sum{healthz}"
        ))
        .parse()
        .unwrap();
        assert!((sum - 0.000_05 * (2 * REQUEST_DURATION_SHARDS) as f64).abs() < 1e-9);
    }
}
