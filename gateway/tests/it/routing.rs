//! Routing, balancing and resilience against fake upstreams: host and path
//! routing, the weighted split, the pin header, mirroring that never touches
//! the live answer, retries and penalties, deadlines, cancellation, body
//! limits, trace context, the audit log and graceful shutdown.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use medembed_api::{
    CLIENT_REQUEST_ID_HEADER, DEPLOYMENT_HEADER, REQUEST_ID_HEADER, RESPONSE_FORMAT_HEADER,
};

const KEY: &str = "k-routing-0123456789";

fn config(deployments: &str, extra: &str) -> String {
    format!(
        r#"
endpoints:
  - name: chest
    hosts: [chest.example.org]
    auth: {{mode: Key}}
{extra}
    deployments:
{deployments}
clients:
  - name: radiology
    endpoints: [chest]
    keys: {{primarySha256: "{}"}}
"#,
        hash(KEY)
    )
}

/// Deployment `blue` on the one worker `up`, as [`config`] takes it.
fn blue(up: &Upstream) -> String {
    deployments(&[("blue", up)])
}

/// A gateway whose deployment `blue` is one fresh upstream, `name` with
/// `behaviour`; `extra`: more of the endpoint's settings.
async fn on_one(name: &str, behaviour: Behaviour, extra: &str) -> (Upstream, TestGateway) {
    let up = upstream(name, behaviour).await;
    let gw = gateway(&config(&blue(&up), extra)).await;
    (up, gw)
}

/// Deployments, each on its one worker, as [`config`] takes them.
fn deployments(list: &[(&str, &Upstream)]) -> String {
    let lines: Vec<String> = list
        .iter()
        .map(|(name, up)| format!("      {name}: {{workers: [\"{}\"]}}", up.authority()))
        .collect();
    lines.join("\n")
}

async fn post(url: &str, host: Option<&str>, pin: Option<&str>) -> reqwest::Response {
    let mut r = client()
        .post(url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(text_body());
    if let Some(h) = host {
        r = r.header("host", h);
    }
    if let Some(p) = pin {
        r = r.header("azureml-model-deployment", p);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn host_and_path_routing_and_unknown_routes() {
    let (up, gw) = on_one("blue", Behaviour::Ok, "").await;
    // Host name (the managed service's style): POST /score.
    let r = post(&gw.url("/score"), Some("Chest.Example.Org:443"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["azureml-model-deployment"], "blue");
    assert!(r.text().await.unwrap().contains("\"upstream\":\"blue\""));
    // Path prefix (clusters without wildcard DNS).
    let r = post(&gw.url("/endpoints/chest/score"), None, None).await;
    assert_eq!(r.status(), 200);
    // Unknown host and path: 404 in the API's error shape.
    let r = post(&gw.url("/score"), Some("other.example.org"), None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_found");
    let r = post(&gw.url("/endpoints/nope/score"), None, None).await;
    assert_eq!(r.status(), 404);
    // Wrong method.
    let r = client()
        .get(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(up.count(), 2);
    // Invalid request bodies are refused before any worker sees them.
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "invalid_json");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn ninety_ten_split_and_pin_header() {
    let blue = upstream("blue", Behaviour::Ok).await;
    let green = upstream("green", Behaviour::Ok).await;
    let both = deployments(&[("blue", &blue), ("green", &green)]);
    let gw = gateway(&config(&both, "    traffic: {blue: 90, green: 10}")).await;
    let url = gw.url("/endpoints/chest/score");
    let n = 2000;
    let mut tasks = Vec::new();
    for _ in 0..n / 50 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(post(&url, None, None).await.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let g = green.count() as f64;
    assert_eq!(blue.count() + green.count(), n);
    // Binomial(2000, 0.1): sd = 13.4; accept within 4.5 sd.
    let sd = (n as f64 * 0.1 * 0.9).sqrt();
    assert!(
        (g - 200.0).abs() < 4.5 * sd,
        "green got {g} of {n}, expected about 200"
    );
    // The pin header bypasses the split, both ways.
    let (b0, g0) = (blue.count(), green.count());
    for _ in 0..20 {
        let r = post(&url, None, Some("green")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["azureml-model-deployment"], "green");
    }
    assert_eq!((blue.count(), green.count()), (b0, g0 + 20));
    let r = post(&url, None, Some("nosuch")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "deployment_not_found");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "medembed_gateway_requests_total",
            &[
                "deployment=\"green\"",
                "status=\"200\"",
                "client=\"radiology\""
            ]
        ),
        g + 20.0
    );
}

#[tokio::test]
async fn mirror_never_affects_the_live_response() {
    let live = upstream("live", Behaviour::Ok).await;
    let shadow = upstream("shadow", Behaviour::Slow(Duration::from_secs(3))).await;
    let gw = gateway(&config(
        &deployments(&[("live", &live), ("shadow", &shadow)]),
        "    traffic: {live: 100}\n    mirrorTraffic: {deployment: shadow, percent: 50}",
    ))
    .await;
    let url = gw.url("/endpoints/chest/score");
    // A slow shadow: live answers stay fast.
    let t = Instant::now();
    for _ in 0..40 {
        let r = post(&url, None, None).await;
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("\"upstream\":\"live\""));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "live requests waited for the shadow"
    );
    // A failing shadow (503, dropped connections, refused connections): live answers unchanged.
    shadow.set(Behaviour::Status(503));
    for _ in 0..20 {
        assert_eq!(post(&url, None, None).await.status(), 200);
    }
    shadow.set(Behaviour::Drop);
    for _ in 0..20 {
        assert_eq!(post(&url, None, None).await.status(), 200);
    }
    assert_eq!(live.count(), 80);
    let copies = shadow.count();
    // 50% of 80 live requests: Binomial(80, 0.5), sd 4.5.
    assert!((20..=60).contains(&copies), "shadow got {copies} copies");
    // Pinned requests are not mirrored.
    let before = shadow.count();
    for _ in 0..10 {
        assert_eq!(post(&url, None, Some("live")).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(shadow.count(), before);
    // The comparison is in the metrics: live 200 against the shadow's outcome.
    let m = gw.metrics().await;
    let mirrored = metric(
        &m,
        "medembed_gateway_mirror_requests_total",
        &["live_status=\"200\""],
    );
    assert!(
        mirrored >= copies as f64 - 1.0,
        "mirror metric {mirrored} vs {copies}"
    );
    assert!(
        metric(
            &m,
            "medembed_gateway_mirror_requests_total",
            &["shadow_status=\"503\""]
        ) > 0.0
    );
    for role in ["role=\"shadow\"", "role=\"live\""] {
        let timed = metric(
            &m,
            "medembed_gateway_mirror_duration_seconds_count",
            &[role],
        );
        assert!(timed > 0.0, "{role}");
    }
}

#[tokio::test]
async fn retry_once_on_refused_connection_or_503_then_penalty() {
    let good = upstream("good", Behaviour::Ok).await;
    let bad = upstream("bad", Behaviour::Status(503)).await;
    let dead = free_port();
    let workers =
        |a: &str, b: &str| config(&format!("      blue: {{workers: [\"{a}\", \"{b}\"]}}"), "");
    // A penalty longer than the test, so that a slow machine does not see it
    // expire (its expiry is a unit test of the balancer).
    let gw = gateway_with(&workers(&good.authority(), &bad.authority()), |c| {
        c.penalty_ms = 120_000
    })
    .await;
    let url = gw.url("/endpoints/chest/score");
    // A worker answering 503: retried on the other, penalised, then avoided.
    for _ in 0..60 {
        assert_eq!(post(&url, None, None).await.status(), 200);
    }
    assert!(
        bad.count() >= 1 && bad.count() <= 5,
        "503 worker saw {}",
        bad.count()
    );
    // A worker refusing connections: the same.
    gw.rewrite(&workers(&good.authority(), &format!("127.0.0.1:{dead}")))
        .await;
    for _ in 0..20 {
        assert_eq!(post(&url, None, None).await.status(), 200);
    }
    let m = gw.metrics().await;
    for cause in ["cause=\"unavailable\"", "cause=\"connect\""] {
        let retries = metric(&m, "medembed_gateway_upstream_retries_total", &[cause]);
        assert!(retries >= 1.0, "{cause}");
    }
}

#[tokio::test]
async fn connection_broken_mid_request_is_retried_once_on_another_worker() {
    // A worker killed while it holds the request (SIGKILL, OOM kill, node
    // loss) closes the connection without answering. Scoring is a pure
    // function of the request, so the gateway runs it once more elsewhere.
    let good = upstream("good", Behaviour::Ok).await;
    let broken = upstream("broken", Behaviour::Drop).await;
    let gw = gateway_with(
        &config(
            &format!(
                "      blue: {{workers: [\"{}\", \"{}\"]}}",
                good.authority(),
                broken.authority()
            ),
            "",
        ),
        |c| c.penalty_ms = 120_000,
    )
    .await;
    let url = gw.url("/endpoints/chest/score");
    for _ in 0..20 {
        assert_eq!(post(&url, None, None).await.status(), 200);
    }
    assert!(
        (1..=2).contains(&broken.count()),
        "the broken worker saw {} requests: penalised after the first",
        broken.count()
    );
    let m = gw.metrics().await;
    let resets = ["cause=\"reset\""];
    assert!(metric(&m, "medembed_gateway_upstream_retries_total", &resets) >= 1.0);
    // Both workers breaking: one retry, then 502, never a third attempt.
    good.set(Behaviour::Drop);
    let before = good.count() + broken.count();
    let r = post(&url, None, None).await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "upstream_failed");
    assert_eq!(
        good.count() + broken.count() - before,
        2,
        "exactly two attempts"
    );
}

#[tokio::test]
async fn only_workers_answering_503_gives_503_and_429_is_passed_on() {
    let (a, gw) = on_one("a", Behaviour::Status(429), "").await;
    let url = gw.url("/endpoints/chest/score");
    assert_eq!(post(&url, None, None).await.status(), 429);
    a.set(Behaviour::Status(503));
    assert_eq!(post(&url, None, None).await.status(), 503);
    // No worker at all.
    let gw2 = gateway(&config("      blue: {workers: []}", "")).await;
    let r = post(&gw2.url("/endpoints/chest/score"), None, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "no_workers");
}

#[tokio::test]
async fn deadline_is_passed_on_and_enforced() {
    let (up, gw) = on_one(
        "slow",
        Behaviour::Slow(Duration::from_secs(5)),
        "    requestSettings: {requestTimeoutMs: 700}",
    )
    .await;
    let t = Instant::now();
    let r = post(&gw.url("/endpoints/chest/score"), None, None).await;
    assert_eq!(r.status(), 408);
    let e = t.elapsed();
    assert!(
        e >= Duration::from_millis(650) && e < Duration::from_secs(3),
        "took {e:?}"
    );
    let sent = up.seen.last_timeout_ms.load(Ordering::SeqCst);
    assert!(sent > 0 && sent <= 700, "timeout header {sent}");
    // The worker saw the gateway give up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.seen.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let (up, gw) = on_one(
        "slow",
        Behaviour::Slow(Duration::from_secs(10)),
        "    requestSettings: {requestTimeoutMs: 30000}",
    )
    .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let r = c
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .body(text_body())
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    let t = Instant::now();
    while up.seen.cancelled.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        up.seen.cancelled.load(Ordering::SeqCst),
        1,
        "upstream request not cancelled"
    );
    assert_eq!(up.seen.completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn body_limits_declared_and_streaming() {
    let (up, gw) = on_one(
        "blue",
        Behaviour::Ok,
        "    requestSettings: {maxBodyBytes: 2048}",
    )
    .await;
    let url = gw.url("/endpoints/chest/score");
    // Declared too large.
    let r = client()
        .post(&url)
        .bearer_auth(KEY)
        .body(image_body(40))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");
    // Streamed (chunked, no length) and too large.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(bytes::Bytes::from(vec![b' '; 512])))
        .collect();
    let r = client()
        .post(&url)
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.count(), 0);
    // Within the limit.
    assert_eq!(post(&url, None, None).await.status(), 200);
}

#[tokio::test]
async fn traceparent_and_request_id_are_continued_and_audit_lines_are_written() {
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let a2 = audit.clone();
    let gw = gateway_with(&config(&blue(&up), ""), move |c| {
        c.audit_log = a2.to_string_lossy().into_owned()
    })
    .await;
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header(REQUEST_ID_HEADER, "client-req-0001")
        .header(CLIENT_REQUEST_ID_HEADER, "sdk-42")
        .body(image_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The request id reaches the worker and comes back; the SDK's id is
    // echoed; the deployment that answered is named.
    assert_eq!(r.headers()[REQUEST_ID_HEADER], "client-req-0001");
    assert_eq!(r.headers()[CLIENT_REQUEST_ID_HEADER], "sdk-42");
    assert_eq!(r.headers()[DEPLOYMENT_HEADER], "blue");
    assert_eq!(*up.seen.last_request_id.lock().unwrap(), "client-req-0001");
    // The endpoint's response format (the default) goes to the worker.
    assert_eq!(*up.seen.last_response_format.lock().unwrap(), "PerRow");
    let tp = up.seen.last_traceparent.lock().unwrap().clone();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"));
    // A refused request is audited too, and its answer carries a new id.
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth("wrong")
        .header(CLIENT_REQUEST_ID_HEADER, "sdk-43")
        .body(text_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()[CLIENT_REQUEST_ID_HEADER], "sdk-43");
    let refused_id = r.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_string();
    assert_eq!(refused_id.len(), 36, "{refused_id}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let a = &lines[0];
    assert_eq!(a["client"], "radiology");
    assert_eq!(a["endpoint"], "chest");
    assert_eq!(a["deployment"], "blue");
    assert_eq!(a["status"], 200);
    assert_eq!(a["rows"], 3);
    assert_eq!(a["images"], 3);
    assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a["request_id"], "client-req-0001");
    assert_eq!(lines[1]["request_id"], refused_id.as_str());
    assert!(a["bytes"].as_u64().unwrap() > 100);
    assert!(a["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[1]["client"], "-");
    // Never the payload, never the key.
    assert!(!text.contains("iVBOR"));
    assert!(!text.contains(KEY) && !text.contains("wrong"));
    let m = gw.metrics().await;
    assert!(!m.contains(KEY));
    let radiology = ["client=\"radiology\""];
    assert_eq!(metric(&m, "medembed_gateway_images_total", &radiology), 3.0);
    assert_eq!(rejections(&m, &["reason=\"invalid_key\""]), 1.0);
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    let (_up, mut gw) = on_one("slow", Behaviour::Slow(Duration::from_millis(800)), "").await;
    let url = gw.url("/endpoints/chest/score");
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, None, None).await.status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr();
    let running = gw.gw.take().unwrap();
    let stop = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused while the old ones drain.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    for p in pending {
        assert_eq!(p.await.unwrap(), 200);
    }
    stop.await.unwrap();
}

#[tokio::test]
async fn the_endpoints_response_format_goes_to_the_worker() {
    let up = upstream("blue", Behaviour::Ok).await;
    let deployments = blue(&up);
    let gw = gateway(&config(&deployments, "    responseFormat: Documented")).await;
    // A client cannot choose another shape than its endpoint's.
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .header(RESPONSE_FORMAT_HEADER, "PerRow")
        .body(text_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(*up.seen.last_response_format.lock().unwrap(), "Documented");
    // A change of the file applies to the next request; a format the gateway
    // does not know keeps the last good file in force.
    for (set, want) in [("PerRow", "PerRow"), ("Columns", "PerRow")] {
        gw.rewrite(&config(&deployments, &format!("    responseFormat: {set}")))
            .await;
        let r = post(&gw.url("/endpoints/chest/score"), None, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(*up.seen.last_response_format.lock().unwrap(), want, "{set}");
    }
}

#[tokio::test]
async fn own_paths_on_both_listeners_and_readyz_turns_503_while_draining() {
    let up = upstream("slow", Behaviour::Slow(Duration::from_millis(800))).await;
    let mut gw = gateway_with(&config(&blue(&up), ""), |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let admin = gw.gw.as_ref().unwrap().admin_addr.unwrap();
    let public = format!("http://{}", gw.addr());
    for base in [public.clone(), format!("http://{admin}")] {
        for path in ["/livez", "/readyz"] {
            let r = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
            // Every answer carries a request id.
            assert_eq!(r.headers()[REQUEST_ID_HEADER].len(), 36);
        }
    }
    // Metrics are the admin listener's only: the scoring port answers the
    // API's JSON 404, and the admin port serves nothing but its own paths.
    let r = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("medembed_gateway_"));
    let r = client()
        .get(format!("{public}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()[REQUEST_ID_HEADER].len(), 36);
    assert_eq!(error_code(r).await, "not_found");
    let r = post(&format!("http://{admin}/endpoints/chest/score"), None, None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(up.count(), 0);
    let pending = {
        let url = gw.url("/endpoints/chest/score");
        tokio::spawn(async move { post(&url, None, None).await.status() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = tokio::spawn(gw.gw.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "draining");
    assert_eq!(pending.await.unwrap(), 200);
    stop.await.unwrap();
}

#[tokio::test]
async fn refusals_before_any_worker_carry_their_headers_and_the_ids() {
    let (up, gw) = on_one("blue", Behaviour::Ok, "").await;
    let send = |method: reqwest::Method, path: &str| {
        client()
            .request(method, gw.url(path))
            .bearer_auth(KEY)
            .header(REQUEST_ID_HEADER, "mine-1")
            .header(CLIENT_REQUEST_ID_HEADER, "sdk-7")
            .body(text_body())
            .send()
    };
    // No route: 404, not counted against any endpoint.
    let r = send(reqwest::Method::POST, "/endpoints/nope/score")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()[REQUEST_ID_HEADER], "mine-1");
    assert_eq!(r.headers()[CLIENT_REQUEST_ID_HEADER], "sdk-7");
    // Wrong method: 405 with Allow.
    let r = send(reqwest::Method::PUT, "/endpoints/chest/score")
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.headers()[REQUEST_ID_HEADER], "mine-1");
    assert_eq!(r.headers()[CLIENT_REQUEST_ID_HEADER], "sdk-7");
    assert_eq!(error_code(r).await, "method_not_allowed");
    assert_eq!(up.count(), 0);
    let m = gw.metrics().await;
    let refused = ["reason=\"method_not_allowed\"", "endpoint=\"chest\""];
    assert_eq!(rejections(&m, &refused), 1.0);
    assert_eq!(rejections(&m, &["reason=\"not_found\""]), 0.0);
}
