//! A small open-loop HTTP load generator for the gateway benchmark
//! (`scripts/bench-gateway.sh`): sends POSTs at a fixed rate over a pool of
//! keep-alive connections and reports latency percentiles measured from each
//! request's scheduled start (so a stall is not hidden by fewer requests
//! being sent, the "coordinated omission" of closed-loop tools).
//!
//! Usage: `loadgen URL RATE SECONDS CONNECTIONS BODY_FILE [HEADER: VALUE]...`
//! Prints one JSON object.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: loadgen URL RATE SECONDS CONNECTIONS BODY_FILE [HEADER: VALUE]...");
        std::process::exit(2);
    }
    let url: http::Uri = args[1].parse().unwrap();
    let rate: f64 = args[2].parse().unwrap();
    let seconds: f64 = args[3].parse().unwrap();
    let conns: usize = args[4].parse().unwrap();
    let body = Bytes::from(std::fs::read(&args[5]).unwrap());
    let headers: Vec<(String, String)> = args[6..]
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(connector);
    let limit = Arc::new(tokio::sync::Semaphore::new(conns));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let (client, url, body, headers) =
            (client.clone(), url.clone(), body.clone(), headers.clone());
        let (latencies, errors, limit) = (latencies.clone(), errors.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let mut req = http::Request::post(url).header("content-type", "application/json");
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req.body(Full::new(body)).unwrap();
            match client.request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    if ok {
                        latencies
                            .lock()
                            .await
                            .push(scheduled.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().await.clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return f64::NAN;
        }
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    };
    println!(
        "{}",
        serde_json::json!({
            "sent": total,
            "ok": l.len(),
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
            "achieved_rps": l.len() as f64 / elapsed,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
}
