//! The gateway's front door under attack: half-sent headers, a throttled
//! client with a large body, bodies beyond the global budget, and the
//! memory amplification of a huge `index` through a real gateway process in
//! front of a real worker process (peak RSS of both).

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medembed_testsupport::repo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const KEY: &str = "front-door-key";

/// Endpoint `chest` on `upstream` with `settings` (YAML flow map) as its
/// request settings, and client `radiology` with `quota`.
fn config(upstream: &str, settings: &str, quota: &str) -> String {
    format!(
        "endpoints:\n  - name: chest\n    requestSettings: {settings}\n    deployments: {{blue: {{workers: [\"{upstream}\"]}}}}\n\
         clients:\n  - name: radiology\n    endpoints: [chest]\n    keys: {{primarySha256: \"{}\"}}\n    quota: {quota}\n",
        hash(KEY)
    )
}

/// Writes `head` (and nothing more) on a new connection to `addr`, then
/// reads until the gateway closes it or `limit` passes; returns what was
/// read and when the connection ended (`None`: still open at `limit`).
async fn send_and_wait(
    addr: std::net::SocketAddr,
    head: &str,
    limit: Duration,
) -> (String, Option<Duration>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at((t + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(t.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// A client that sends half a request head is closed once the header-read
/// timeout passes, on the scoring listener and on the admin one (without
/// the limit the connection stays open as long as the client likes).
#[tokio::test]
async fn a_half_sent_header_is_closed_within_the_header_read_timeout() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway_with(&config(&up.authority(), "{}", "{}"), |c| {
        c.header_read_timeout_ms = 1000;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = gw.gw.as_ref().unwrap().admin_addr.unwrap();
    let half = "POST /endpoints/chest/score HTTP/1.1\r\nHost: localhost\r\nContent-Le";
    for addr in [gw.addr(), admin] {
        let (_, closed) = send_and_wait(addr, half, Duration::from_secs(8)).await;
        let closed = closed.unwrap_or_else(|| panic!("{addr}: a half header kept open 8 s"));
        assert!(
            closed < Duration::from_secs(3),
            "{addr}: closed after {closed:?}"
        );
        eprintln!("{addr}: a half header closed after {closed:?}");
    }
    // A whole request on a fresh connection is served as ever.
    let r = post_with_key(&gw.url("/endpoints/chest/score"), KEY, text_body()).await;
    assert_eq!(r.status(), 200);
}

/// At the connection cap the gateway accepts nothing more until a
/// connection closes: with a cap of one, an idle connection holds a request
/// off until the header-read timeout closes it.
#[tokio::test]
async fn the_connection_cap_holds_new_connections_until_one_closes() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway_with(&config(&up.authority(), "{}", "{}"), |c| {
        c.header_read_timeout_ms = 1000;
        c.max_connections = 1;
    })
    .await;
    let idle = TcpStream::connect(gw.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = post_with_key(&gw.url("/endpoints/chest/score"), KEY, text_body()).await;
    assert_eq!(r.status(), 200);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "served after {waited:?} beside an idle connection at a cap of one"
    );
    drop(idle);
}

/// Draining (after SIGTERM, for `--shutdown-delay-seconds`): still serving,
/// `/readyz` 503, and each HTTP/1.1 answer closes its connection so that
/// clients move to another replica.
#[tokio::test]
async fn draining_serves_on_and_closes_each_connection() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway_with(&config(&up.authority(), "{}", "{}"), |_| {}).await;
    let url = gw.url("/endpoints/chest/score");
    let r = post_with_key(&url, KEY, text_body()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("connection").is_none());
    gw.gw
        .as_ref()
        .unwrap()
        .state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let r = post_with_key(&url, KEY, text_body()).await;
    assert_eq!(r.status(), 200, "a draining gateway still serves");
    assert_eq!(r.headers()["connection"], "close");
    let ready = reqwest::get(gw.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

/// A client over its requests-per-minute quota is refused before its body
/// is read: a 24 MB declared body that never comes is answered 429 at once
/// (not 408 once the gateway has waited for the body).
#[tokio::test]
async fn a_throttled_client_is_refused_before_its_body_is_read() {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = gateway(&config(
        &up.authority(),
        "{requestTimeoutMs: 5000}",
        "{requestsPerMinute: 1}",
    ))
    .await;
    let r = post_with_key(&gw.url("/endpoints/chest/score"), KEY, text_body()).await;
    assert_eq!(r.status(), 200);
    let head = format!(
        "POST /endpoints/chest/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 24000000\r\n\r\n"
    );
    let t = Instant::now();
    let (answer, _) = send_and_wait(gw.addr(), &head, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count(), 1);
}

/// Bodies held across connections stay within the gateway's budget: while
/// one connection holds most of it, another request waits for room, unread,
/// and is answered 503 with `Retry-After` when its deadline passes.
#[tokio::test]
async fn bodies_beyond_the_global_budget_wait_then_get_503() {
    let up = upstream("blue", Behaviour::Ok).await;
    // `hold`, with a long deadline, holds most of the budget while a
    // request to `chest` waits for room.
    let yaml = config(&up.authority(), "{requestTimeoutMs: 1500}", "{}").replace(
        "clients:",
        &format!(
            "  - name: hold\n    requestSettings: {{requestTimeoutMs: 10000}}\n    deployments: {{blue: {{workers: [\"{}\"]}}}}\nclients:",
            up.authority()
        ),
    ).replace("endpoints: [chest]", "endpoints: [chest, hold]");
    let gw = gateway_with(&yaml, |c| c.max_buffered_bytes = 1 << 20).await;
    // 800 kB declared, 1 kB sent: the share is taken before the body.
    let head = format!(
        "POST /endpoints/hold/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Length: 800000\r\n\r\n{}",
        " ".repeat(1000)
    );
    let addr = gw.addr();
    let holder =
        tokio::spawn(async move { send_and_wait(addr, &head, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = metric(&gw.metrics().await, "medembed_gateway_body_bytes_held", &[]);
    assert!(held >= 800_000.0, "{held}");
    let t = Instant::now();
    let r = client()
        .post(gw.url("/endpoints/chest/score"))
        .bearer_auth(KEY)
        .body(vec![b' '; 500_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "unavailable");
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    holder.abort();
    let m = gw.metrics().await;
    assert_eq!(rejections(&m, &["reason=\"body_budget\""]), 1.0);
    // Room again: a request goes through.
    let r = post_with_key(&gw.url("/endpoints/chest/score"), KEY, text_body()).await;
    assert_eq!(r.status(), 200);
}

/// A gateway process on `yaml`, killed when dropped.
struct GatewayProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gateway_process(yaml: &str) -> GatewayProcess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write_config(&path, yaml);
    let port = free_port();
    let child = Command::new(repo::bin("medembed-gateway"))
        .arg(format!("--config-file={}", path.display()))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--audit-log=off")
        .arg("--log-format=text")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    until_ready(port, Duration::from_secs(30), "gateway").await;
    GatewayProcess {
        child,
        port,
        _dir: dir,
    }
}

/// Peak resident memory of process `pid` (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The amplification body: one row of data and an `index` of 12 million
/// zeros (24 MB).
fn amplification_body() -> Bytes {
    let mut b = br#"{"input_data":{"columns":["image","text"],"index":["#.to_vec();
    b.extend_from_slice(&b"0,".repeat(12_000_000));
    b.extend_from_slice(br#"0],"data":[["","x-ray chest"]]}}"#);
    Bytes::from(b)
}

/// Three 24 MB bodies whose `index` has 12 million entries, at once,
/// through a real gateway to a real worker, and straight to the worker:
/// every one is refused 400 `too_many_rows` and both processes stay under
/// 150 MiB of peak resident memory (a generic JSON tree of one such body
/// took hundreds of MB).
#[tokio::test]
async fn huge_index_bodies_are_refused_within_bounded_memory() {
    let _heavy = exclusive().await;
    let worker = start_worker().await;
    let gw = gateway_process(&config(
        &worker.authority(),
        "{requestTimeoutMs: 60000}",
        "{}",
    ))
    .await;
    let body = amplification_body();
    assert!(body.len() > 24_000_000);
    let (gw_before, worker_before) = (peak_rss_mib(gw.child.id()), peak_rss_mib(worker.child.id()));
    let urls = [
        format!("http://127.0.0.1:{}/endpoints/chest/score", gw.port),
        format!("http://{}/score", worker.authority()),
    ];
    for url in &urls {
        let t = Instant::now();
        let sends = (0..3).map(|_| {
            client()
                .post(url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        });
        for r in futures::future::join_all(sends).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 400, "{url}");
            let text = r.text().await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "too_many_rows", "{url}: {text}");
            assert!(!text.contains("x-ray"), "{text}");
        }
        eprintln!("{url}: three 24 MB bodies refused in {:?}", t.elapsed());
    }
    let (gw_peak, worker_peak) = (peak_rss_mib(gw.child.id()), peak_rss_mib(worker.child.id()));
    eprintln!(
        "peak RSS (VmHWM): gateway {gw_before:.1} MiB before, {gw_peak:.1} MiB after; \
         worker {worker_before:.1} MiB before, {worker_peak:.1} MiB after"
    );
    assert!(gw_peak < 150.0, "gateway peak RSS {gw_peak:.1} MiB");
    assert!(worker_peak < 150.0, "worker peak RSS {worker_peak:.1} MiB");
}
