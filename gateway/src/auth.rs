//! Who is calling: API keys and OIDC tokens, both as `Authorization: Bearer`.
//!
//! Keys: a client has a primary and a secondary key (rotate one while the
//! other keeps working). Only their SHA-256 hashes are stored (in a Secret or
//! the static file). A presented key is hashed, the client is looked up by
//! hash and the match confirmed with a constant-time comparison (`subtle`),
//! so neither the key nor its hash is compared byte by byte with early exit.
//!
//! Tokens: JWTs from an OIDC issuer, verified against the issuer's JSON Web
//! Key Set (fetched from its URL over HTTPS, or read from a mounted file on
//! air-gapped clusters), with issuer, audience, expiry and not-before
//! checked. Each key source has its own lock, taken by the one request that
//! refreshes it (a slow issuer stalls no other endpoint's tokens), and key
//! sets are read within a timeout and a size cap. The client is the one
//! whose token identity (`sub` and optional further claims) matches.
//!
//! 401 means "we do not know who you are" (no, malformed, unknown, expired or
//! mis-addressed credentials); 403 means "we know, and you may not call this
//! endpoint".

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::table::{AuthMode, Client, Endpoint, JwksSource, KeySlot, Table, TokenSettings};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The client (`None` on an unauthenticated endpoint).
    pub client: Option<Arc<Client>>,
    /// How it authenticated: `primary`, `secondary`, `token` or `none`.
    pub method: &'static str,
}

impl Principal {
    /// The client's id for labels and audit lines (`anonymous` if none).
    pub fn id(&self) -> &str {
        self.client.as_ref().map_or("anonymous", |c| c.id.as_str())
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401).
    #[error("missing credentials: send Authorization: Bearer <key or token>")]
    Missing,
    /// The key matches no client (401).
    #[error("invalid key")]
    BadKey,
    /// The token failed verification (401); the reason is bounded.
    #[error("invalid token: {0}")]
    BadToken(&'static str),
    /// Authenticated, but not allowed on this endpoint (403).
    #[error("this client may not call this endpoint")]
    Forbidden,
}

impl AuthError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::BadKey => "invalid_key",
            AuthError::BadToken(_) => "invalid_token",
            AuthError::Forbidden => "forbidden",
        }
    }
}

/// Hex SHA-256 of a key, as stored in Secrets and the static file.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn bearer(header: Option<&http::HeaderValue>) -> Option<&str> {
    let v = header?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim())
        .filter(|s| !s.is_empty())
}

/// Authenticates and authorises one request.
pub async fn authenticate(
    table: &Table,
    endpoint: &Endpoint,
    authorization: Option<&http::HeaderValue>,
    jwks: &JwksCache,
) -> Result<Principal, AuthError> {
    match endpoint.auth {
        AuthMode::Unauthenticated => Ok(Principal {
            client: None,
            method: "none",
        }),
        AuthMode::Key => {
            let key = bearer(authorization).ok_or(AuthError::Missing)?;
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let (client, slot) = table.client_by_key(&hash).ok_or(AuthError::BadKey)?;
            // Confirm against every stored hash of that client in constant time.
            let ok = client
                .key_hashes
                .iter()
                .fold(subtle::Choice::from(0), |acc, (h, _)| acc | h.ct_eq(&hash));
            if !bool::from(ok) {
                return Err(AuthError::BadKey);
            }
            if !client.endpoints.contains(&endpoint.id) {
                return Err(AuthError::Forbidden);
            }
            Ok(Principal {
                client: Some(client.clone()),
                method: match slot {
                    KeySlot::Primary => "primary",
                    KeySlot::Secondary => "secondary",
                },
            })
        }
        AuthMode::Token => {
            let token = bearer(authorization).ok_or(AuthError::Missing)?;
            let settings = endpoint
                .token
                .as_ref()
                .ok_or(AuthError::BadToken("endpoint has no token settings"))?;
            let claims = jwks.verify(settings, token).await?;
            let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
            // Among the clients with this identity, one allowed here wins.
            let mut known = false;
            for c in &table.clients {
                let Some(t) = &c.token else { continue };
                let claims_match = t.subject == sub
                    && t.claims
                        .iter()
                        .all(|(k, v)| claims.get(k).and_then(|x| x.as_str()) == Some(v.as_str()));
                if claims_match {
                    known = true;
                    if c.endpoints.contains(&endpoint.id) {
                        return Ok(Principal {
                            client: Some(c.clone()),
                            method: "token",
                        });
                    }
                }
            }
            // A valid token of an identity that is no client, or a client not
            // allowed here: authenticated, but not authorised.
            let _ = known;
            Err(AuthError::Forbidden)
        }
    }
}

/// How long a fetched key set is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Least time between fetches triggered by an unknown key id.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// Longest fetch of a key set URL (connect, TLS, headers and body).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read from a URL or a file; a real one is a few KiB.
pub const JWKS_MAX_BYTES: usize = 256 * 1024;
/// Most key sources kept. Inline sets change when a ConfigMap is rotated,
/// so without a bound every set ever seen would stay in memory; past it,
/// sets not in use right now are dropped (inline ones first: they cost
/// nothing to load again).
pub const JWKS_MAX_SOURCES: usize = 1024;

#[derive(Clone)]
struct CachedSet {
    keys: Arc<JwkSet>,
    loaded: Instant,
    mtime: Option<SystemTime>,
}

/// One key source: its last good set, and a lock held by whoever refreshes
/// it, so that a slow issuer delays its own tokens only, and one fetch runs
/// at a time per source.
#[derive(Default)]
struct SourceState {
    current: std::sync::RwLock<Option<CachedSet>>,
    refresh: Mutex<()>,
}

impl SourceState {
    fn get(&self) -> Option<CachedSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, c: CachedSet) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// Marks the last good set as just checked (retry later, not at once).
    fn touch(&self, now: Instant) {
        if let Some(c) = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            c.loaded = now;
        }
    }
}

/// Signing keys of token issuers, by source, loaded on demand and refreshed.
///
/// Key sets are fetched over HTTPS (or HTTP inside the cluster) with the
/// system's roots plus an optional CA bundle, within a timeout and a size cap.
#[derive(derive_more::Debug)]
#[debug("JwksCache")]
pub struct JwksCache {
    http: reqwest::Client,
    sources: std::sync::Mutex<HashMap<JwksSource, Arc<SourceState>>>,
    file_check: Duration,
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    s.parse().ok()
}

/// Reads `resp`'s body, refusing one larger than `max` bytes.
async fn capped_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, &'static str> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err("key set too large");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "key set URL unreachable")? {
        if body.len() + chunk.len() > max {
            return Err("key set too large");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl JwksCache {
    /// A cache fetching with the system's CA roots plus the PEM bundle
    /// `extra_ca` (an in-cluster issuer's private CA); files are re-checked
    /// every `file_check`.
    pub fn new(file_check: Duration, extra_ca: Option<&Path>) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(JWKS_FETCH_TIMEOUT)
            .connect_timeout(JWKS_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the JWKS CA bundle {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parsing the JWKS CA bundle {}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "the JWKS CA bundle {} holds no certificate",
                path.display()
            );
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(JwksCache {
            http: http.build().context("building the JWKS client")?,
            sources: std::sync::Mutex::new(HashMap::new()),
            file_check,
        })
    }

    async fn load(
        &self,
        source: &JwksSource,
    ) -> Result<(JwkSet, Option<SystemTime>), &'static str> {
        let (bytes, mtime) = match source {
            JwksSource::Inline(s) => (s.as_bytes().to_vec(), None),
            JwksSource::File(p) => {
                let meta = tokio::fs::metadata(p)
                    .await
                    .map_err(|_| "key set file unreadable")?;
                if meta.len() > JWKS_MAX_BYTES as u64 {
                    return Err("key set too large");
                }
                let bytes = tokio::fs::read(p)
                    .await
                    .map_err(|_| "key set file unreadable")?;
                (bytes, meta.modified().ok())
            }
            JwksSource::Url(u) => {
                let resp = self
                    .http
                    .get(u)
                    .send()
                    .await
                    .map_err(|_| "key set URL unreachable")?;
                if !resp.status().is_success() {
                    return Err("key set URL unreachable");
                }
                (capped_body(resp, JWKS_MAX_BYTES).await?, None)
            }
        };
        if bytes.len() > JWKS_MAX_BYTES {
            return Err("key set too large");
        }
        serde_json::from_slice(&bytes)
            .map(|s| (s, mtime))
            .map_err(|_| "key set is not a JWKS")
    }

    /// The state of `source`, created on first use.
    fn source(&self, source: &JwksSource) -> Arc<SourceState> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.contains_key(source) && sources.len() >= JWKS_MAX_SOURCES {
            // Held only by the map: not in use by a verification now.
            let idle = |st: &Arc<SourceState>| Arc::strong_count(st) == 1;
            sources.retain(|k, st| !(matches!(k, JwksSource::Inline(_)) && idle(st)));
            if sources.len() >= JWKS_MAX_SOURCES {
                sources.retain(|_, st| !idle(st));
            }
        }
        sources.entry(source.clone()).or_default().clone()
    }

    /// How many key sources are kept.
    pub fn len(&self) -> usize {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key source is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `cached` must be loaded again.
    async fn stale(
        &self,
        source: &JwksSource,
        cached: &CachedSet,
        want_kid: Option<&str>,
        now: Instant,
    ) -> bool {
        let age = now.duration_since(cached.loaded);
        let unknown = want_kid.is_some_and(|k| cached.keys.find(k).is_none());
        match source {
            JwksSource::Inline(_) => false,
            JwksSource::Url(_) => age > JWKS_TTL || (unknown && age > JWKS_MIN_REFETCH),
            JwksSource::File(p) => {
                age > self.file_check
                    && tokio::fs::metadata(p)
                        .await
                        .ok()
                        .and_then(|m| m.modified().ok())
                        != cached.mtime
            }
        }
    }

    /// The key set of `source`, loading or refreshing it as needed;
    /// `want_kid` forces a (rate-limited) refresh when the kid is unknown.
    ///
    /// No lock is held across a fetch but the source's own refresh lock:
    /// while one request refreshes a set, others keep verifying with the
    /// last good one, and other sources are not touched at all.
    async fn keys(
        &self,
        source: &JwksSource,
        want_kid: Option<&str>,
    ) -> Result<Arc<JwkSet>, &'static str> {
        let state = self.source(source);
        let now = Instant::now();
        let _refreshing = match state.get() {
            Some(c) => {
                if !self.stale(source, &c, want_kid, now).await {
                    if matches!(source, JwksSource::File(_))
                        && now.duration_since(c.loaded) > self.file_check
                    {
                        state.touch(now);
                    }
                    return Ok(c.keys);
                }
                // Someone else is refreshing: use the last good set.
                match state.refresh.try_lock() {
                    Ok(guard) => guard,
                    Err(_) => return Ok(c.keys),
                }
            }
            None => {
                // The first load: wait for one already on its way.
                let guard = state.refresh.lock().await;
                if let Some(c) = state.get() {
                    return Ok(c.keys);
                }
                guard
            }
        };
        match self.load(source).await {
            Ok((set, mtime)) => {
                let keys = Arc::new(set);
                state.set(CachedSet {
                    keys: keys.clone(),
                    loaded: now,
                    mtime,
                });
                Ok(keys)
            }
            Err(e) => match state.get() {
                Some(c) => {
                    // Keep serving with the last good set; retry later.
                    state.touch(now);
                    tracing::warn!(
                        reason = e,
                        "cannot refresh a token key set; keeping the last one"
                    );
                    Ok(c.keys)
                }
                None => Err(e),
            },
        }
    }

    /// Verifies a JWT's signature, issuer, audience and expiry; returns its claims.
    pub async fn verify(
        &self,
        settings: &TokenSettings,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::BadToken("malformed"))?;
        let allowed: Vec<Algorithm> = if settings.algorithms.is_empty() {
            vec![Algorithm::RS256, Algorithm::ES256]
        } else {
            settings
                .algorithms
                .iter()
                .filter_map(|a| parse_alg(a))
                .collect()
        };
        if !allowed.contains(&header.alg) {
            return Err(AuthError::BadToken("algorithm not accepted"));
        }
        let set = self
            .keys(&settings.jwks, header.kid.as_deref())
            .await
            .map_err(AuthError::BadToken)?;
        let jwk = match &header.kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or(AuthError::BadToken("unknown signing key"))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| AuthError::BadToken("unusable signing key"))?;
        // The header's algorithm is among the accepted ones (checked above);
        // jsonwebtoken wants every listed algorithm to fit the key's family.
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&settings.issuer]);
        v.set_audience(&settings.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // `nbf`, when present, is checked like `exp` (same leeway).
        v.validate_nbf = true;
        v.leeway = 30;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    AuthError::BadToken(match e.kind() {
                        K::ExpiredSignature => "expired",
                        K::InvalidAudience => "wrong audience",
                        K::InvalidIssuer => "wrong issuer",
                        K::ImmatureSignature => "not yet valid",
                        K::InvalidSignature => "bad signature",
                        K::MissingRequiredClaim(_) => "missing claim",
                        K::InvalidAlgorithm => "algorithm does not fit the key",
                        _ => "rejected",
                    })
                })?;
        Ok(data.claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(None), None);
    }

    /// Rotated inline key sets (a ConfigMap edited again and again) do not
    /// pile up: past the bound, idle sets are dropped.
    #[tokio::test]
    async fn key_sources_are_bounded() {
        let cache = JwksCache::new(Duration::from_secs(1), None).unwrap();
        let settings = |i: usize| TokenSettings {
            issuer: "https://idp.example".into(),
            audiences: vec!["medembed".into()],
            jwks: JwksSource::Inline(format!(r#"{{"keys": [], "rotation": {i}}}"#)),
            algorithms: Vec::new(),
        };
        // A token of an accepted algorithm, so the key set is looked up.
        let token = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";
        for i in 0..JWKS_MAX_SOURCES * 3 {
            assert!(cache.verify(&settings(i), token).await.is_err());
        }
        assert!(cache.len() <= JWKS_MAX_SOURCES, "{}", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn key_hash_is_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
