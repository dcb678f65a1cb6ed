//! TLS from the gateway to real worker processes (`--worker-ca-file`): the
//! gateway dials every worker over TLS, trusting only the workers' CA and
//! checking the name of the worker's deployment; an impostor (a certificate
//! from another CA, or from the right CA for another service) and a worker
//! speaking plain HTTP are refused before any request reaches them; pooled
//! connections are reused (one handshake, not one per request); the CA file
//! and the workers' certificate files are reloaded when they change.
//!
//! Certificates are made with `medembed_api::pki`, as the operator makes
//! them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use medembed_api::pki::{self, KeyedCert};

use crate::common::*;

const KEY: &str = "worker-tls-test-key-0000000000000000001";
const BLUE: &str = "blue-worker.ns.svc";
const GREEN: &str = "green-worker.ns.svc";

fn ca(name: &str) -> KeyedCert {
    pki::new_ca(name, SystemTime::now(), pki::CA_VALIDITY).unwrap()
}

fn serving(ca: &KeyedCert, name: &str) -> KeyedCert {
    let names = [name.to_string(), format!("{name}.cluster.local")];
    pki::issue(ca, &names, SystemTime::now(), pki::SERVING_VALIDITY).unwrap()
}

/// Writes a certificate and its key as `<stem>.crt` and `<stem>.key` in
/// `dir` (write then rename, as a Secret volume changes).
fn write_pair(dir: &Path, stem: &str, c: &KeyedCert) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    write_config(&key, &c.key_pem);
    write_config(&crt, &c.cert_pem);
    (crt, key)
}

/// One endpoint per deployment, each with one worker and its TLS name.
fn config(deployments: &[(&str, &Worker, &str)]) -> String {
    let mut endpoints = String::new();
    for (name, w, server_name) in deployments {
        endpoints.push_str(&format!(
            r#"
  - name: {name}
    requestSettings: {{requestTimeoutMs: 30000}}
    deployments: {{d: {{workers: ["{}"], tlsServerName: "{server_name}"}}}}"#,
            w.authority()
        ));
    }
    let names: Vec<&str> = deployments.iter().map(|d| d.0).collect();
    format!(
        r#"
endpoints:{endpoints}
clients:
  - name: radiology
    endpoints: [{}]
    keys: {{primarySha256: "{}"}}
"#,
        names.join(", "),
        hash(KEY)
    )
}

async fn score(gw: &TestGateway, endpoint: &str) -> reqwest::Response {
    post_with_key(
        &gw.url(&format!("/endpoints/{endpoint}/score")),
        KEY,
        mixed_body(),
    )
    .await
}

/// Scoring requests a worker received (any status), from its metrics over
/// HTTPS (the certificate not checked) or HTTP.
async fn received(w: &Worker, tls: bool) -> f64 {
    let scheme = if tls { "https" } else { "http" };
    let m = insecure_client()
        .get(format!("{scheme}://{}/metrics", w.authority()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&m, "medembed_worker_requests_total", &[])
}

/// TCP connections established to local `port` (server side), from
/// `/proc/net/tcp`.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[1].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

/// A refusal in the API's error shape: 502 or 503 with an error code.
async fn assert_refused(r: reqwest::Response, what: &str) {
    let status = r.status().as_u16();
    assert!(
        status == 502 || status == 503,
        "{what}: status {status} {}",
        r.text().await.unwrap_or_default()
    );
    assert!(!error_code(r).await.is_empty(), "{what}: no error code");
}

#[tokio::test]
async fn worker_tls_verifies_the_ca_and_the_name_and_refuses_impostors_and_plain_http() {
    let _heavy = crate::common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (ca("medembed workers"), ca("someone else"));
    let ca_file = dir.path().join("ca.crt");
    write_config(&ca_file, &ours.cert_pem);
    let (crt, key) = write_pair(dir.path(), "blue", &serving(&ours, BLUE));
    let blue = start_tls_worker(&crt, &key).await;
    let (crt, key) = write_pair(dir.path(), "other-ca", &serving(&theirs, BLUE));
    let other_ca = start_tls_worker(&crt, &key).await;
    let (crt, key) = write_pair(dir.path(), "other-name", &serving(&ours, GREEN));
    let other_name = start_tls_worker(&crt, &key).await;
    let plain = start_worker().await;

    let yaml = config(&[
        ("blue", &blue, BLUE),
        ("otherca", &other_ca, BLUE),
        ("othername", &other_name, BLUE),
        ("plain", &plain, BLUE),
    ]);
    let gw = gateway_with(&yaml, |c| c.worker_ca_file = Some(ca_file.clone())).await;

    // The real worker answers, through the gateway, what it answers to a
    // client that verifies it directly.
    let direct: serde_json::Value = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ours.cert_pem.as_bytes()).unwrap())
        .resolve(BLUE, blue.authority().parse().unwrap())
        .build()
        .unwrap()
        .post(format!("https://{BLUE}:{}/score", blue.port))
        .body(mixed_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = score(&gw, "blue").await;
    assert_eq!(r.status(), 200);
    let via: serde_json::Value = r.json().await.unwrap();
    assert_eq!(via[0]["image_features"][0].as_array().unwrap().len(), 1024);
    assert_eq!(via, direct, "the gateway changed the worker's answer");

    // Plain HTTP to a TLS worker gets no answer.
    let plain_to_tls = client()
        .get(format!("http://{}/readyz", blue.authority()))
        .send()
        .await;
    assert!(
        plain_to_tls.map(|r| r.status() != 200).unwrap_or(true),
        "a TLS worker answered plain HTTP"
    );

    // Impostors and the plain worker are refused; no request reaches them.
    for (endpoint, w, tls) in [
        ("otherca", &other_ca, true),
        ("othername", &other_name, true),
        ("plain", &plain, false),
    ] {
        assert_refused(score(&gw, endpoint).await, endpoint).await;
        assert_eq!(received(w, tls).await, 0.0, "{endpoint} received a request");
    }

    // Pooled: requests in a row reuse the gateway's TLS connection to the
    // worker (the count of connections does not grow with the requests).
    let before = received(&blue, true).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        for _ in 0..10 {
            assert_eq!(score(&gw, "blue").await.status(), 200);
        }
        // Other clients' connections (the metrics reads) are closed by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        open.push(established_to(blue.port));
    }
    assert_eq!(received(&blue, true).await - before, 20.0);
    assert!(
        open[0] == 1 && open[1] == 1,
        "connections to the worker after 10 and 20 requests: {open:?}"
    );
}

#[tokio::test]
async fn worker_tls_reloads_the_gateways_ca_and_the_workers_certificate() {
    let _heavy = crate::common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, next) = (ca("medembed workers"), ca("medembed workers, next"));
    // The gateway trusts the wrong CA at first.
    let ca_file = dir.path().join("ca.crt");
    write_config(&ca_file, &next.cert_pem);
    let (crt, key) = write_pair(dir.path(), "blue", &serving(&ours, BLUE));
    let blue = start_tls_worker(&crt, &key).await;
    let gw = gateway_with(&config(&[("blue", &blue, BLUE)]), |c| {
        c.worker_ca_file = Some(ca_file.clone());
        c.reload_interval_ms = 200;
    })
    .await;
    assert_refused(score(&gw, "blue").await, "untrusted CA").await;
    // The CA file changes (a ConfigMap update): trusted from then on.
    write_config(&ca_file, &format!("{}{}", ours.cert_pem, next.cert_pem));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(score(&gw, "blue").await.status(), 200);

    // The worker's certificate files change (a Secret update, here to the
    // next CA): the worker serves the new one without a restart.
    let pid = blue.child.id();
    write_pair(dir.path(), "blue", &serving(&next, BLUE));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let only_next = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(next.cert_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(BLUE, blue.authority().parse().unwrap())
        .build()
        .unwrap();
    let r = only_next
        .get(format!("https://{BLUE}:{}/readyz", blue.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(blue.child.id(), pid);
    // And the gateway, trusting both CAs, keeps answering.
    assert_eq!(score(&gw, "blue").await.status(), 200);
}
