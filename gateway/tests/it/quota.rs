//! Quotas through the gateway: requests, images and bytes per minute,
//! concurrency, rows and body size per request, the 429's headers, dry run,
//! and the per-replica division. (The rate arithmetic itself is tested with
//! paused time next to the code, in `quota.rs`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;

const KEY: &str = "quota-test-key-000000000000000000001";

fn config(upstream: &str, quota: &str, dry_run: bool) -> String {
    let settings = format!("quota: {quota}\ndryRun: {dry_run}");
    chest_config(upstream, &[("radiology", KEY, &settings)])
}

/// A gateway on a fresh upstream (answering 200) whose client has `quota`.
async fn with_quota(quota: &str) -> (Upstream, TestGateway) {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway(&config(&up.authority(), quota, false)).await;
    (up, gw)
}

async fn post(gw: &TestGateway, body: String) -> reqwest::Response {
    post_with_key(&gw.url("/endpoints/chest/score"), KEY, body).await
}

#[tokio::test]
async fn requests_per_minute_with_headers() {
    let (up, gw) = with_quota("{requestsPerMinute: 3}").await;
    for _ in 0..3 {
        assert_eq!(post(&gw, text_body()).await.status(), 200);
    }
    let r = post(&gw, text_body()).await;
    assert_eq!(r.status(), 429);
    let h = r.headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-policy"], "\"requests\";q=3;w=60");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"requests\";r=0;t="));
    assert_eq!(error_code(r).await, "too_many_requests");
    assert_eq!(up.count(), 3);
    let m = gw.metrics().await;
    let limited = ["reason=\"requests_per_minute\"", "enforced=\"true\""];
    assert_eq!(rejections(&m, &limited), 1.0);
}

#[tokio::test]
async fn images_and_bytes_per_minute() {
    let (up, gw) = with_quota("{imagesPerMinute: 10}").await;
    assert_eq!(post(&gw, image_body(8)).await.status(), 200);
    let r = post(&gw, image_body(4)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"images\";r=2;"));
    assert_eq!(post(&gw, image_body(2)).await.status(), 200);
    // Text-only rows cost no image quota.
    assert_eq!(post(&gw, text_body()).await.status(), 200);

    let one = text_body().len() as u64;
    let gw = gateway(&config(
        &up.authority(),
        &format!("{{bytesPerMinute: {}}}", one * 2),
        false,
    ))
    .await;
    assert_eq!(post(&gw, text_body()).await.status(), 200);
    assert_eq!(post(&gw, text_body()).await.status(), 200);
    let r = post(&gw, text_body()).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .contains("\"bytes\";q="));
}

#[tokio::test]
async fn concurrent_requests() {
    let up = upstream("slow", Behaviour::Slow(Duration::from_millis(700))).await;
    let gw = gateway(&config(&up.authority(), "{concurrentRequests: 2}", false)).await;
    let url = gw.url("/endpoints/chest/score");
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                let r = post_with_key(&url, KEY, text_body()).await;
                r.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 429]);
    // Slots come back when responses finish.
    assert_eq!(post(&gw, text_body()).await.status(), 200);
}

#[tokio::test]
async fn rows_and_body_per_request() {
    let (up, gw) = with_quota("{maxRowsPerRequest: 2, maxBodyBytes: 1000}").await;
    assert_eq!(post(&gw, image_body(2)).await.status(), 200);
    let r = post(&gw, image_body(3)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "too_many_rows");
    let big = format!("{}{}", text_body(), " ".repeat(1000));
    assert_eq!(post(&gw, big).await.status(), 413);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn dry_run_counts_without_rejecting() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway(&config(
        &up.authority(),
        "{requestsPerMinute: 2, imagesPerMinute: 1}",
        true,
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(post(&gw, image_body(1)).await.status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(rejections(&m, &["enforced=\"false\""]), 4.0, "{m}");
    assert_eq!(rejections(&m, &["enforced=\"true\""]), 0.0);
}

#[tokio::test]
async fn limits_are_divided_across_replicas() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway_with(
        &config(&up.authority(), "{requestsPerMinute: 5}", false),
        |c| c.replicas = 2,
    )
    .await;
    // ceil(5 / 2) = 3 on this replica.
    for _ in 0..3 {
        assert_eq!(post(&gw, text_body()).await.status(), 200);
    }
    let r = post(&gw, text_body()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-policy"], "\"requests\";q=3;w=60");
}
