//! The gateway in front of real worker processes serving the TEST MODEL
//! (random weights, MedImageInsight's exact I/O; its embeddings mean
//! nothing): answers pass through unchanged, load spreads, and workers are
//! added and removed under load without a failed request.
//!
//! The worker binary: `MEDEMBED_WORKER_BIN` when set, else the test builds
//! it with the same cargo, profile and target directory as the test itself
//! (`cargo build -p medembed-worker`; see `common::worker_env`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const KEY: &str = "workers-test-key-000000000000000000001";

fn config(workers: &[&Worker]) -> String {
    let list: Vec<String> = workers
        .iter()
        .map(|w| format!("\"{}\"", w.authority()))
        .collect();
    format!(
        r#"
endpoints:
  - name: chest
    requestSettings: {{requestTimeoutMs: 30000}}
    deployments: {{blue: {{workers: [{}]}}}}
clients:
  - name: radiology
    endpoints: [chest]
    keys: {{primarySha256: "{}"}}
"#,
        list.join(", "),
        hash(KEY)
    )
}

#[tokio::test]
async fn real_workers_answer_through_the_gateway_and_share_the_load() {
    let (w1, w2) = (start_worker().await, start_worker().await);
    let gw = gateway_with(&config(&[&w1, &w2]), |c| c.scrape_interval_ms = 200).await;
    let direct: serde_json::Value = client()
        .post(format!("http://{}/score", w1.authority()))
        .body(mixed_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .body(mixed_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let via: serde_json::Value = r.json().await.unwrap();
    // The live shape: one object per row, each vector a list of one vector.
    assert_eq!(via[0]["image_features"][0].as_array().unwrap().len(), 1024);
    assert_eq!(via, direct, "the gateway changed the worker's answer");
    // Errors from the worker come back in its JSON shape.
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .body(r#"{"input_data":{"columns":["image"],"index":[0],"data":[["not base64 !!"]]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"]["code"].is_string());
    // Load spreads across both workers.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = gw.url("/endpoints/chest/score");
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let r = client()
                    .post(&url)
                    .bearer_auth(KEY)
                    .body(mixed_body())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in [&w1, &w2] {
        let m = reqwest::get(format!("http://{}/metrics", w.authority()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n = metric(&m, "medembed_worker_requests_total", &["status=\"200\""]);
        assert!(n >= 8.0, "worker {} served only {n}", w.authority());
    }
}

#[tokio::test]
async fn workers_added_and_removed_under_load_without_failed_requests() {
    let (w1, w2) = (start_worker().await, start_worker().await);
    let gw = gateway(&config(&[&w1, &w2])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok) = (gw.url("/endpoints/chest/score"), stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client()
                    .post(&url)
                    .bearer_auth(KEY)
                    .body(mixed_body())
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((r.status().as_u16(), r.text().await.unwrap_or_default()));
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Add a worker.
    let w3 = start_worker().await;
    gw.rewrite(&config(&[&w1, &w2, &w3])).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Remove one the way Kubernetes does: the pod is told to stop (it drains,
    // answering 503 to new requests, then exits) while its address is taken
    // out of the endpoint's list.
    w1.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.rewrite(&config(&[&w2, &w3])).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
    let m = reqwest::get(format!("http://{}/metrics", w3.authority()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&m, "medembed_worker_requests_total", &["status=\"200\""]) > 0.0);
}
