//! Shared set-up of the gateway's integration tests: small in-process HTTP
//! upstreams that answer, stall, fail or drop connections on purpose, a
//! gateway started in-process on a YAML file, and keys.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use medembed_gateway::{GatewayConfig, RunningGateway};

/// How a fake upstream behaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a small JSON body naming the upstream.
    Ok,
    /// Waits, then 200.
    Slow(Duration),
    /// Answers this status (with a JSON error body).
    Status(u16),
    /// Reads the request, then closes the connection without answering.
    Drop,
}

/// What a fake upstream saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    /// Requests whose handler was dropped before it answered (the client,
    /// i.e. the gateway, went away).
    pub cancelled: AtomicUsize,
    pub completed: AtomicUsize,
    /// Last values of interesting headers.
    pub last_timeout_ms: AtomicU64,
    pub last_traceparent: Mutex<String>,
    pub last_request_id: Mutex<String>,
    pub last_response_format: Mutex<String>,
    pub last_body_len: AtomicUsize,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    pub fn count(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

struct CancelGuard(Arc<Seen>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Starts a fake upstream named `name` on an ephemeral port.
pub async fn upstream(name: &str, behaviour: Behaviour) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let behaviour = Arc::new(Mutex::new(behaviour));
    let (s2, b2, name) = (seen.clone(), behaviour.clone(), name.to_string());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, behaviour, name) = (s2.clone(), b2.clone(), name.clone());
            tokio::spawn(async move {
                let drop_conn = Arc::new(tokio::sync::Notify::new());
                let dc = drop_conn.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, behaviour, name, dc) =
                        (seen.clone(), behaviour.clone(), name.clone(), dc.clone());
                    async move {
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        if let Some(v) = req.headers().get(medembed_api::TIMEOUT_HEADER) {
                            seen.last_timeout_ms
                                .store(v.to_str().unwrap().parse().unwrap(), Ordering::SeqCst);
                        }
                        for (name, slot) in [
                            ("traceparent", &seen.last_traceparent),
                            (medembed_api::REQUEST_ID_HEADER, &seen.last_request_id),
                            (
                                medembed_api::RESPONSE_FORMAT_HEADER,
                                &seen.last_response_format,
                            ),
                        ] {
                            if let Some(v) = req.headers().get(name) {
                                *slot.lock().unwrap() = v.to_str().unwrap().to_string();
                            }
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.last_body_len.store(body.len(), Ordering::SeqCst);
                        let mut guard = CancelGuard(seen.clone(), false);
                        let b = behaviour.lock().unwrap().clone();
                        let resp = match b {
                            Behaviour::Ok => ok_json(&name),
                            Behaviour::Slow(d) => {
                                tokio::time::sleep(d).await;
                                ok_json(&name)
                            }
                            Behaviour::Status(s) => {
                                let mut r = Response::new(Full::new(Bytes::from(format!(
                                    r#"{{"error":{{"code":"x","message":"{name} says {s}"}}}}"#
                                ))));
                                *r.status_mut() = StatusCode::from_u16(s).unwrap();
                                r
                            }
                            Behaviour::Drop => {
                                dc.notify_one();
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                        };
                        guard.1 = true;
                        seen.completed.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {},
                    _ = drop_conn.notified() => {},
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        behaviour,
        task,
    }
}

fn ok_json(name: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!(
        r#"{{"text_features":[[0.5]],"upstream":"{name}"}}"#
    ))));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A one-row text request body.
pub fn text_body() -> String {
    r#"{"input_data":{"columns":["image","text"],"index":[0],"data":[["","x-ray chest"]]},"params":{}}"#.into()
}

/// A body with `n` image rows (a tiny base64 PNG each).
pub fn image_body(n: usize) -> String {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACxjwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8AVGwJ5VDvPeYAAAAASUVORK5CYII=";
    let rows: Vec<String> = (0..n).map(|_| format!(r#"["{png}",""]"#)).collect();
    let index: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        r#"{{"input_data":{{"columns":["image","text"],"index":[{}],"data":[{}]}}}}"#,
        index.join(","),
        rows.join(",")
    )
}

pub fn hash(key: &str) -> String {
    medembed_gateway::auth::hash_key(key)
}

pub struct TestGateway {
    pub gw: Option<RunningGateway>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.as_ref().unwrap().addr, path)
    }
    pub fn addr(&self) -> SocketAddr {
        self.gw.as_ref().unwrap().addr
    }
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
    /// Rewrites the configuration and waits until the gateway has reloaded it.
    pub async fn rewrite(&self, yaml: &str) {
        write_config(&self.config_path, yaml);
        // The watcher polls every 200 ms in tests.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

pub fn write_config(path: &Path, yaml: &str) {
    // Write then rename, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts a gateway in-process on `yaml`, with `tweak` applied to its configuration.
pub async fn gateway_with(yaml: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("gateway.yaml");
    write_config(&config_path, yaml);
    let mut cfg = GatewayConfig::for_file(&config_path);
    cfg.scrape_interval_ms = 0;
    tweak(&mut cfg);
    let gw = medembed_gateway::start(cfg).await.unwrap();
    TestGateway {
        gw: Some(gw),
        dir,
        config_path,
    }
}

pub async fn gateway(yaml: &str) -> TestGateway {
    gateway_with(yaml, |_| {}).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A metric's value summed over series whose labels contain every `label`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let base = series.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|lab| series.contains(lab))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn exports(script: &Path) -> Vec<(String, String)> {
    medembed_testsupport::repo::script_exports(script).unwrap_or_else(|e| panic!("{e}"))
}

/// How to run a real worker: its binary, ONNX Runtime's library and the
/// TEST MODEL's directory (from the repository's scripts).
pub struct WorkerEnv {
    pub bin: PathBuf,
    pub ort: String,
    pub model: String,
    /// The repository's Python environment (requests, numpy, Pillow).
    pub python: String,
}

pub fn worker_env() -> &'static WorkerEnv {
    static ENV: OnceLock<WorkerEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut vars = exports(&repo.join("scripts/python-env.sh"));
        vars.extend(exports(&repo.join("scripts/test-model.sh")));
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let bin = match std::env::var_os("MEDEMBED_WORKER_BIN") {
            Some(p) => std::fs::canonicalize(&p).unwrap(),
            None => build_worker(&repo),
        };
        WorkerEnv {
            bin,
            ort: get("ORT_DYLIB_PATH"),
            model: get("MEDEMBED_TEST_MODEL"),
            python: get("MEDEMBED_PYTHON"),
        }
    })
}

fn build_worker(repo: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo)
        .args([
            "build",
            "-p",
            "medembed-worker",
            "--bin",
            "medembed-worker",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo builds the worker");
    assert!(out.status.success(), "building the worker failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "medembed-worker")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("the worker's executable path")
}

/// A real worker process serving the TEST MODEL on a free loopback port.
pub struct Worker {
    pub child: Child,
    pub port: u16,
}

impl Worker {
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// SIGTERM: the worker drains (503 for new requests) and exits.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a worker process and waits until it is ready.
pub async fn start_worker() -> Worker {
    start_worker_with(&[]).await
}

/// Starts a worker process with extra environment variables and waits until
/// it is ready.
pub async fn start_worker_with(env: &[(&str, &str)]) -> Worker {
    let e = worker_env();
    let port = free_port();
    let child = Command::new(&e.bin)
        .envs(env.iter().copied())
        .env("MEDEMBED_MODEL_DIR", &e.model)
        .env("ORT_DYLIB_PATH", &e.ort)
        .env("MEDEMBED_LISTEN", format!("127.0.0.1:{port}"))
        .env("MEDEMBED_INTRA_THREADS", "1")
        .env("MEDEMBED_DECODE_THREADS", "1")
        .env("MEDEMBED_SHUTDOWN_GRACE_SECONDS", "10")
        .env("MEDEMBED_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "worker did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Worker { child, port }
}

/// A one-row image and text request for the TEST MODEL.
pub fn mixed_body() -> String {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAAXNSR0IArs4c6QAAAARnQU1BAACxjwv8YQUAAAAJcEhZcwAAFiUAABYlAUlSJPAAAAAbSURBVBhXY/gUoPS/fhfDfwaGJe///9/J8B8AVGwJ5VDvPeYAAAAASUVORK5CYII=";
    format!(
        r#"{{"input_data":{{"columns":["image","text"],"index":[0],"data":[["{png}","x-ray chest anteroposterior Pleural Effusion"]]}},"params":{{"get_scaling_factor":"true"}}}}"#
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An ES256 JWT signed with the fixture key `test-1` (`jwt-es256.pem`,
/// whose public half is `jwks.json`).
pub fn token(sub: &str, aud: &str, iss: &str, exp: u64) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt-es256.pem")).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("test-1".into());
    let claims = serde_json::json!({"sub": sub, "aud": aud, "iss": iss, "exp": exp, "iat": now()});
    encode(&h, &claims, &key).unwrap()
}
