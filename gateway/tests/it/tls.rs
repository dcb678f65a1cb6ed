//! TLS termination with rustls: the gateway serves the certificate from its
//! files over HTTP/1.1 and HTTP/2 (ALPN), picks up a replaced certificate
//! for new handshakes without dropping established connections, and keeps
//! the last good certificate when the files are broken.
//!
//! The client records the certificate the server presents (the fixtures are
//! two self-signed certificates, `tls-a` and `tls-b`), so the test sees
//! exactly which one each handshake got.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use medembed_testsupport::http::AnyCertificate;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(fixture(pem))
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A TLS connection to the gateway, with the certificate it presented.
struct Conn {
    cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
    send: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(addr: std::net::SocketAddr, alpn: &[&[u8]]) -> Conn {
    let provider = Arc::new(ring::default_provider());
    // Accepts any certificate whose handshake signature verifies, and
    // records the one it was shown.
    let recorder = Arc::new(AnyCertificate::new(provider.clone()));
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let io = hyper_util::rt::TokioIo::new(tls);
    let send = if alpn.as_deref() == Some(b"h2") {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(send)
    };
    let cert = recorder.last_seen().unwrap();
    Conn { cert, alpn, send }
}

impl Conn {
    async fn score(&mut self) -> (u16, String) {
        let req = http::Request::post("https://localhost/endpoints/chest/score")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text_body())))
            .unwrap();
        let resp = match &mut self.send {
            Sender::H1(s) => s.send_request(req).await.unwrap(),
            Sender::H2(s) => s.send_request(req).await.unwrap(),
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn install(dir: &Path, which: &str) {
    // Key first, then certificate, each by rename (as a Secret volume
    // update swaps files atomically).
    for (from, to) in [
        (format!("tls-{which}-key.pem"), "key.pem"),
        (format!("tls-{which}-cert.pem"), "cert.pem"),
    ] {
        let tmp = dir.join(format!("{to}.tmp"));
        std::fs::copy(fixture(&from), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h1_and_h2_and_reloads_the_certificate_without_dropping_connections() {
    let up = upstream("blue", Behaviour::Ok).await;
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), "a");
    let yaml = format!(
        r#"
endpoints:
  - name: chest
    auth: {{mode: Unauthenticated}}
    deployments: {{blue: {{workers: ["{}"]}}}}
"#,
        up.authority()
    );
    let gw = gateway_with(&yaml, |c| {
        c.tls_cert = Some(certs.path().join("cert.pem"));
        c.tls_key = Some(certs.path().join("key.pem"));
        c.reload_interval_ms = 100;
    })
    .await;
    let (a, b) = (der("tls-a-cert.pem"), der("tls-b-cert.pem"));

    // HTTP/1.1 and HTTP/2 by ALPN, both with certificate A.
    let mut h1 = connect(gw.addr(), &[b"http/1.1"]).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(
        h1.cert == a,
        "the first handshake did not present certificate A"
    );
    let (status, body) = h1.score().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"blue\""), "{body}");
    let mut h2 = connect(gw.addr(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert!(h2.cert == a);
    assert_eq!(h2.score().await.0, 200);

    // Plain HTTP on the TLS port gets no answer.
    let plain = client()
        .post(gw.url("/endpoints/chest/score"))
        .body(text_body())
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port");

    // Replace the files: new handshakes get B, open connections keep working.
    install(certs.path(), "b");
    let mut fresh = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = connect(gw.addr(), &[b"http/1.1"]).await;
        if c.cert == b {
            fresh = Some(c);
            break;
        }
        assert!(c.cert == a, "a handshake presented neither A nor B");
    }
    let mut fresh = fresh.expect("certificate B was not picked up within 10 s");
    assert_eq!(fresh.score().await.0, 200);
    assert_eq!(
        h1.score().await.0,
        200,
        "a connection opened before the reload"
    );
    assert_eq!(
        h2.score().await.0,
        200,
        "an HTTP/2 connection opened before the reload"
    );

    // A broken certificate file: the last good certificate stays in force.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = connect(gw.addr(), &[b"http/1.1"]).await;
    assert!(
        c.cert == b,
        "a broken file replaced the working certificate"
    );
    assert_eq!(c.score().await.0, 200);

    // And a good one again is picked up.
    install(certs.path(), "a");
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if connect(gw.addr(), &[b"http/1.1"]).await.cert == a {
            back = true;
            break;
        }
    }
    assert!(back, "certificate A was not picked up again");
}
