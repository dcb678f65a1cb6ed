//! The published clients of the managed MedImageInsight endpoint work
//! unchanged: `tests/clients/test_managed_clients.py` (Python: requests and
//! numpy) calls a real worker serving the TEST MODEL directly, then through
//! the gateway with a key, the way Microsoft's clients call the managed
//! endpoint, and reads the answers the way they read them. Each run also
//! checks the documented response shape on a second URL: a worker started
//! with `MEDEMBED_RESPONSE_FORMAT=Documented`, and a gateway endpoint with
//! `responseFormat: Documented`.

#![allow(clippy::unwrap_used)]

use medembed_testsupport::repo;
use tokio::process::Command;

use crate::common::*;

const KEY: &str = "clients-test-key-00000000000000000000001";

/// Two endpoints on one worker (whose own format is PerRow): the endpoint's
/// format, which the gateway sends in its header, decides the shape.
fn config(worker: &Worker) -> String {
    format!(
        r#"
endpoints:
  - name: chest
    requestSettings: {{requestTimeoutMs: 60000}}
    deployments: {{blue: {{workers: ["{w}"]}}}}
  - name: chest-documented
    responseFormat: Documented
    requestSettings: {{requestTimeoutMs: 60000}}
    deployments: {{blue: {{workers: ["{w}"]}}}}
clients:
  - name: radiology
    endpoints: [chest, chest-documented]
    keys: {{primarySha256: "{h}"}}
"#,
        w = worker.authority(),
        h = hash(KEY)
    )
}

/// Runs the Python client tests against `url` (and `documented`), with `key`
/// (asynchronously: the gateway under test runs on this test's runtime).
async fn run_clients(label: &str, url: &str, documented: &str, key: Option<&str>) {
    let script = repo::root().join("tests/clients/test_managed_clients.py");
    let mut cmd = Command::new(&repo::setup().python);
    cmd.arg(&script)
        .env("MEDEMBED_SCORE_URL", url)
        .env("MEDEMBED_DOCUMENTED_URL", documented)
        .env_remove("MEDEMBED_KEY");
    if let Some(k) = key {
        cmd.env("MEDEMBED_KEY", k);
    }
    let out = cmd.output().await.expect("the Python client tests run");
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {label} ---\n{report}");
    assert!(
        out.status.success(),
        "{label}: the managed endpoint's client patterns failed"
    );
    assert!(
        !report.contains("skipped"),
        "{label}: a client test was skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_managed_endpoints_clients_work_unchanged() {
    let _heavy = crate::common::exclusive().await;
    let per_row = start_worker().await;
    let documented = start_worker_with(&[("MEDEMBED_RESPONSE_FORMAT", "Documented")]).await;

    // Directly against workers.
    run_clients(
        "worker",
        &format!("http://{}/score", per_row.authority()),
        &format!("http://{}/score", documented.authority()),
        None,
    )
    .await;

    // Through the gateway, with the key.
    let gw = gateway(&config(&per_row)).await;
    run_clients(
        "gateway",
        &gw.url("/endpoints/chest/score"),
        &gw.url("/endpoints/chest-documented/score"),
        Some(KEY),
    )
    .await;
}
