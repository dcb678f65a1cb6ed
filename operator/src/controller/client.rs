//! The `EmbeddingClient` controller: checks that a tenant can call what it
//! names and says so in its status, so `kubectl get embeddingclients` shows a
//! broken tenant before its first 401 or 403 does.
//!
//! `Ready` is True when
//! - its key Secret (when it has keys) exists, is `Opaque` (the only type
//!   the gateway reads), and holds a valid hex SHA-256 under the primary
//!   entry (and under the secondary entry, if that entry is present);
//! - every endpoint it names exists in its namespace;
//! - each of those endpoints accepts one of its credentials (keys for Key
//!   mode, a token identity for Token mode; anything for Unauthenticated).
//!
//! Otherwise the first problem found gives the reason (`KeySecretNotFound`,
//! `KeySecretInvalid`, `EndpointNotFound`, `NoUsableCredentials`,
//! `DuplicateKey`: an older client holds one of its key hashes, and the
//! gateway keeps the key for the older one) and the
//! message lists them all. Messages name Secrets and entries, never their
//! content.
//!
//! Endpoints are watched (a client is rechecked when an endpoint it names
//! changes). Secrets are not: the operator reads Secrets by name only and
//! never caches them, so a client that is not ready is rechecked every
//! [`RECHECK`] instead, and a ready one at the resync period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Resource, ResourceExt};
use medembed_api::crd::{
    AuthMode, EmbeddingClient, EmbeddingClientStatus, EmbeddingEndpoint, Seniority,
    REASON_DUPLICATE_KEY,
};
use serde_json::json;

use super::{key_of, now_rfc3339, Ctx};
use crate::resources::MANAGER;
use crate::status::{self, cond};
use crate::Error;

const NAME: &str = "client";

/// How soon a client that is not ready is checked again (its Secret may
/// have been created or fixed since; Secrets are not watched).
pub const RECHECK: Duration = Duration::from_secs(10);

/// Runs the controller until the returned future is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let controller = Controller::new(ctx.watched::<EmbeddingClient>(), watcher::Config::default());
    let clients = controller.store();
    controller
        .with_config(ctx.config.controller())
        .watches(
            ctx.watched::<EmbeddingEndpoint>(),
            watcher::Config::default(),
            move |ep| {
                let ns = ep.namespace();
                let name = ep.name_any();
                clients
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace() == ns && c.spec.endpoints.contains(&name))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(c: Arc<EmbeddingClient>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.failed(NAME, &key_of(&*c), error)
}

async fn reconcile(c: Arc<EmbeddingClient>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let action = reconcile_inner(&c, &ctx).await?;
    ctx.succeeded(NAME, &key_of(&*c), started);
    Ok(action)
}

/// One thing that keeps a client from calling its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition reason.
    pub reason: &'static str,
    /// What is wrong, naming objects and entries only.
    pub message: String,
}

fn problem(reason: &'static str, message: String) -> Problem {
    Problem { reason, message }
}

/// Whether `value` (a Secret entry) is a hex SHA-256 as the gateway reads it.
pub fn is_hex_sha256(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    v.len() == 64 && v.iter().all(u8::is_ascii_hexdigit)
}

/// The problems of the client's key Secret (`None`: no Secret of that name).
pub fn key_secret_problems(c: &EmbeddingClient, secret: Option<&Secret>) -> Vec<Problem> {
    let Some(keys) = &c.spec.keys else {
        return Vec::new();
    };
    let name = &keys.secret_name;
    let Some(secret) = secret else {
        return vec![problem(
            "KeySecretNotFound",
            format!("Secret {name} not found"),
        )];
    };
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    if ty != "Opaque" {
        return vec![problem(
            "KeySecretInvalid",
            format!("Secret {name} is of type {ty}; the gateway reads Opaque Secrets only"),
        )];
    }
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let mut out = Vec::new();
    match data.get(&keys.primary_key) {
        None => out.push(problem(
            "KeySecretInvalid",
            format!("Secret {name} has no entry {}", keys.primary_key),
        )),
        Some(v) if !is_hex_sha256(&v.0) => out.push(problem(
            "KeySecretInvalid",
            format!(
                "Secret {name}: entry {} is not a hex SHA-256 (64 hex digits) of a key",
                keys.primary_key
            ),
        )),
        Some(_) => {}
    }
    if let Some(v) = data.get(&keys.secondary_key) {
        if !is_hex_sha256(&v.0) {
            out.push(problem(
                "KeySecretInvalid",
                format!(
                    "Secret {name}: entry {} is not a hex SHA-256 (64 hex digits) of a key",
                    keys.secondary_key
                ),
            ));
        }
    }
    out
}

/// The key hashes (lower-case hex) a client's Secret gives it.
pub fn key_hashes(c: &EmbeddingClient, secret: Option<&Secret>) -> Vec<String> {
    let (Some(keys), Some(secret)) = (&c.spec.keys, secret) else {
        return Vec::new();
    };
    let data = secret.data.clone().unwrap_or_default();
    [&keys.primary_key, &keys.secondary_key]
        .into_iter()
        .filter_map(|k| data.get(k))
        .filter(|v| is_hex_sha256(&v.0))
        .map(|v| String::from_utf8_lossy(v.0.trim_ascii()).to_ascii_lowercase())
        .collect()
}

/// `DuplicateKey` when an older client (by [`Seniority`]) holds one of this
/// client's key hashes: the gateway keeps the key for the older one, so a
/// client can never take over another's key. Another namespace's client is
/// not named.
async fn duplicate_key_problems(
    c: &EmbeddingClient,
    secret: Option<&Secret>,
    ctx: &Ctx,
) -> Result<Vec<Problem>, Error> {
    let mine = key_hashes(c, secret);
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let me = Seniority::of(c.meta());
    let ns = c.namespace().unwrap_or_default();
    let mut older: Vec<EmbeddingClient> = ctx
        .watched::<EmbeddingClient>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| o.spec.keys.is_some() && Seniority::of(o.meta()) < me)
        .collect();
    older.sort_by_key(|o| Seniority::of(o.meta()));
    for o in older {
        let (Some(k), Some(ons)) = (&o.spec.keys, o.namespace()) else {
            continue;
        };
        let theirs = key_hashes(
            &o,
            ctx.api::<Secret>(&ons)
                .get_opt(&k.secret_name)
                .await?
                .as_ref(),
        );
        if mine.iter().any(|h| theirs.contains(h)) {
            let who = if ons == ns {
                format!("client {}", o.name_any())
            } else {
                "a client in another namespace".to_string()
            };
            return Ok(vec![problem(
                REASON_DUPLICATE_KEY,
                format!("a key hash of this client is held by an older {who}; the gateway accepts that key for the older one only"),
            )]);
        }
    }
    Ok(Vec::new())
}

/// The problems of the endpoints the client names: missing ones, and ones
/// whose auth mode takes none of its credentials. `found` holds those that
/// exist.
pub fn endpoint_problems(c: &EmbeddingClient, found: &[EmbeddingEndpoint]) -> Vec<Problem> {
    let mut missing = Vec::new();
    let mut unusable = Vec::new();
    for name in &c.spec.endpoints {
        match found.iter().find(|e| &e.name_any() == name) {
            None => missing.push(name.as_str()),
            Some(e) => match e.spec.auth.mode {
                AuthMode::Key if c.spec.keys.is_none() => {
                    unusable.push(format!("{name} is in Key mode and the client has no keys"))
                }
                AuthMode::Token if c.spec.token.is_none() => unusable.push(format!(
                    "{name} is in Token mode and the client has no token identity"
                )),
                _ => {}
            },
        }
    }
    let mut out = Vec::new();
    if !missing.is_empty() {
        out.push(problem(
            "EndpointNotFound",
            format!("no EmbeddingEndpoint named {}", missing.join(", ")),
        ));
    }
    if !unusable.is_empty() {
        out.push(problem("NoUsableCredentials", unusable.join("; ")));
    }
    out
}

async fn reconcile_inner(c: &EmbeddingClient, ctx: &Ctx) -> Result<Action, Error> {
    let ns = c
        .namespace()
        .ok_or_else(|| Error::InvalidObject("no namespace".into()))?;
    let name = c.name_any();
    if c.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let secret = match &c.spec.keys {
        Some(k) => ctx.api::<Secret>(&ns).get_opt(&k.secret_name).await?,
        None => None,
    };
    let endpoints = ctx.api::<EmbeddingEndpoint>(&ns);
    let mut found = Vec::new();
    for e in &c.spec.endpoints {
        if let Some(ep) = endpoints.get_opt(e).await? {
            found.push(ep);
        }
    }
    let mut problems = key_secret_problems(c, secret.as_ref());
    let secret_ok = problems.is_empty();
    problems.extend(endpoint_problems(c, &found));
    if secret_ok {
        problems.extend(duplicate_key_problems(c, secret.as_ref(), ctx).await?);
    }

    let generation = c.metadata.generation;
    let ready = problems.is_empty();
    let (reason, message) = match problems.first() {
        Some(p) => (
            p.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (
            "Valid",
            format!(
                "credentials valid; may call {}",
                c.spec.endpoints.join(", ")
            ),
        ),
    };
    let mut conditions = vec![cond("Ready", ready, reason, message, generation)];
    let old = c.status.clone().unwrap_or_default();
    status::merge_transitions(&mut conditions, &old.conditions, &now_rfc3339());
    let new = EmbeddingClientStatus {
        observed_generation: generation,
        conditions,
    };
    if new != old {
        let changed = status::transitions(&old.conditions, &new.conditions);
        let patch =
            json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient", "status": new});
        ctx.api::<EmbeddingClient>(&ns)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        if let Some(t) = changed.iter().find(|t| t.type_ == "Ready") {
            ctx.event(c, !t.is_true(), &t.reason, t.message.clone())
                .await;
        }
    }
    Ok(Action::requeue(if ready {
        Duration::from_secs(ctx.config.resync_seconds)
    } else {
        RECHECK
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn client(spec: serde_json::Value) -> EmbeddingClient {
        serde_json::from_value(json!({
            "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient",
            "metadata": {"name": "c", "namespace": "ns"}, "spec": spec,
        }))
        .expect("client")
    }

    fn secret(ty: Option<&str>, entries: &[(&str, &str)]) -> Secret {
        Secret {
            type_: ty.map(str::to_string),
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn endpoint(name: &str, mode: &str) -> EmbeddingEndpoint {
        let auth = if mode == "Token" {
            json!({"mode": "Token", "token": {"issuer": "i", "audiences": ["a"], "jwksUri": "https://i/k"}})
        } else {
            json!({"mode": mode})
        };
        serde_json::from_value(json!({
            "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
            "metadata": {"name": name, "namespace": "ns"}, "spec": {"auth": auth},
        }))
        .expect("endpoint")
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn key_secret_checks_name_entries_never_values() {
        let c = client(json!({"endpoints": ["e"], "keys": {"secretName": "k"}}));
        assert_eq!(key_secret_problems(&c, None)[0].reason, "KeySecretNotFound");
        assert!(
            key_secret_problems(&c, Some(&secret(None, &[("primary-sha256", HASH)]))).is_empty()
        );
        assert!(key_secret_problems(
            &c,
            Some(&secret(
                Some("Opaque"),
                &[
                    ("primary-sha256", &format!("{HASH}\n")),
                    ("secondary-sha256", HASH)
                ]
            ))
        )
        .is_empty());
        let bad = key_secret_problems(
            &c,
            Some(&secret(None, &[("primary-sha256", "hunter2-not-a-hash")])),
        );
        assert_eq!(bad[0].reason, "KeySecretInvalid");
        assert!(!bad[0].message.contains("hunter2"), "{}", bad[0].message);
        let missing = key_secret_problems(&c, Some(&secret(None, &[("other", HASH)])));
        assert!(missing[0].message.contains("no entry primary-sha256"));
        let bad_secondary = key_secret_problems(
            &c,
            Some(&secret(
                None,
                &[("primary-sha256", HASH), ("secondary-sha256", "x")],
            )),
        );
        assert!(bad_secondary[0].message.contains("secondary-sha256"));
        let tls = key_secret_problems(
            &c,
            Some(&secret(
                Some("kubernetes.io/tls"),
                &[("primary-sha256", HASH)],
            )),
        );
        assert!(tls[0].message.contains("Opaque"));
        // A token-only client has no Secret to check.
        let t = client(json!({"endpoints": ["e"], "token": {"subject": "s"}}));
        assert!(key_secret_problems(&t, None).is_empty());
    }

    #[test]
    fn endpoints_must_exist_and_take_a_credential() {
        let keys = client(json!({"endpoints": ["a", "b", "c", "d"], "keys": {"secretName": "k"}}));
        let found = [
            endpoint("a", "Key"),
            endpoint("b", "Token"),
            endpoint("c", "Unauthenticated"),
        ];
        let p = endpoint_problems(&keys, &found);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].reason, "EndpointNotFound");
        assert!(p[0].message.contains('d'));
        assert_eq!(p[1].reason, "NoUsableCredentials");
        assert!(
            p[1].message.contains("b is in Token mode"),
            "{}",
            p[1].message
        );
        let both = client(
            json!({"endpoints": ["a", "b"], "keys": {"secretName": "k"}, "token": {"subject": "s"}}),
        );
        assert!(endpoint_problems(&both, &found).is_empty());
    }
}
