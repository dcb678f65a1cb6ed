//! The auth matrix: keys (none, wrong, primary, secondary, rotated without a
//! restart), tokens (valid, expired, wrong audience, wrong issuer, forged,
//! from a JWKS file and from a JWKS URL), and 401 against 403.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;

const PRIMARY: &str = "primary-key-for-tests-000000000001";
const SECONDARY: &str = "secondary-key-for-tests-0000000002";
const OTHER: &str = "other-client-key-000000000000000003";

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

/// Serves the test key set over HTTP, as an in-cluster identity provider would.
async fn jwks_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
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
