//! The auth matrix: keys (none, wrong, primary, secondary, rotated without a
//! restart), tokens (valid, expired, wrong audience, wrong issuer, forged,
//! not yet valid, from a JWKS file and from a JWKS URL over HTTP and HTTPS
//! with a private CA), a stalled or oversized key set, and 401 against 403.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;

const PRIMARY: &str = "primary-key-for-tests-000000000001";
const SECONDARY: &str = "secondary-key-for-tests-0000000002";
const OTHER: &str = "other-client-key-000000000000000003";
const ISS: &str = "https://idp.example.org";

fn config(upstream: &str, primary: &str, jwks: &str) -> String {
    format!(
        r#"
endpoints:
  - name: keyed
    auth: {{mode: Key}}
    deployments: {{blue: {{workers: ["{upstream}"]}}}}
  - name: other
    auth: {{mode: Key}}
    deployments: {{blue: {{workers: ["{upstream}"]}}}}
  - name: tokened
    auth:
      mode: Token
      token: {{issuer: "https://idp.example.org", audiences: ["medembed"], {jwks}}}
    deployments: {{blue: {{workers: ["{upstream}"]}}}}
  - name: open
    auth: {{mode: Unauthenticated}}
    deployments: {{blue: {{workers: ["{upstream}"]}}}}
clients:
  - name: radiology
    endpoints: [keyed, tokened]
    keys: {{primarySha256: "{}", secondarySha256: "{}"}}
    token: {{subject: "svc-radiology"}}
  - name: pathology
    endpoints: [other]
    keys: {{primarySha256: "{}"}}
    token: {{subject: "svc-pathology"}}
"#,
        hash(primary),
        hash(SECONDARY),
        hash(OTHER)
    )
}

async fn call(gw: &TestGateway, endpoint: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut r = client()
        .post(gw.url(&format!("/endpoints/{endpoint}/score")))
        .body(text_body());
    if let Some(b) = bearer {
        r = r.bearer_auth(b);
    }
    r.send().await.unwrap()
}

async fn status(gw: &TestGateway, endpoint: &str, bearer: Option<&str>) -> u16 {
    call(gw, endpoint, bearer).await.status().as_u16()
}

#[tokio::test]
async fn key_matrix_and_rotation_without_restart() {
    let up = upstream("blue", Behaviour::Ok).await;
    let jwks = format!("jwksFile: \"{}\"", fixture("jwks.json").display());
    let gw = gateway(&config(&up.authority(), PRIMARY, &jwks)).await;

    let r = call(&gw, "keyed", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(r).await, "unauthorized");
    assert_eq!(status(&gw, "keyed", Some("not-a-key")).await, 401);
    assert_eq!(status(&gw, "keyed", Some(PRIMARY)).await, 200);
    assert_eq!(status(&gw, "keyed", Some(SECONDARY)).await, 200);
    // A valid key of a client not allowed on this endpoint: 403.
    let r = call(&gw, "keyed", Some(OTHER)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "forbidden");
    assert_eq!(status(&gw, "other", Some(OTHER)).await, 200);
    // Unauthenticated endpoint.
    assert_eq!(status(&gw, "open", None).await, 200);
    // Basic auth is not a bearer key.
    let r = client()
        .post(gw.url("/endpoints/keyed/score"))
        .basic_auth("u", Some(PRIMARY))
        .body(text_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Rotate the primary key: the old one stops working, the new one and the
    // secondary work, and nothing restarted.
    let new_primary = "rotated-primary-key-0000000000000004";
    gw.rewrite(&config(&up.authority(), new_primary, &jwks))
        .await;
    assert_eq!(status(&gw, "keyed", Some(PRIMARY)).await, 401);
    assert_eq!(status(&gw, "keyed", Some(new_primary)).await, 200);
    assert_eq!(status(&gw, "keyed", Some(SECONDARY)).await, 200);

    let m = gw.metrics().await;
    for secret in [PRIMARY, SECONDARY, OTHER, new_primary] {
        assert!(!m.contains(secret));
        assert!(!m.contains(&hash(secret)));
    }
    assert_eq!(rejections(&m, &["reason=\"missing_credentials\""]), 2.0);
    assert_eq!(rejections(&m, &["reason=\"forbidden\""]), 1.0);
}

#[tokio::test]
async fn token_matrix_with_a_mounted_key_set() {
    let up = upstream("blue", Behaviour::Ok).await;
    let jwks = format!("jwksFile: \"{}\"", fixture("jwks.json").display());
    let gw = gateway(&config(&up.authority(), PRIMARY, &jwks)).await;
    let iss = "https://idp.example.org";
    let good = token("svc-radiology", "medembed", iss, now() + 300);
    let r = call(&gw, "tokened", Some(&good)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(status(&gw, "tokened", None).await, 401);
    let soon = now() + 300;
    for (sub, aud, issuer, exp, want) in [
        // Expired (beyond the 30 s leeway).
        ("svc-radiology", "medembed", iss, now() - 120, 401),
        // Wrong audience, wrong issuer.
        ("svc-radiology", "other-api", iss, soon, 401),
        ("svc-radiology", "medembed", "https://evil", soon, 401),
        // Valid, but its client may not call this endpoint; or no client
        // has this identity.
        ("svc-pathology", "medembed", iss, soon, 403),
        ("nobody", "medembed", iss, soon, 403),
    ] {
        let t = token(sub, aud, issuer, exp);
        let got = status(&gw, "tokened", Some(&t)).await;
        assert_eq!(got, want, "{sub} for {aud} from {issuer}");
    }
    // Forged: the payload changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let forged_claims = serde_json::json!({"sub": "svc-radiology", "aud": "medembed", "iss": iss, "exp": now() + 99999});
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_claims.to_string());
    assert_eq!(status(&gw, "tokened", Some(&parts.join("."))).await, 401);
    // A key on a token endpoint is not a token.
    assert_eq!(status(&gw, "tokened", Some(PRIMARY)).await, 401);
    let m = gw.metrics().await;
    let served = [
        "endpoint=\"tokened\"",
        "client=\"radiology\"",
        "status=\"200\"",
    ];
    assert_eq!(metric(&m, "medembed_gateway_requests_total", &served), 1.0);
    let invalid = ["endpoint=\"tokened\"", "reason=\"invalid_token\""];
    assert_eq!(rejections(&m, &invalid), 5.0);
}

/// What a test identity provider does with a key set request.
#[derive(Clone)]
enum Idp {
    /// Answers with this body.
    KeySet(String),
    /// Reads the request and never answers.
    Stall,
}

/// A test identity provider serving its key set over HTTP, or HTTPS with
/// `tls`, as an in-cluster one would.
async fn key_set_server(
    idp: Idp,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let (idp, tls) = (idp.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(s) = tls.accept(s).await {
                            answer(s, idp).await;
                        }
                    }
                    None => answer(s, idp).await,
                }
            });
        }
    });
    (addr, task)
}

async fn answer(mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, idp: Idp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).await;
    match idp {
        Idp::KeySet(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Idp::Stall => tokio::time::sleep(Duration::from_secs(60)).await,
    }
}

fn key_set() -> String {
    std::fs::read_to_string(fixture("jwks.json")).unwrap()
}

/// Serves the test key set over HTTP.
async fn jwks_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    key_set_server(Idp::KeySet(key_set()), None).await
}

#[tokio::test]
async fn token_keys_from_a_url() {
    let up = upstream("blue", Behaviour::Ok).await;
    let (addr, _srv) = jwks_server().await;
    let jwks = format!("jwksUri: \"http://{addr}/jwks\"");
    let gw = gateway(&config(&up.authority(), PRIMARY, &jwks)).await;
    let iss = "https://idp.example.org";
    for (exp, want) in [(now() + 300, 200), (now() - 300, 401)] {
        let t = token("svc-radiology", "medembed", iss, exp);
        assert_eq!(status(&gw, "tokened", Some(&t)).await, want);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn token_keys_over_https_with_a_private_ca() {
    let up = upstream("blue", Behaviour::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_test_pki(dir.path());
    let tls = medembed_gateway::tls::ReloadingCert::from_files(cert, key)
        .unwrap()
        .acceptor()
        .unwrap();
    let (addr, _srv) = key_set_server(Idp::KeySet(key_set()), Some(tls)).await;
    let jwks = format!("jwksUri: \"https://127.0.0.1:{}/jwks\"", addr.port());
    let yaml = config(&up.authority(), PRIMARY, &jwks);
    let good = token("svc-radiology", "medembed", ISS, now() + 300);
    // The issuer's certificate is trusted through the configured CA bundle.
    let trusting = gateway_with(&yaml, |c| c.jwks_ca_file = Some(ca)).await;
    let r = call(&trusting, "tokened", Some(&good)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Without the bundle it is not: no key set, so no token is valid.
    let plain = gateway(&yaml).await;
    assert_eq!(status(&plain, "tokened", Some(&good)).await, 401);
}

#[tokio::test]
async fn a_stalled_issuer_delays_only_its_own_tokens() {
    let up = upstream("blue", Behaviour::Ok).await;
    let (stalled, _srv) = key_set_server(Idp::Stall, None).await;
    let file = format!("jwksFile: \"{}\"", fixture("jwks.json").display());
    let yaml = config(&up.authority(), PRIMARY, &file)
        .replace(
            "clients:\n",
            &format!(
                "  - name: stalled\n    auth:\n      mode: Token\n      token: {{issuer: \"{ISS}\", audiences: [\"medembed\"], jwksUri: \"http://{stalled}/jwks\"}}\n    deployments: {{blue: {{workers: [\"{}\"]}}}}\nclients:\n",
                up.authority()
            ),
        )
        .replace("endpoints: [keyed, tokened]", "endpoints: [keyed, tokened, stalled]");
    let gw = std::sync::Arc::new(gateway(&yaml).await);
    let good = token("svc-radiology", "medembed", ISS, now() + 300);
    // Warm the file-backed set, then make a request wait on the stalled issuer.
    assert_eq!(status(&gw, "tokened", Some(&good)).await, 200);
    let waiting = tokio::spawn({
        let (gw, good) = (gw.clone(), good.clone());
        async move {
            let started = std::time::Instant::now();
            (status(&gw, "stalled", Some(&good)).await, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another endpoint's tokens are checked at once.
    let started = std::time::Instant::now();
    assert_eq!(status(&gw, "tokened", Some(&good)).await, 200);
    let other = started.elapsed();
    assert!(
        other < Duration::from_secs(2),
        "waited {other:?} behind another issuer"
    );
    // The stalled issuer's own token fails after the fetch timeout.
    let (code, waited) = waiting.await.unwrap();
    assert_eq!(code, 401);
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

#[tokio::test]
async fn an_oversized_key_set_is_not_read() {
    let up = upstream("blue", Behaviour::Ok).await;
    // A valid key set padded past the cap with whitespace (still valid JSON).
    let padded = format!(
        "{}{}",
        key_set(),
        " ".repeat(medembed_gateway::auth::JWKS_MAX_BYTES + 1)
    );
    let (addr, _srv) = key_set_server(Idp::KeySet(padded), None).await;
    let jwks = format!("jwksUri: \"http://{addr}/jwks\"");
    let gw = gateway(&config(&up.authority(), PRIMARY, &jwks)).await;
    let good = token("svc-radiology", "medembed", ISS, now() + 300);
    assert_eq!(status(&gw, "tokened", Some(&good)).await, 401);
}

#[tokio::test]
async fn a_token_is_not_valid_before_its_nbf() {
    let up = upstream("blue", Behaviour::Ok).await;
    let jwks = format!("jwksFile: \"{}\"", fixture("jwks.json").display());
    let gw = gateway(&config(&up.authority(), PRIMARY, &jwks)).await;
    let claims = |nbf: u64| {
        serde_json::json!({"sub": "svc-radiology", "aud": "medembed", "iss": ISS,
                           "exp": now() + 600, "nbf": nbf})
    };
    // Not yet valid (beyond the 30 s leeway), then valid.
    assert_eq!(
        status(&gw, "tokened", Some(&signed(&claims(now() + 300)))).await,
        401
    );
    assert_eq!(
        status(&gw, "tokened", Some(&signed(&claims(now() - 60)))).await,
        200
    );
}
