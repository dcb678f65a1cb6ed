//! `medembed-operator fetch-model`: the init container of an
//! `EmbeddingDeployment` whose model comes from an HTTP(S) URL.
//!
//! It streams the archive to a temporary file in the cache volume while
//! hashing it, refuses it unless its SHA-256 is the one in the spec, then
//! unpacks it (tar, optionally gzip-compressed; entries that would land
//! outside the destination are refused by `tar`'s `unpack`) and writes a
//! marker with the hash, so that a restarted pod with the same volume skips
//! the download. HTTPS uses the system's trust roots (rustls); up to five
//! redirects are followed (reqwest).

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

async fn download(url: &str, to: &Path) -> Result<String, FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Url(format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::Url(
            "only http and https URLs are supported".into(),
        ));
    }
    // rustls with the system's trust roots (a hospital's own CA is
    // installed there); redirects followed by the client, within a bound.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .build()
        .map_err(|e| FetchError::Http(format!("building the HTTP client: {e}")))?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| FetchError::Http(describe(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Http(format!("server answered {status}")));
    }
    let mut file = std::fs::File::create(to).map_err(io("creating the download file"))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Http(describe(&e)))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io("writing the download"))?;
    }
    file.sync_all().map_err(io("flushing the download"))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// An HTTP client error without the URL (which may carry credentials in its
/// query string).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_redirect() {
        "too many redirects"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "transfer failed"
    };
    let mut msg = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
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
    use hyper::body::Bytes;
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
                            let path = req.uri().path();
                            if path == "/old" || path == "/loop" {
                                *r.status_mut() = http::StatusCode::FOUND;
                                r.headers_mut().insert(
                                    "location",
                                    http::HeaderValue::from_static(if path == "/old" {
                                        "/m.tar.gz"
                                    } else {
                                        "/loop"
                                    }),
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
        // A redirect loop ends, with an error that does not repeat the URL.
        let looping = format!("http://{addr}/loop?token=secret");
        match fetch(&looping, &sum, other.path()).await {
            Err(FetchError::Http(m)) => {
                assert!(
                    m.contains("too many redirects") && !m.contains("secret"),
                    "{m}"
                )
            }
            r => panic!("expected too many redirects, got {r:?}"),
        }
        assert!(matches!(
            fetch("ftp://example.org/m.tar.gz", &sum, other.path()).await,
            Err(FetchError::Url(_))
        ));
    }
}
