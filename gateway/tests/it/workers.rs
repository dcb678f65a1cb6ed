//! The gateway in front of real worker processes serving the TEST MODEL
//! (random weights, MedImageInsight's exact I/O; its embeddings mean
//! nothing): answers pass through unchanged, load spreads, and workers are
//! added and removed under load without a failed request.
//!
//! The worker binary: `MEDEMBED_WORKER_BIN` when set, else the workspace's
//! build, with the same cargo, profile and target directory as the test
//! itself (`medembed_testsupport::repo::bin`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;

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

/// The image and text request through the gateway at `url`, with the key.
async fn score(url: &str) -> reqwest::Response {
    post_with_key(url, KEY, mixed_body()).await
}

#[tokio::test]
async fn real_workers_answer_through_the_gateway_and_share_the_load() {
    let _heavy = crate::common::exclusive().await;
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
    let r = score(&gw.url("/endpoints/chest/score")).await;
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
                assert_eq!(score(&url).await.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in [&w1, &w2] {
        let n = worker_requests(&w.authority()).await;
        assert!(n >= 8.0, "worker {} served only {n}", w.authority());
    }
}

#[tokio::test]
async fn workers_added_and_removed_under_load_without_failed_requests() {
    let _heavy = crate::common::exclusive().await;
    let (w1, w2) = (start_worker().await, start_worker().await);
    let gw = gateway(&config(&[&w1, &w2])).await;
    let load = Load::start(&gw.url("/endpoints/chest/score"), KEY, 4);
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
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 20, "only {ok} requests");
    assert!(worker_requests(&w3.authority()).await > 0.0);
}
