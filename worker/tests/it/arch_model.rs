//! The worker serves an export of MedImageInsight's REAL ARCHITECTURE (DaViT
//! image tower, bidirectional text transformer; reduced depth and width, random
//! weights: its embeddings mean nothing), made by `scripts/export-model.sh`
//! from the `medimageinsights` package's own model code, fp32 and fp16.
//!
//! The export checked torch against ONNX Runtime and saved torch's embeddings
//! of a 480x480 image and of some texts; here the real worker loads the export
//! and its answers over HTTP must agree with torch's (cosine at least 0.9999).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::common::*;
use medembed_testsupport::repo;
use serde_json::{json, Value};

const MIN_COSINE: f64 = 0.9999;

/// The cached reduced export of `dtype` (built on first use: the export
/// environment holds torch, so the first run downloads it).
fn reduced_model(dtype: &str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let script = repo::root().join("scripts/arch-model.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--reduced", "--dtype", dtype])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("json")
}

/// The cosine of the angle between `a` and `b`, summed in f64.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

async fn serves_the_export(dtype: &str) {
    let dir = reduced_model(dtype);
    let report = read_json(&dir.join("export-report.json"));
    let check = &report["check"];
    eprintln!("{dtype} export check: {check}");
    assert_eq!(report["reduced"], true);
    assert_eq!(report["dtype"], dtype);
    for tower in ["image", "text"] {
        let agree = check[format!("{tower}_min_cosine")]
            .as_f64()
            .expect("cosine");
        let distinct = check[format!("{tower}_distinct_inputs_max_cosine")]
            .as_f64()
            .expect("cosine");
        assert!(
            agree >= MIN_COSINE,
            "{tower}: torch vs ONNX Runtime {agree}"
        );
        // Different inputs must give clearly different embeddings, or the
        // agreement above would prove nothing.
        assert!(
            distinct < 0.99,
            "{tower}: distinct inputs agree to {distinct}"
        );
    }
    assert!(report["gflops_per_image"].as_f64().unwrap_or(0.0) > 0.0);

    let reference = read_json(&dir.join("export-reference.json"));
    let png = std::fs::read(dir.join("export-reference.png")).expect("reference image");
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("text").to_string())
        .collect();
    let want_texts = vectors(&reference["text_embeddings"]);
    let want_image = vectors(&json!([reference["image_embedding"]]));

    let mut cfg = config();
    cfg.model_dir = dir.clone();
    let w = start(cfg).await;
    let c = client();
    let image = b64(&png);
    // Row 0: the image and the first text; then texts only (an empty text
    // cell means "no text", so the reference's empty string is not sent).
    let mut rows = vec![json!([image, texts[0]])];
    let sent: Vec<usize> = (1..texts.len()).filter(|&i| !texts[i].is_empty()).collect();
    rows.extend(sent.iter().map(|&i| json!(["", texts[i]])));
    let body = json!({
        "input_data": {"columns": ["image", "text"], "index": (0..rows.len()).collect::<Vec<_>>(), "data": rows},
        "params": {"get_scaling_factor": true}
    });
    let resp = c
        .post(url(&w, "/score"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("json answer");
    let v = by_field(&v, 1 + sent.len());
    let got_image = vectors(&v["image_features"]);
    let got_texts = vectors(&v["text_features"]);
    assert_eq!(got_image.len(), 1);
    assert_eq!(got_texts.len(), 1 + sent.len());
    assert_eq!(got_image[0].len(), 1024);

    let c_image = cosine(&got_image[0], &want_image[0]);
    eprintln!(
        "{dtype}: cosine(worker, torch) image {c_image:.9} (1 - cos = {:.1e})",
        1.0 - c_image
    );
    assert!(c_image >= MIN_COSINE, "image: {c_image}");
    for (k, &i) in std::iter::once(&0).chain(sent.iter()).enumerate() {
        let c_text = cosine(&got_texts[k], &want_texts[i]);
        eprintln!(
            "{dtype}: cosine(worker, torch) text {i} {c_text:.9} (1 - cos = {:.1e})",
            1.0 - c_text
        );
        assert!(c_text >= MIN_COSINE, "text {i}: {c_text}");
    }
    let scale = v["scaling_factor"].as_f64().expect("scaling_factor");
    let want_scale = reference["logit_scale"].as_f64().expect("logit_scale");
    assert!((scale - want_scale).abs() < 1e-5, "{scale} vs {want_scale}");
    // A random-weights export carries the managed service's documented value,
    // unrounded in fp16 exports too.
    assert!((scale - 4.5134).abs() < 1e-5, "scaling_factor {scale}");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_the_reduced_architecture_export_fp32() {
    let _heavy = crate::common::exclusive().await;
    serves_the_export("fp32").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_the_reduced_architecture_export_fp16() {
    let _heavy = crate::common::exclusive().await;
    serves_the_export("fp16").await;
}
