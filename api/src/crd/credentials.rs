//! The credentials document: what the gateway needs of the tenants' key
//! Secrets and JWKS ConfigMaps, published by the operator into one Secret in
//! the gateway's namespace.
//!
//! Why: the gateway faces the network. If it read key Secrets and ConfigMaps
//! itself it would need `list`/`watch` on every Secret of every tenant
//! namespace, and a flaw in it would expose them all. Instead the operator
//! (which already reads those Secrets by name) resolves each endpoint's and
//! each client's key Secret, keeps only SHA-256 hashes of the keys, and
//! writes this document under [`CREDENTIALS_KEY`] into a single Secret that
//! the gateway alone may read, by name (`resourceNames` in its Role).
//!
//! Contents, by object id `namespace/name`:
//! - `endpoints`: for a Key-mode endpoint, the hashes of the two keys of its
//!   key Secret (the Secret holds them in clear; the document never does);
//!   for a Token-mode endpoint with `jwksConfigMap`, the key set's JSON text
//!   (public keys);
//! - `clients`: the hex SHA-256 key hashes of each client's key Secret.
//!
//! Which Secret an object uses, and whether the operator refused it
//! (`SecretConflict`, `DuplicateKey`, ...), is unchanged: the gateway still
//! reads the objects' specs and conditions; only the Secrets' contents come
//! from here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Data key of the document in the credentials Secret.
pub const CREDENTIALS_KEY: &str = "credentials.json";

/// Label on the credentials Secret (value: the operator's name).
pub const CREDENTIALS_LABEL: &str = "medembed.io/credentials";

/// The whole document (see the module's documentation).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// By endpoint id `namespace/name`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointCredentials>,
    /// By client id `namespace/name`.
    #[serde(default)]
    pub clients: BTreeMap<String, KeyHashes>,
}

/// Counts only: hashes of keys are as sensitive as password hashes and stay
/// out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("endpoints", &self.endpoints.len())
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// What the gateway needs of one endpoint's Secret and ConfigMap.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCredentials {
    /// Hashes of the endpoint's own keys (Key mode).
    #[serde(default, skip_serializing_if = "KeyHashes::is_empty")]
    pub keys: KeyHashes,
    /// The key set of `token.jwksConfigMap` (Token mode), as its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

/// Lower-case hex SHA-256 hashes of a primary and a secondary key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyHashes {
    /// The primary key's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The secondary key's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

impl KeyHashes {
    /// Neither key.
    pub fn is_empty(&self) -> bool {
        self.primary.is_none() && self.secondary.is_none()
    }

    /// The hashes an endpoint's keys in clear give (entries absent: none).
    pub fn of_clear_keys(primary: Option<&[u8]>, secondary: Option<&[u8]>) -> Self {
        KeyHashes {
            primary: primary.map(hash_key),
            secondary: secondary.map(hash_key),
        }
    }

    /// The hashes a client's Secret entries give: only valid hex SHA-256
    /// values, lower-cased.
    pub fn of_hex_entries(primary: Option<&[u8]>, secondary: Option<&[u8]>) -> Self {
        KeyHashes {
            primary: primary.and_then(hex_sha256),
            secondary: secondary.and_then(hex_sha256),
        }
    }
}

/// Lower-case hex SHA-256 of a key.
pub fn hash_key(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `value` (a Secret entry) as a lower-case hex SHA-256: 64 hex digits,
/// surrounding white space ignored; else `None`.
pub fn hex_sha256(value: &[u8]) -> Option<String> {
    let v = value.trim_ascii();
    (v.len() == 64 && v.iter().all(u8::is_ascii_hexdigit))
        .then(|| String::from_utf8_lossy(v).to_ascii_lowercase())
}

/// Decodes a hex SHA-256 into its 32 bytes.
pub fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let h = hex.as_bytes();
    if h.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in h.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_invalid_entries_are_dropped() {
        let h = hash_key(b"key");
        assert_eq!(
            h,
            "2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683"
        );
        assert_eq!(decode_hash(&h).unwrap()[..2], [0x2c, 0x70]);
        let upper = format!(" {}\n", h.to_uppercase());
        let k = KeyHashes::of_hex_entries(Some(upper.as_bytes()), Some(b"not-a-hash"));
        assert_eq!(k.primary.as_deref(), Some(h.as_str()));
        assert_eq!(k.secondary, None);
        assert_eq!(decode_hash("zz"), None);
        assert_eq!(decode_hash(&"g".repeat(64)), None);
    }

    #[test]
    fn the_document_leaves_out_what_is_absent_and_debug_shows_counts_only() {
        let mut c = Credentials::default();
        c.endpoints.insert(
            "ns/ep".into(),
            EndpointCredentials {
                keys: KeyHashes::of_clear_keys(Some(b"k1"), None),
                jwks: None,
            },
        );
        c.clients.insert("ns/c".into(), KeyHashes::default());
        let text = serde_json::to_string(&c).unwrap();
        assert!(
            !text.contains("secondary") && !text.contains("jwks"),
            "{text}"
        );
        assert!(!text.contains("k1"));
        let back: Credentials = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let debug = format!("{c:?}");
        assert!(!debug.contains(&hash_key(b"k1")), "{debug}");
        assert_eq!(debug, "Credentials { endpoints: 1, clients: 1 }");
    }
}
