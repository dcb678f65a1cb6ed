//! `medembed-operator fetch-model`: the init container of an
//! `EmbeddingDeployment` whose model comes from an HTTP(S) URL.
//!
//! It streams the archive to a temporary file in the cache volume while
//! hashing it, refuses it unless its SHA-256 is the one in the spec, then
//! unpacks it (tar, optionally gzip-compressed; entries that would land
//! outside the destination are refused by `tar`'s `unpack`) and writes a
//! marker with the hash, so that a restarted pod with the same volume skips
//! the download. HTTPS uses the system's trust roots; up to five redirects
//! are followed.

use std::io::Write;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// The marker file holding the SHA-256 of the unpacked archive.
pub const MARKER: &str = ".medembed-sha256";

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not http(s) or cannot be parsed.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The server could not be reached, or answered with an error.
    #[error("download failed: {0}")]
    Http(String),
    /// The archive's hash is not the expected one.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The hash in the spec.
        expected: String,
        /// The hash of what was downloaded.
        actual: String,
    },
    /// Writing or unpacking failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// Downloads `url` into `dest`, verifies it against `sha256` (lowercase hex)
/// and unpacks it there. Returns `false` when `dest` already held it.
pub async fn fetch(url: &str, sha256: &str, dest: &Path) -> Result<bool, FetchError> {
    let expected = sha256.trim().to_ascii_lowercase();
    if std::fs::read_to_string(dest.join(MARKER)).is_ok_and(|m| m.trim() == expected) {
        tracing::info!("model already in the cache volume");
        return Ok(false);
    }
    std::fs::create_dir_all(dest).map_err(io("creating the destination"))?;
    let tmp: PathBuf = dest.join(".download.tmp");
    let actual = download(url, &tmp).await?;
    if actual != expected {
        let _ = std::fs::remove_file(&tmp);
        return Err(FetchError::Mismatch { expected, actual });
    }
    let tmp2 = tmp.clone();
    let dest2 = dest.to_path_buf();
    tokio::task::spawn_blocking(move || unpack(&tmp2, &dest2))
        .await
        .map_err(|e| FetchError::Http(format!("unpacking task: {e}")))??;
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(dest.join(MARKER), format!("{expected}\n")).map_err(io("writing the marker"))?;
    Ok(true)
}

async fn download(url: &str, to: &Path) -> Result<String, FetchError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| FetchError::Http(format!("loading the system's trust roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut uri: http::Uri = url.parse().map_err(|e| FetchError::Url(format!("{e}")))?;
    for _ in 0..6 {
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(FetchError::Url(
                "only http and https URLs are supported".into(),
            ));
        }
        let resp = client
            .get(uri.clone())
            .await
            .map_err(|e| FetchError::Http(format!("{e}")))?;
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| FetchError::Http(format!("{status} without a Location")))?;
            uri = resolve(&uri, loc)?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Http(format!("server answered {status}")));
        }
        let mut file = std::fs::File::create(to).map_err(io("creating the download file"))?;
        let mut hasher = Sha256::new();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Http(format!("{e}")))?;
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                file.write_all(data).map_err(io("writing the download"))?;
            }
        }
        file.sync_all().map_err(io("flushing the download"))?;
        return Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect());
    }
    Err(FetchError::Http("too many redirects".into()))
}

fn resolve(base: &http::Uri, location: &str) -> Result<http::Uri, FetchError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e| FetchError::Url(format!("{e}")));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    format!("{scheme}://{authority}{location}")
        .parse()
        .map_err(|e| FetchError::Url(format!("{e}")))
}

fn unpack(archive: &Path, dest: &Path) -> Result<(), FetchError> {
    let mut f = std::fs::File::open(archive).map_err(io("opening the archive"))?;
    let mut magic = [0u8; 2];
    let gz = std::io::Read::read_exact(&mut f, &mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(archive).map_err(io("opening the archive"))?;
    let reader: Box<dyn std::io::Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.unpack(dest).map_err(io("unpacking the archive"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"{\"name\": \"test\"}\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "model/medembed-model.json", &data[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    /// A real HTTP server on loopback serving `body` at /m.tar.gz (and a
    /// redirect to it at /old).
    async fn serve(body: Vec<u8>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            if req.uri().path() == "/old" {
                                *r.status_mut() = http::StatusCode::FOUND;
                                r.headers_mut().insert(
                                    "location",
                                    http::HeaderValue::from_static("/m.tar.gz"),
                                );
                            } else if req.uri().path() != "/m.tar.gz" {
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn fetches_verifies_unpacks_and_caches() {
        let body = archive();
        let sum: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let addr = serve(body).await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/old");
        assert!(fetch(&url, &sum, dir.path()).await.unwrap());
        let json = std::fs::read_to_string(dir.path().join("model/medembed-model.json")).unwrap();
        assert!(json.contains("test"));
        assert!(!dir.path().join(".download.tmp").exists());
        // Cached: no second download.
        assert!(!fetch(&url, &sum, dir.path()).await.unwrap());

        let other = tempfile::tempdir().unwrap();
        let wrong = "0".repeat(64);
        match fetch(&url, &wrong, other.path()).await {
            Err(FetchError::Mismatch { actual, .. }) => assert_eq!(actual, sum),
            r => panic!("expected a mismatch, got {r:?}"),
        }
        assert!(!other.path().join("model").exists());
        let missing = format!("http://{addr}/nothing");
        assert!(matches!(
            fetch(&missing, &sum, other.path()).await,
            Err(FetchError::Http(_))
        ));
    }
}
