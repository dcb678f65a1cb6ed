//! Attacks on a worker, as tests: bodies declared large and never sent,
//! a pipeline that can no longer serve, and concurrent decompression bombs
//! against a real worker process whose peak memory is read from `/proc`.

#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use medembed_testsupport::repo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A one-row request with a text.
fn text_request(text: &str) -> String {
    json!({"input_data": {"columns": ["image", "text"], "index": [0], "data": [["", text]]}})
        .to_string()
}

/// Opens a connection that declares a body of `len` bytes, sends none of it,
/// and stays open.
async fn stalled(addr: std::net::SocketAddr, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /score HTTP/1.1\r\nhost: worker\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// What the worker sends on `s` before it closes it (or `limit` passes).
async fn answer_on(mut s: TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Three connections declare the largest body allowed and send nothing.
/// They used to reserve the declared length of the body budget up front, so
/// the next request waited, unread, until its 60 s deadline (408). Now the
/// budget is taken as bytes arrive (they hold none), a normal request is
/// answered at once, and the stalled bodies are refused (408) once the
/// minimum-rate grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_hold_no_budget_and_are_refused() {
    let mut cfg = config();
    cfg.body_rate_grace_ms = 1_000;
    let max = cfg.max_body_bytes;
    let w = start(cfg).await;
    let c = client();
    let total = w.state.body_budget.available_permits();

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stalled(w.addr, max).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let resp = c
        .post(url(&w, "/score"))
        .body(text_request("answered promptly"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    println!("normal request beside three stalled 32 MB bodies: {took:?}");
    assert_eq!(resp.status(), 200);
    assert!(took < Duration::from_secs(5), "{took:?}");

    for s in held {
        let (text, after) = answer_on(s, Duration::from_secs(10)).await;
        println!("stalled body answered after {after:?}");
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "a stalled body is refused with 408: {text:?}"
        );
        assert!(text.contains("\"code\":\"timeout\""), "{text}");
        assert!(text.contains("too slowly"), "{text}");
        // The rest of the body is not read: the connection is not reused.
        assert!(text.contains("connection: close"), "{text}");
        // Within the grace period (1 s) and some slack for a small machine.
        assert!(after < Duration::from_secs(5), "{after:?}");
    }

    // A body that trickles (under the minimum rate) is refused too, and
    // its share of the budget is given back.
    let mut s = stalled(w.addr, 1 << 20).await;
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if s.write_all(&[b' '; 512]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    });
    let (text, _) = answer_on(trickle.await.unwrap(), Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    let m = metrics_text(&w).await;
    assert!(metric(&m, "medembed_worker_requests_total", &["status=\"408\""]) >= 4.0);
    finish_with_budget(w, total).await;
}

/// Bodies that take the budget as they arrive can each hold part of it and
/// all wait for more: with a budget of one body (1 MiB), three bodies of
/// 900 KiB that send 600 KiB each, then the rest, would wait for each other
/// until their deadlines (408). The first body to wait while holding part of
/// the budget takes the overdraft (one body's worth) and finishes, which
/// frees room for the others: all are answered promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_holding_parts_of_a_full_budget_do_not_wait_for_each_other() {
    let mut cfg = config();
    cfg.max_body_bytes = 1 << 20;
    cfg.max_buffered_bytes = 1 << 20;
    let w = start(cfg).await;
    let total = w.state.body_budget.available_permits();
    let mut body = text_request("one of three").into_bytes();
    body.resize(900 << 10, b' ');
    let t0 = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..3u64)
        .map(|i| {
            let (addr, body) = (w.addr, body.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + Duration::from_millis(150 * i)).await;
                let mut s = TcpStream::connect(addr).await.unwrap();
                let head = format!(
                    "POST /score HTTP/1.1\r\nhost: worker\r\n{}: 15000\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    medembed_api::TIMEOUT_HEADER,
                    body.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body[..600 << 10]).await.unwrap();
                tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
                s.write_all(&body[600 << 10..]).await.unwrap();
                answer_on(s, Duration::from_secs(30)).await
            })
        })
        .collect();
    for t in tasks {
        let (text, _) = t.await.unwrap();
        let status = text.lines().next().unwrap_or_default().to_string();
        println!("{status} after {:?}", t0.elapsed());
        assert!(status.starts_with("HTTP/1.1 200"), "{text:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    finish_with_budget(w, total).await;
}

/// When the pipeline can no longer serve (here: its threads have ended),
/// `/readyz` answers 503 so the Service stops routing to the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_pipeline() {
    let w = start(config()).await;
    let c = client();
    let ready = || async { c.get(url(&w, "/readyz")).send().await.unwrap().status() };
    assert_eq!(ready().await, 200);
    let pipeline = &w.state.scorer.get().unwrap().pipeline;
    assert!(pipeline.healthy());
    pipeline.close();
    let until = Instant::now() + Duration::from_secs(10);
    while pipeline.healthy() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready().await, 503);
    w.shutdown().await;
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A flat RGB image of `side`² pixels: a few kilobytes of PNG.
fn bomb(side: u32) -> String {
    b64(&png(&DynamicImage::ImageRgb8(ImageBuffer::from_pixel(
        side,
        side,
        Rgb([90, 120, 150]),
    ))))
}

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Kills the worker process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Twelve concurrent PNGs of 4000×4000 pixels (a few KiB each, 48 MB
/// decoded) against a real worker process with eight decode threads. The
/// decoded-bytes budget (here ~105 MiB: one such image at a time) bounds the
/// peak: without it, the eight threads decode eight at once (~400 MB). The
/// peak resident set (VmHWM, reset once the model is loaded) stays under the
/// budget plus a margin, every request is answered, and an image that alone
/// needs more than the budget is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_keep_peak_memory_bounded() {
    if !std::path::Path::new("/proc/self/clear_refs").exists() {
        eprintln!("skipped: needs Linux /proc");
        return;
    }
    let _heavy = exclusive().await;
    let setup = repo::setup();
    let budget: u64 = 110_000_000;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Child(
        std::process::Command::new(repo::bin("medembed-worker"))
            .arg(format!("--model-dir={}", setup.model_dir.display()))
            .arg(format!("--ort-library={}", setup.ort_library.display()))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .args(["--decode-threads=8", "--log-format=text"])
            .arg(format!("--max-decoded-bytes={budget}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let r = c.get(format!("{base}/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < until, "the worker did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let image = bomb(4000);
    let too_big = bomb(6000);
    println!("bomb: {} base64 bytes for 4000x4000 RGB", image.len());
    let request = |img: &str| {
        json!({"input_data": {"columns": ["image", "text"], "index": [0], "data": [[img, ""]]}})
            .to_string()
    };

    // One alone needs more than the budget: 400, naming the limit.
    let resp = c
        .post(format!("{base}/score"))
        .body(request(&too_big))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_image", "{v}");

    // Peak memory from here on.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let rss_before = status_kib(pid, "VmRSS");
    let started = Instant::now();
    let body = request(&image);
    let answers = futures::future::join_all((0..12).map(|_| {
        let (c, u, b) = (c.clone(), format!("{base}/score"), body.clone());
        async move { c.post(u).body(b).send().await.map(|r| r.status().as_u16()) }
    }))
    .await;
    let took = started.elapsed();
    let hwm = status_kib(pid, "VmHWM");
    let growth_mib = hwm.saturating_sub(rss_before) / 1024;
    println!(
        "12 concurrent 4000x4000 bombs in {took:?}: RSS before {} MiB, peak {} MiB (+{growth_mib} MiB), decoded budget {} MiB",
        rss_before / 1024,
        hwm / 1024,
        budget >> 20
    );
    for a in &answers {
        assert_eq!(a.as_ref().ok(), Some(&200), "{answers:?}");
    }
    let limit_mib = (budget >> 20) + 96;
    assert!(
        growth_mib < limit_mib,
        "peak grew {growth_mib} MiB, over the budget plus margin ({limit_mib} MiB)"
    );
    drop(child);
}
