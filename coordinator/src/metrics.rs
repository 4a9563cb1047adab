//! `--metrics-addr`: the run's figures at `GET /metrics`, for a cluster's monitoring to scrape,
//! encoded by `prometheus-client` (OpenMetrics text) and served by hyper. Epoch figures are
//! updated at every epoch end; the loss and examples of the epoch in progress with every
//! heartbeat.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::idle::IDLE_TIMEOUT;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint shows; every field is a gauge or counter of the same name.
#[derive(Debug, Default, Clone)]
pub struct Values {
    /// Epochs completed.
    pub epochs: u64,
    /// Optimizer steps completed, all epochs.
    pub steps: u64,
    /// Training examples processed, all epochs.
    pub examples: u64,
    /// Of the last completed epoch.
    pub steps_per_second: f64,
    pub samples_per_second: f64,
    pub allreduce_seconds_per_step: f64,
    /// Mean training loss of the epoch in progress (of the last one at its end).
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub workers_alive: u64,
    /// Joins and losses of workers since the coordinator started.
    pub membership_changes: u64,
}

#[derive(Debug, Default)]
pub struct Metrics(Mutex<Values>);

fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

fn gauge(x: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::default();
    g.set(x);
    g
}

impl Metrics {
    pub fn update(&self, f: impl FnOnce(&mut Values)) {
        // A poisoned lock only means a panic elsewhere mid-update; the numbers are still
        // numbers.
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn values(&self) -> Values {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The OpenMetrics text of the current values. Counters get their `_total` suffix from
    /// the encoder, so the sample names are those of the Prometheus text format served before.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        // A registry per scrape: the values live in `Values`, which the run updates in one
        // place, and a snapshot keeps one scrape's figures consistent with each other.
        let v = self.values();
        let mut r = Registry::with_prefix("smalltext");
        r.register("epochs", "Epochs completed", counter(v.epochs));
        r.register("steps", "Optimizer steps completed", counter(v.steps));
        r.register(
            "examples",
            "Training examples processed",
            counter(v.examples),
        );
        r.register(
            "steps_per_second",
            "Optimizer steps per second of the last epoch",
            gauge(v.steps_per_second),
        );
        r.register(
            "samples_per_second",
            "Training examples per second of the last epoch, all workers",
            gauge(v.samples_per_second),
        );
        r.register(
            "train_loss",
            "Mean training loss of the current epoch so far",
            gauge(v.loss),
        );
        if let Some(l) = v.eval_loss {
            r.register(
                "eval_loss",
                "Validation loss after the last epoch",
                gauge(l),
            );
        }
        r.register(
            "allreduce_seconds_per_step",
            "Seconds per step spent in the gradient all-reduce, last epoch",
            gauge(v.allreduce_seconds_per_step),
        );
        let alive: Gauge = Gauge::default();
        alive.set(i64::try_from(v.workers_alive).unwrap_or(i64::MAX));
        r.register("workers_alive", "Workers in the run", alive);
        r.register(
            "membership_changes",
            "Workers joined or lost since the start",
            counter(v.membership_changes),
        );
        let mut out = String::new();
        encode(&mut out, &r)?;
        Ok(out)
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: the run matters more than a scrape.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&req, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper asks at once; a stranger who sends nothing, or a request slowly, is
            // let go.
            let _ = tokio::time::timeout(IDLE_TIMEOUT, connection).await;
        });
    }
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        r
    };
    let path = req.uri().path();
    if req.method() != Method::GET || !(path == "/metrics" || path == "/") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served\n".into(),
        );
    }
    match metrics.render() {
        Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "the metrics could not be encoded\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let m = Metrics::default();
        m.update(|v| {
            v.steps = 12;
            v.samples_per_second = 1500.5;
            v.workers_alive = 2;
        });
        let text = m.render().unwrap();
        assert!(text.contains("smalltext_steps_total 12\n"), "{text}");
        assert!(
            text.contains("smalltext_samples_per_second 1500.5\n"),
            "{text}"
        );
        assert!(text.contains("smalltext_workers_alive 2\n"), "{text}");
        assert!(!text.contains("eval_loss"), "no validation set, no gauge");
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(' ').next().unwrap_or("");
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} lacks TYPE: {text}"
            );
        }
    }
}
