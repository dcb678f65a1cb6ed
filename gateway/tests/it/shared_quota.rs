//! The shared quota store against a real Redis (Debian's `redis-server`,
//! started here; scripts/test.sh installs it): exact per-minute limits across
//! two gateway processes, a password (in the URL, from a file, from the
//! environment, wrong), TLS with a private CA, Redis stopped and restarted,
//! and a Redis that never answers. Whenever Redis cannot be used the gateway
//! admits the request and counts `quota_store_error`; the password never
//! shows in its logs or metrics.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use medembed_testsupport::redis::RedisServer;

const KEY: &str = "shared-quota-key-00000000000000000001";
const PROBE_KEY: &str = "shared-quota-key-00000000000000000002";
const PASSWORD: &str = "pw-4f1c9e0b7a2d-redis";
const WRONG_PASSWORD: &str = "pw-0000wrong0000-redis";

/// A gateway process whose standard error (its log) is kept.
struct GatewayProcess {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewayProcess {
    /// Starts it on `config` with its quotas in the Redis at `redis_url`
    /// (`--redis-url`), further `args` and `env`, and waits until it is
    /// ready.
    async fn start(
        config: &Path,
        redis_url: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_medembed-gateway"))
            .args(["--config-file", config.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--audit-log", "off", "--scrape-interval-ms", "0"])
            .args(["--log-format", "json"])
            .args(redis_url.iter().flat_map(|url| ["--redis-url", url]))
            .args(args)
            .envs(env.iter().copied())
            .env("MEDEMBED_LOG", "info,medembed_gateway=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                // Passed on, so a failing test shows the gateway's log.
                eprint!("{}", String::from_utf8_lossy(&buf[..n]));
            }
        });
        until_ready(port, Duration::from_secs(20), "gateway").await;
        GatewayProcess {
            child,
            port,
            log,
            reader: Some(reader),
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops it and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let log = self.log.lock().unwrap();
        String::from_utf8_lossy(&log).into_owned()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One endpoint on `up`; client `radiology` (KEY) with `quota`, client
/// `probe` (PROBE_KEY) with a large request quota.
fn config_yaml(up: &Upstream, quota: &str) -> String {
    chest_config(
        &up.authority(),
        &[
            ("radiology", KEY, &format!("quota: {quota}")),
            ("probe", PROBE_KEY, "quota: {requestsPerMinute: 100000}"),
        ],
    )
}

/// A gateway in this process on [`config_yaml`] with `quota`, its quotas in
/// the Redis at `url`, with `tweak` applied to its configuration.
async fn in_process(
    up: &Upstream,
    quota: &str,
    url: String,
    tweak: impl FnOnce(&mut medembed_gateway::GatewayConfig),
) -> TestGateway {
    gateway_with(&config_yaml(up, quota), |cfg| {
        cfg.redis_url = Some(url.into());
        tweak(cfg);
    })
    .await
}

fn write_yaml(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.yaml");
    write_config(&path, yaml);
    path
}

/// The URL of endpoint `chest` on the gateway listening on `port`.
fn chest(port: u16) -> String {
    format!("http://127.0.0.1:{port}/endpoints/chest/score")
}

async fn score(port: u16, key: &str) -> u16 {
    post_with_key(&chest(port), key, text_body())
        .await
        .status()
        .as_u16()
}

/// (admitted, refused with 429) among `statuses`; any other fails.
fn tally(statuses: impl IntoIterator<Item = u16>) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for s in statuses {
        match s {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, limited)
}

/// Sends `n` requests one after the other, alternating over `ports`;
/// returns (admitted, refused with 429).
async fn burst(ports: &[u16], key: &str, n: usize) -> (usize, usize) {
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(score(ports[i % ports.len()], key).await);
    }
    tally(statuses)
}

/// `n` requests while Redis cannot decide: each is admitted, none waits
/// `limit` or longer.
async fn fails_open(port: u16, n: usize, limit: Duration) {
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(score(port, KEY).await, 200, "fails open");
        assert!(t.elapsed() < limit, "{:?}", t.elapsed());
    }
}

/// Waits until Redis decides again: a probe request (`PROBE_KEY`, sent
/// every `every`) that counts no store error; fails after `limit` with
/// `what`.
async fn until_redis_decides(gw: &TestGateway, limit: Duration, every: Duration, what: &str) {
    let port = gw.addr().port();
    let t = Instant::now();
    loop {
        let before = store_errors(&gw.metrics().await, "probe");
        assert_eq!(score(port, PROBE_KEY).await, 200);
        if store_errors(&gw.metrics().await, "probe") == before {
            return;
        }
        assert!(t.elapsed() < limit, "{what}");
        tokio::time::sleep(every).await;
    }
}

fn store_errors(metrics: &str, client: &str) -> f64 {
    let client = format!("client=\"{client}\"");
    rejections(metrics, &["reason=\"quota_store_error\"", &client])
}

/// An upstream and, in a fresh directory, a gateway configuration of it
/// ([`config_yaml`] with `quota`): (upstream, directory, configuration file).
async fn configured(quota: &str) -> (Upstream, tempfile::TempDir, PathBuf) {
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_yaml(dir.path(), &config_yaml(&up, quota));
    (up, dir, path)
}

/// Two gateway processes sharing one Redis, on [`config_yaml`] with
/// `quota`.
struct TwoGateways {
    a: GatewayProcess,
    b: GatewayProcess,
    up: Upstream,
    _dir: tempfile::TempDir,
    _redis: RedisServer,
}

async fn two_gateways(quota: &str) -> TwoGateways {
    let redis = RedisServer::start(&[]);
    let (up, dir, path) = configured(quota).await;
    let url = redis.url();
    TwoGateways {
        a: GatewayProcess::start(&path, Some(&url), &[], &[]).await,
        b: GatewayProcess::start(&path, Some(&url), &[], &[]).await,
        up,
        _dir: dir,
        _redis: redis,
    }
}

#[tokio::test]
async fn exact_limits_across_two_gateway_processes() {
    let _heavy = crate::common::exclusive().await;
    let gateways = two_gateways("{requestsPerMinute: 10, imagesPerMinute: 25}").await;
    let (a, b) = (&gateways.a, &gateways.b);
    let (pa, pb) = (a.port, b.port);

    // 30 requests, alternating, 8 at a time: exactly 10 pass, on either side.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let port = if i % 2 == 0 { pa } else { pb };
        tasks.push(tokio::spawn(async move { score(port, KEY).await }));
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    // 10 per minute is one every 6 s: the run takes well under that.
    assert_eq!(tally(statuses), (10, 20));
    assert_eq!(gateways.up.count(), 10);
    assert_eq!(store_errors(&a.metrics().await, "radiology"), 0.0);
    assert_eq!(store_errors(&b.metrics().await, "radiology"), 0.0);
}

#[tokio::test]
async fn exact_image_limits_across_two_gateway_processes() {
    let _heavy = crate::common::exclusive().await;
    let gateways = two_gateways("{imagesPerMinute: 12}").await;
    let (a, b) = (&gateways.a, &gateways.b);
    let mut images_ok = 0;
    for i in 0..12 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        let r = post_with_key(&chest(port), KEY, image_body(3)).await;
        if r.status() == 200 {
            images_ok += 3;
        } else {
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["ratelimit-policy"], "\"images\";q=12;w=60");
        }
    }
    assert_eq!(images_ok, 12);
}

/// A password in the URL works; a wrong one fails open and is counted; the
/// password (right or wrong) shows neither in the log nor in the metrics.
#[tokio::test]
async fn password_in_the_url_and_a_wrong_one() {
    let _heavy = crate::common::exclusive().await;
    let redis = RedisServer::start(&["--requirepass", PASSWORD]);
    let (_up, _dir, path) = configured("{requestsPerMinute: 3}").await;
    let good = format!("redis://default:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let bad = format!(
        "redis://default:{WRONG_PASSWORD}@127.0.0.1:{}/0",
        redis.port
    );
    let a = GatewayProcess::start(&path, Some(&good), &[], &[]).await;
    // The URL from the environment, as the chart passes it from a Secret.
    let b = GatewayProcess::start(&path, None, &[], &[("MEDEMBED_GATEWAY_REDIS_URL", &bad)]).await;

    assert_eq!(burst(&[a.port], KEY, 5).await, (3, 2));
    // Refused credentials: every request admitted, each one counted.
    assert_eq!(burst(&[b.port], KEY, 5).await, (5, 0));
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(store_errors(&ma, "radiology"), 0.0);
    assert_eq!(store_errors(&mb, "radiology"), 5.0);

    let (la, lb) = (a.stop(), b.stop());
    assert!(
        lb.contains("Redis refused the credentials"),
        "the log names the cause"
    );
    for text in [&la, &lb, &ma, &mb] {
        assert!(!text.contains(PASSWORD) && !text.contains(WRONG_PASSWORD));
        assert!(!text.contains("default:"), "no URL with its user");
    }
}

/// The password from a file or from the environment, the URL without one;
/// both gateways share one limit.
#[tokio::test]
async fn password_from_a_file_or_the_environment() {
    let _heavy = crate::common::exclusive().await;
    let redis = RedisServer::start(&["--requirepass", PASSWORD]);
    let (_up, dir, path) = configured("{requestsPerMinute: 4}").await;
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let url = redis.url();
    let from_file = ["--redis-password-file", pw_file.to_str().unwrap()];
    let a = GatewayProcess::start(&path, Some(&url), &from_file, &[]).await;
    let from_env = [("MEDEMBED_GATEWAY_REDIS_PASSWORD", PASSWORD)];
    let b = GatewayProcess::start(&path, Some(&url), &[], &from_env).await;
    assert_eq!(burst(&[a.port, b.port], KEY, 8).await, (4, 4));
    assert_eq!(store_errors(&a.metrics().await, "radiology"), 0.0);
    assert_eq!(store_errors(&b.metrics().await, "radiology"), 0.0);
    for log in [a.stop(), b.stop()] {
        assert!(!log.contains(PASSWORD));
    }
}

/// A gateway in this process on the Redis at `url` (300 ms timeout), its
/// client's 3 requests a minute spent (the fourth refused).
async fn quota_spent(url: String) -> (Upstream, TestGateway) {
    let up = upstream("blue", Behaviour::Ok).await;
    let gw = in_process(&up, "{requestsPerMinute: 3}", url, |cfg| {
        cfg.redis_timeout_ms = 300;
    })
    .await;
    assert_eq!(burst(&[gw.addr().port()], KEY, 4).await, (3, 1));
    (up, gw)
}

/// Redis stopped: requests are admitted and counted, none waits long.
/// Restarted on the same port: the connection manager reconnects and limits
/// are exact again.
#[tokio::test]
async fn redis_stopped_then_restarted() {
    let mut redis = RedisServer::start(&[]);
    let (_up, gw) = quota_spent(redis.url()).await;
    let port = gw.addr().port();

    redis.stop();
    fails_open(port, 5, Duration::from_secs(2)).await;
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 5.0);

    // Back, empty (no persistence): wait until a probe goes through Redis.
    redis.restart();
    let every = Duration::from_millis(100);
    until_redis_decides(
        &gw,
        Duration::from_secs(10),
        every,
        "no reconnection to Redis",
    )
    .await;
    assert_eq!(burst(&[port], KEY, 4).await, (3, 1));
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 5.0);
}

/// Refused credentials are not retried by the connection manager; the
/// connection is rebuilt instead (at most every 5 s), reading the password
/// file again, so a rotated Secret is picked up without a restart.
#[tokio::test]
async fn a_rotated_password_file_is_picked_up() {
    let redis = RedisServer::start(&["--requirepass", PASSWORD]);
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, WRONG_PASSWORD).unwrap();
    let file = pw_file.clone();
    let gw = in_process(&up, "{requestsPerMinute: 3}", redis.url(), |cfg| {
        cfg.redis_password_file = Some(file);
    })
    .await;
    let port = gw.addr().port();
    assert_eq!(burst(&[port], KEY, 4).await, (4, 0), "fails open");
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 4.0);

    // The Secret is corrected (a mounted Secret is replaced atomically).
    let tmp = dir.path().join("redis-password.new");
    std::fs::write(&tmp, PASSWORD).unwrap();
    std::fs::rename(&tmp, &pw_file).unwrap();
    let every = Duration::from_millis(250);
    let what = "the new password was not used";
    until_redis_decides(&gw, Duration::from_secs(15), every, what).await;
    assert_eq!(burst(&[port], KEY, 4).await, (3, 1));
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 4.0);
}

/// A frozen Redis (SIGSTOP: its connections stay open, nothing answers)
/// delays each request by at most the timeout; the requests are admitted and
/// counted. Once it resumes, Redis decides again.
#[tokio::test]
async fn a_frozen_redis_costs_at_most_the_timeout() {
    let redis = RedisServer::start(&[]);
    let (_up, gw) = quota_spent(redis.url()).await;
    let port = gw.addr().port();

    redis.signal("STOP");
    fails_open(port, 3, Duration::from_millis(1500)).await;
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 3.0);

    redis.signal("CONT");
    let every = Duration::from_millis(100);
    until_redis_decides(&gw, Duration::from_secs(15), every, "Redis not used again").await;
    // The quota is still spent.
    assert_eq!(score(port, KEY).await, 429);
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 3.0);
}

/// A Redis that accepts connections and never answers delays each request
/// by at most the timeout; the requests are admitted and counted.
#[tokio::test]
async fn a_silent_redis_costs_at_most_the_timeout() {
    // Never accepted by the program: the kernel completes each connection
    // (into the listen backlog) and nothing ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis_port = silent.local_addr().unwrap().port();
    let up = upstream("blue", Behaviour::Ok).await;
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    let gw = in_process(&up, "{requestsPerMinute: 1}", url, |cfg| {
        cfg.redis_timeout_ms = 250;
    })
    .await;
    fails_open(gw.addr().port(), 3, Duration::from_millis(1500)).await;
    assert_eq!(store_errors(&gw.metrics().await, "radiology"), 3.0);
    drop(silent);
}

/// `rediss://` to a redis-server whose certificate a private CA signed: with
/// that CA trusted the limits are exact; trusting only the system's CAs the
/// handshake fails, and the gateway fails open and says why.
#[tokio::test]
async fn tls_with_a_private_ca() {
    let _heavy = crate::common::exclusive().await;
    let (_up, dir, path) = configured("{requestsPerMinute: 3}").await;
    let (ca, cert, key) = write_test_pki(dir.path());
    let redis = RedisServer::start_tls(&cert, &key, &ca, &["--requirepass", PASSWORD]);
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, PASSWORD).unwrap();
    let pw_file = pw_file.to_str().unwrap();
    let trusted = [
        "--redis-password-file",
        pw_file,
        "--redis-ca-file",
        ca.to_str().unwrap(),
    ];

    let url = format!("rediss://localhost:{}/0", redis.port);
    let a = GatewayProcess::start(&path, Some(&url), &trusted, &[]).await;
    // The certificate names 127.0.0.1 too.
    let url_ip = format!("rediss://127.0.0.1:{}/0", redis.port);
    let b = GatewayProcess::start(&path, Some(&url_ip), &trusted, &[]).await;
    // No CA given: only the system's are trusted.
    let system = ["--redis-password-file", pw_file];
    let c = GatewayProcess::start(&path, Some(&url), &system, &[]).await;

    assert_eq!(burst(&[a.port, b.port], KEY, 5).await, (3, 2));
    assert_eq!(store_errors(&a.metrics().await, "radiology"), 0.0);
    assert_eq!(store_errors(&b.metrics().await, "radiology"), 0.0);

    assert_eq!(burst(&[c.port], PROBE_KEY, 2).await, (2, 0));
    assert_eq!(store_errors(&c.metrics().await, "probe"), 2.0);
    let lc = c.stop();
    assert!(
        lc.contains("invalid peer certificate"),
        "the log says the certificate was not trusted"
    );
    for log in [a.stop(), b.stop(), lc] {
        assert!(!log.contains(PASSWORD));
    }
}
