//! `medembed-demo`: the whole system on this one machine. A real Kubernetes
//! control plane, the Helm chart installed on it (the operator with two
//! replicas, the gateway), the sample specs applied (an endpoint in key mode,
//! a deployment of two workers of the TEST MODEL, a client), and the API
//! brief's example request answered through the gateway. It prints the answer
//! and where to look, then keeps everything up until Ctrl-C (or exits at once
//! with `--exit`).
//!
//! The TEST MODEL has MedImageInsight's exact inputs and outputs and random
//! weights: its embeddings mean nothing.

use std::io::Write;
use std::time::Instant;

use medembed_e2e::{abbreviate, post, setup, vectors, BRIEF_IMAGE_AND_TEXT, CLIENT_KEY};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let exit_at_once = std::env::args().any(|a| a == "--exit");
    let started = Instant::now();
    let say = |msg: &str| {
        eprintln!("[demo {:>5.1}s] {msg}", started.elapsed().as_secs_f64());
    };
    say("starting a Kubernetes control plane and a node agent with two 2-GPU nodes");
    let env = setup("demo").await;
    say("helm install medembed charts/medembed");
    env.install(&[]).await;
    say("kubectl apply: EmbeddingEndpoint chest, EmbeddingDeployment blue (TEST MODEL), EmbeddingClient radiology");
    let sample = env.apply_samples().await;
    say("POST the API brief's example request through the gateway");
    let (status, answer) = post(&sample.url, Some(&sample.key), BRIEF_IMAGE_AND_TEXT).await;
    if status != 200 {
        eprintln!("the gateway answered {status}: {answer}");
        env.teardown().await;
        std::process::exit(1);
    }
    // The live shape: a list with one object per request row.
    let row = &answer[0];
    let images = vectors(&row["image_features"]);
    let texts = vectors(&row["text_features"]);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nPOST {} -> {status}\n{}\n  one object per request row ({} row), as the managed endpoint answers;\n  row 0: image_features {} x {}-d, text_features {} x {}-d, scaling_factor {}\n  (TEST MODEL: random weights, the numbers mean nothing)\n",
        sample.url,
        abbreviate(&answer),
        answer.as_array().map_or(0, Vec::len),
        images.len(),
        images.first().map_or(0, Vec::len),
        texts.len(),
        texts.first().map_or(0, Vec::len),
        row["scaling_factor"],
    );
    let gw = sample
        .url
        .split('/')
        .nth(2)
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let _ = writeln!(
        out,
        "Where to look next:\n  kubectl --kubeconfig {kc} get embeddingendpoints,embeddingdeployments,pods -A   (any kubectl)\n  curl -s http://{gw}:9090/metrics | grep medembed_gateway_requests_total   (gateway metrics)\n  curl -s -H 'Authorization: Bearer {CLIENT_KEY}' -H 'content-type: application/json' \\\n       -d @tests/e2e/tests/fixtures/brief_image_and_text.json {url}\n  process logs (operator, gateway, workers): {logs}",
        kc = env.cp.kubeconfig().display(),
        url = sample.url,
        logs = env
            .agent
            .processes(None)
            .first()
            .and_then(|p| p.log.parent().and_then(|d| d.parent()).and_then(|d| d.parent()))
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
    drop(out);
    if !exit_at_once {
        say("up; Ctrl-C stops everything");
        let _ = tokio::signal::ctrl_c().await;
    }
    say("stopping");
    env.teardown().await;
}
