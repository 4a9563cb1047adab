//! `--metrics-addr`: the run's figures in Prometheus' text format at `GET /metrics`, for a
//! cluster's monitoring to scrape. Epoch figures are updated at every epoch end; the loss and
//! examples of the epoch in progress with every heartbeat.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

impl Metrics {
    pub fn update(&self, f: impl FnOnce(&mut Values)) {
        // A poisoned lock only means a panic elsewhere mid-update; the numbers are still
        // numbers.
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn values(&self) -> Values {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let v = self.values();
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP smalltext_{name} {help}");
            let _ = writeln!(out, "# TYPE smalltext_{name} {kind}");
            let _ = writeln!(out, "smalltext_{name} {value}");
        };
        put(
            "epochs_total",
            "counter",
            "Epochs completed.",
            v.epochs as f64,
        );
        put(
            "steps_total",
            "counter",
            "Optimizer steps completed.",
            v.steps as f64,
        );
        put(
            "examples_total",
            "counter",
            "Training examples processed.",
            v.examples as f64,
        );
        put(
            "steps_per_second",
            "gauge",
            "Optimizer steps per second of the last epoch.",
            v.steps_per_second,
        );
        put(
            "samples_per_second",
            "gauge",
            "Training examples per second of the last epoch, all workers.",
            v.samples_per_second,
        );
        put(
            "train_loss",
            "gauge",
            "Mean training loss of the current epoch so far.",
            v.loss,
        );
        if let Some(l) = v.eval_loss {
            put(
                "eval_loss",
                "gauge",
                "Validation loss after the last epoch.",
                l,
            );
        }
        put(
            "allreduce_seconds_per_step",
            "gauge",
            "Seconds per step spent in the gradient all-reduce, last epoch.",
            v.allreduce_seconds_per_step,
        );
        put(
            "workers_alive",
            "gauge",
            "Workers in the run.",
            v.workers_alive as f64,
        );
        put(
            "membership_changes_total",
            "counter",
            "Workers joined or lost since the start.",
            v.membership_changes as f64,
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A scraper asks at once; a stranger who sends nothing is let go.
            let _ = tokio::time::timeout(common::idle::IDLE_TIMEOUT, answer(&mut stream, &metrics))
                .await;
        });
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, metrics: &Metrics) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await.context("reading a request")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if line.starts_with("GET ") && (target == "/metrics" || target == "/") {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
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
        let text = m.render();
        assert!(text.contains("smalltext_steps_total 12\n"));
        assert!(text.contains("smalltext_samples_per_second 1500.5\n"));
        assert!(text.contains("smalltext_workers_alive 2\n"));
        assert!(!text.contains("eval_loss"), "no validation set, no gauge");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(' ').next().unwrap_or("");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} lacks TYPE"
            );
        }
    }
}
