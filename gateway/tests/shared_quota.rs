//! Exact per-minute limits across two gateway processes sharing one Redis
//! (Debian's `redis-server`, started here; scripts/test.sh installs it).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "shared-quota-key-00000000000000000001";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server is required for this test ({e}); scripts/test.sh installs Debian's redis-server")
        });
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), port)
}

fn gateway_process(config: &std::path::Path, redis_port: u16) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_medembed-gateway"))
        .args(["--config-file", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}/0")])
        .args(["--audit-log", "off", "--scrape-interval-ms", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (Killed(child), port)
}

async fn wait_ready(port: u16) {
    let t = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn exact_limits_across_two_gateway_processes() {
    let (_redis, redis_port) = redis_server();
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write_config(
        &path,
        &format!(
            r#"
endpoints:
  - name: chest
    deployments: {{blue: {{workers: ["{}"]}}}}
clients:
  - name: radiology
    endpoints: [chest]
    keys: {{primarySha256: "{}"}}
    quota: {{requestsPerMinute: 10, imagesPerMinute: 25}}
"#,
            up.authority(),
            hash(KEY)
        ),
    );
    let (_a, pa) = gateway_process(&path, redis_port);
    let (_b, pb) = gateway_process(&path, redis_port);
    wait_ready(pa).await;
    wait_ready(pb).await;

    // 30 requests, alternating, 8 at a time: exactly 10 pass, on either side.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let port = if i % 2 == 0 { pa } else { pb };
        tasks.push(tokio::spawn(async move {
            client()
                .post(format!("http://127.0.0.1:{port}/endpoints/chest/score"))
                .bearer_auth(KEY)
                .body(text_body())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    // 10 per minute is one every 6 s: the run takes well under that.
    assert_eq!((ok, limited), (10, 20));
    assert_eq!(up.count(), 10);
}

#[tokio::test]
async fn exact_image_limits_across_two_gateway_processes() {
    let (_redis, redis_port) = redis_server();
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write_config(
        &path,
        &format!(
            r#"
endpoints:
  - name: chest
    deployments: {{blue: {{workers: ["{}"]}}}}
clients:
  - name: radiology
    endpoints: [chest]
    keys: {{primarySha256: "{}"}}
    quota: {{imagesPerMinute: 12}}
"#,
            up.authority(),
            hash(KEY)
        ),
    );
    let (_a, pa) = gateway_process(&path, redis_port);
    let (_b, pb) = gateway_process(&path, redis_port);
    wait_ready(pa).await;
    wait_ready(pb).await;
    let mut images_ok = 0;
    for i in 0..12 {
        let port = if i % 2 == 0 { pa } else { pb };
        let r = client()
            .post(format!("http://127.0.0.1:{port}/endpoints/chest/score"))
            .bearer_auth(KEY)
            .body(image_body(3))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            images_ok += 3;
        } else {
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["ratelimit-policy"], "\"images\";q=12;w=60");
        }
    }
    assert_eq!(images_ok, 12);
}
