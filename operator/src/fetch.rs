//! `medembed-operator fetch-model`: the init container of an
//! `EmbeddingDeployment` whose model comes from an HTTP(S) URL.
//!
//! It streams the archive to a temporary file in the cache volume while
//! hashing it, refuses it unless its SHA-256 is the one in the spec, then
//! unpacks it (tar, optionally gzip-compressed; only regular files and
//! directories: symbolic and hard links, devices and FIFOs are refused, and
//! entries that would land outside the destination are refused by `tar`'s
//! `unpack_in`) and writes a
//! marker with the hash, so that a restarted pod with the same volume skips
//! the download. HTTPS uses the system's trust roots (rustls); up to five
//! redirects are followed (reqwest; a relative `Location` is resolved
//! against the URL that gave it). The whole download has a time limit and
//! a byte cap ([`Limits`]); errors never show the downloaded content's hash
//! nor the URL (which may carry a token).

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
    /// The archive's hash is not the expected one (neither hash is shown).
    #[error("sha256 mismatch")]
    Mismatch,
    /// The download exceeded the byte cap or the time limit.
    #[error("download refused: {0}")]
    Limit(String),
    /// The archive holds an entry other than a regular file or a directory.
    #[error("archive refused: {0}")]
    Archive(String),
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

/// Bounds of one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole download (connect, redirects, body) must end within this.
    pub timeout: std::time::Duration,
    /// Most bytes downloaded.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// One hour, 50 GiB.
    fn default() -> Self {
        Limits {
            timeout: std::time::Duration::from_secs(3600),
            max_bytes: 50 << 30,
        }
    }
}

/// [`fetch_with`] under the default [`Limits`].
pub async fn fetch(url: &str, sha256: &str, dest: &Path) -> Result<bool, FetchError> {
    fetch_with(url, sha256, dest, Limits::default()).await
}

/// Downloads `url` into `dest`, verifies it against `sha256` (lowercase hex)
/// and unpacks it there. Returns `false` when `dest` already held it.
pub async fn fetch_with(
    url: &str,
    sha256: &str,
    dest: &Path,
    limits: Limits,
) -> Result<bool, FetchError> {
    let expected = sha256.trim().to_ascii_lowercase();
    if std::fs::read_to_string(dest.join(MARKER)).is_ok_and(|m| m.trim() == expected) {
        tracing::info!("model already in the cache volume");
        return Ok(false);
    }
    std::fs::create_dir_all(dest).map_err(io("creating the destination"))?;
    let tmp: PathBuf = dest.join(".download.tmp");
    let downloaded = tokio::time::timeout(limits.timeout, download(url, &tmp, limits.max_bytes))
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Limit(format!(
                "not done within {} s",
                limits.timeout.as_secs()
            )))
        });
    let actual = match downloaded {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if actual != expected {
        let _ = std::fs::remove_file(&tmp);
        return Err(FetchError::Mismatch);
    }
    let tmp2 = tmp.clone();
    let dest2 = dest.to_path_buf();
    let unpacked = tokio::task::spawn_blocking(move || unpack(&tmp2, &dest2))
        .await
        .map_err(|e| FetchError::Http(format!("unpacking task: {e}")))
        .and_then(|r| r);
    let _ = std::fs::remove_file(&tmp);
    unpacked?;
    std::fs::write(dest.join(MARKER), format!("{expected}\n")).map_err(io("writing the marker"))?;
    Ok(true)
}

/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

async fn download(url: &str, to: &Path, max_bytes: u64) -> Result<String, FetchError> {
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
    let too_big = || FetchError::Limit(format!("larger than {max_bytes} bytes"));
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_big());
    }
    let mut total: u64 = 0;
    let mut file = std::fs::File::create(to).map_err(io("creating the download file"))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Http(describe(&e)))?
    {
        total = total.saturating_add(chunk.len() as u64);
        if total > max_bytes {
            return Err(too_big());
        }
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
    for entry in ar.entries().map_err(io("reading the archive"))? {
        let mut entry = entry.map_err(io("reading the archive"))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                // `unpack_in` refuses paths leaving `dest` (`..`, absolute).
                let inside = entry.unpack_in(dest).map_err(io("unpacking the archive"))?;
                if !inside {
                    return Err(FetchError::Archive(
                        "an entry's path leaves the destination".into(),
                    ));
                }
            }
            // Metadata (pax global headers) writes no file.
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(FetchError::Archive(format!(
                    "only regular files and directories are unpacked, not {other:?}"
                )))
            }
        }
    }
    Ok(())
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
                            if path == "/dir/rel" {
                                // A relative Location, resolved against /dir/.
                                *r.status_mut() = http::StatusCode::FOUND;
                                r.headers_mut().insert(
                                    "location",
                                    http::HeaderValue::from_static("../m.tar.gz"),
                                );
                            } else if path == "/old" || path == "/loop" {
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
            Err(e @ FetchError::Mismatch) => {
                // Neither the content's hash nor the expected one is shown.
                assert_eq!(e.to_string(), "sha256 mismatch");
                assert!(!format!("{e:?}").contains(&sum));
            }
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

    fn tar_with(kind: tar::EntryType) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"x";
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "model/ok.txt", &data[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(kind);
        l.set_size(0);
        l.set_mode(0o644);
        b.append_link(&mut l, "model/link", "/etc/passwd").unwrap();
        b.into_inner().unwrap()
    }

    fn sum_of(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[tokio::test]
    async fn archives_with_links_are_refused() {
        for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
            let body = tar_with(kind);
            let sum = sum_of(&body);
            let addr = serve(body).await;
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://{addr}/m.tar.gz");
            match fetch(&url, &sum, dir.path()).await {
                Err(FetchError::Archive(m)) => assert!(m.contains("regular files"), "{m}"),
                r => panic!("{kind:?}: expected a refusal, got {r:?}"),
            }
            assert!(std::fs::symlink_metadata(dir.path().join("model/link")).is_err());
            assert!(!dir.path().join(MARKER).exists());
        }
    }

    #[tokio::test]
    async fn relative_redirects_byte_cap_and_time_limit() {
        let body = archive();
        let sum = sum_of(&body);
        let len = body.len() as u64;
        let addr = serve(body).await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/dir/rel");
        assert!(fetch(&url, &sum, dir.path()).await.unwrap());

        let small = Limits {
            max_bytes: len - 1,
            ..Limits::default()
        };
        let other = tempfile::tempdir().unwrap();
        let direct = format!("http://{addr}/m.tar.gz");
        assert!(matches!(
            fetch_with(&direct, &sum, other.path(), small).await,
            Err(FetchError::Limit(_))
        ));
        assert!(!other.path().join(".download.tmp").exists());

        // A server that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let quick = Limits {
            timeout: std::time::Duration::from_millis(300),
            ..Limits::default()
        };
        let url = format!("http://{silent}/m.tar.gz");
        assert!(matches!(
            fetch_with(&url, &sum, other.path(), quick).await,
            Err(FetchError::Limit(_))
        ));
    }
}
