//! Shared set-up of the worker's integration tests: the Python environment
//! (ONNX Runtime's library and the independent reference), the TEST MODEL
//! (random weights, MedImageInsight's exact I/O: its embeddings mean nothing),
//! and an in-process worker on port 0.

#![allow(dead_code, missing_docs)]

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use medembed_testsupport::repo;
use medembed_worker::{RunningWorker, WorkerConfig};

pub use medembed_testsupport::metrics::metric;

/// Held for the whole run by every test that serves the real architecture's
/// export: on a small machine their time limits assume the machine is
/// theirs. Light tests run beside them.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other heavy test runs; holds the others off until the
/// guard drops.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// A worker's configuration on the TEST MODEL (`repo::setup`).
pub fn config() -> WorkerConfig {
    let setup = repo::setup();
    let mut cfg = WorkerConfig::for_model(&setup.model_dir);
    cfg.ort_library = Some(setup.ort_library.clone());
    cfg.shutdown_grace_seconds = 10;
    cfg
}

pub async fn start(cfg: WorkerConfig) -> RunningWorker {
    let mut w = medembed_worker::start(cfg).await.expect("worker starts");
    w.wait_ready(Duration::from_secs(120))
        .await
        .expect("model loads");
    w
}

/// Checks that the body budget is whole again (`total` permits: nothing
/// leaked), then shuts the worker down.
pub async fn finish_with_budget(w: RunningWorker, total: usize) {
    assert_eq!(
        w.state.body_budget.available_permits(),
        total,
        "budget leaked"
    );
    w.shutdown().await;
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub fn url(w: &RunningWorker, path: &str) -> String {
    format!("http://{}{}", w.addr, path)
}

/// The worker's `/metrics` text.
pub async fn metrics_text(w: &RunningWorker) -> String {
    reqwest::get(url(w, "/metrics"))
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics body")
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs the independent Python reference with `args`, feeding `stdin`.
pub fn reference(args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(&repo::setup().python)
        .arg(repo::root().join("tests/reference/reference.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("reference starts");
    {
        let mut si = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("reference runs");
    assert!(out.status.success(), "reference {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("reference prints JSON")
}

pub fn vectors(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array of vectors")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector counts differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Checks that `v` is the live response shape for `rows` rows (a list with
/// one object per row, each vector a list of one vector) and gathers it into
/// the documented shape (one list of vectors per field, `scaling_factor`
/// once), which is easier to compare.
pub fn by_field(v: &serde_json::Value, rows: usize) -> serde_json::Value {
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("the answer is not a list of rows: {v}"));
    assert_eq!(list.len(), rows, "one object per row");
    let mut out = serde_json::Map::new();
    for (i, row) in list.iter().enumerate() {
        let row = row
            .as_object()
            .unwrap_or_else(|| panic!("row {i} is not an object"));
        for (k, val) in row {
            match k.as_str() {
                "image_features" | "text_features" => {
                    let one = val.as_array().expect("a list of vectors");
                    assert_eq!(one.len(), 1, "row {i}: {k} holds one vector");
                    out.entry(k.clone())
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                        .as_array_mut()
                        .expect("array")
                        .push(one[0].clone());
                }
                "scaling_factor" => {
                    if let Some(prev) = out.get(k) {
                        assert_eq!(prev, val, "row {i}: the same scaling_factor in every row");
                    }
                    out.insert(k.clone(), val.clone());
                }
                other => panic!("row {i}: unexpected field {other}"),
            }
        }
    }
    serde_json::Value::Object(out)
}
