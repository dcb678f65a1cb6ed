//! Shared set-up of the gateway's integration tests: small in-process HTTP
//! upstreams that answer, stall, fail or drop connections on purpose, a
//! gateway started in-process on a YAML file, and keys.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use medembed_gateway::{GatewayConfig, RunningGateway};
use medembed_testsupport::repo;

pub use medembed_testsupport::metrics::metric;

/// Held for the whole run by every test that starts a control plane, worker
/// processes or gateway processes: on a small machine their time limits
/// assume the machine is theirs. Light tests run beside them.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other heavy test runs; holds the others off until the
/// guard drops.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

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

/// A configuration of endpoint `chest` (deployment `blue` on `upstream`)
/// and its clients: (name, key, the client's further settings as YAML lines,
/// e.g. `quota: {requestsPerMinute: 3}`).
pub fn chest_config(upstream: &str, clients: &[(&str, &str, &str)]) -> String {
    let mut yaml = format!(
        "endpoints:\n  - name: chest\n    deployments: {{blue: {{workers: [\"{upstream}\"]}}}}\nclients:\n"
    );
    for (name, key, settings) in clients {
        yaml.push_str(&format!(
            "  - name: {name}\n    endpoints: [chest]\n    keys: {{primarySha256: \"{}\"}}\n",
            hash(key)
        ));
        for line in settings.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    yaml
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
    /// The gateway's metrics, from the admin listener when it has one.
    pub async fn metrics(&self) -> String {
        let url = match self.gw.as_ref().unwrap().admin_addr {
            Some(a) => format!("http://{a}/metrics"),
            None => self.url("/metrics"),
        };
        reqwest::get(url).await.unwrap().text().await.unwrap()
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

/// POSTs `body` to `url` with the bearer `key`.
pub async fn post_with_key(url: &str, key: &str, body: String) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The `error.code` of an answer in the API's JSON error shape.
pub async fn error_code(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The gateway's refusals (`medembed_gateway_rejections_total`) in the
/// series whose labels contain every one of `labels`.
pub fn rejections(metrics: &str, labels: &[&str]) -> f64 {
    metric(metrics, "medembed_gateway_rejections_total", labels)
}

/// The requests a real worker at `authority` answered with 200, from its
/// metrics.
pub async fn worker_requests(authority: &str) -> f64 {
    let m = reqwest::get(format!("http://{authority}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&m, "medembed_worker_requests_total", &["status=\"200\""])
}

/// Continuous load: `clients` loops posting the image and text request
/// with `key` to `url` until [`Load::finish`]; counts answers and keeps
/// every failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
}

impl Load {
    pub fn start(url: &str, key: &'static str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, ok) = (url.to_string(), stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = post_with_key(&url, key, mixed_body()).await;
                        if r.status() == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .push((r.status().as_u16(), r.text().await.unwrap_or_default()));
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Stops the load; returns (answered with 200, the failures' status
    /// and body).
    pub async fn finish(self) -> (usize, Vec<(u16, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), failures)
    }
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

/// Starts a worker process (`repo::bin`) on the TEST MODEL, with extra
/// environment variables, and waits until it is ready.
pub async fn start_worker_with(env: &[(&str, &str)]) -> Worker {
    let w = spawn_worker(env);
    until_ready(w.port, Duration::from_secs(120), "worker").await;
    w
}

/// Starts a worker process serving HTTPS only with the PEM files `cert` and
/// `key` (reloaded every 200 ms), and waits until it is ready.
pub async fn start_tls_worker(cert: &Path, key: &Path) -> Worker {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let w = spawn_worker(&[
        ("MEDEMBED_TLS_CERT_FILE", cert),
        ("MEDEMBED_TLS_KEY_FILE", key),
        ("MEDEMBED_TLS_RELOAD_MS", "200"),
    ]);
    let t = Instant::now();
    loop {
        if let Ok(r) = insecure_client()
            .get(format!("https://127.0.0.1:{}/readyz", w.port))
            .send()
            .await
        {
            if r.status() == 200 {
                return w;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "TLS worker did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTPS client that accepts any certificate (to read a TLS worker's
/// metrics and readiness, as the kubelet probes it).
pub fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Starts a worker process without waiting for it.
pub fn spawn_worker(env: &[(&str, &str)]) -> Worker {
    let setup = repo::setup();
    let port = free_port();
    let child = Command::new(repo::bin("medembed-worker"))
        .envs(env.iter().copied())
        .env("MEDEMBED_MODEL_DIR", &setup.model_dir)
        .env("ORT_DYLIB_PATH", &setup.ort_library)
        .env("MEDEMBED_LISTEN", format!("127.0.0.1:{port}"))
        .env("MEDEMBED_INTRA_THREADS", "1")
        .env("MEDEMBED_DECODE_THREADS", "1")
        .env("MEDEMBED_SHUTDOWN_GRACE_SECONDS", "10")
        .env("MEDEMBED_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Worker { child, port }
}

/// Waits until `127.0.0.1:port` answers `/readyz` with 200; fails after
/// `limit`, naming `what`.
pub async fn until_ready(port: u16, limit: Duration, what: &str) {
    let t = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(t.elapsed() < limit, "{what} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    signed(&serde_json::json!({"sub": sub, "aud": aud, "iss": iss, "exp": exp, "iat": now()}))
}

/// `claims` as an ES256 JWT signed with the fixture key `test-1`.
pub fn signed(claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt-es256.pem")).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("test-1".into());
    encode(&h, claims, &key).unwrap()
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed,
/// written as PEM files into `dir`: (CA, certificate, key).
pub fn write_test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "medembed test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&server_key, &ca).unwrap();

    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}
