//! Worker TLS (`--worker-tls`): the workers' CA and each deployment's
//! serving certificate.
//!
//! Why: the gateway forwards patient images to the workers; with this on,
//! they never cross the cluster network in clear, and the gateway only
//! talks to a worker that proves, with a certificate from the workers' CA,
//! that it serves the deployment the gateway routes to.
//!
//! - The CA is a `kubernetes.io/tls` Secret in the operator's namespace
//!   (`--worker-ca-secret`). When absent, the operator creates one (ECDSA
//!   P-256, ten years); when a user provides it (a hospital's PKI,
//!   cert-manager), it is used as it is. Only the operator reads its key.
//! - Its certificate, never its key, is published as `ca.crt` in a
//!   ConfigMap in the gateway's namespace (`--worker-ca-configmap`,
//!   `--worker-ca-configmap-namespace`), which
//!   the gateway mounts (`--worker-ca-file`). [`refresh`] re-reads the CA
//!   every `--worker-ca-refresh-seconds` (30) and, when it changed,
//!   republishes it and has every
//!   deployment reconciled, so certificates are re-issued under the new CA.
//! - Each deployment's serving certificate ([`ensure_serving`]) is the
//!   Secret `<deployment>-worker-tls`, owned by the `EmbeddingDeployment`,
//!   for `<service>.<ns>.svc` and `<service>.<ns>.svc.cluster.local`, valid
//!   90 days, re-issued when a third of its life is left, when the CA
//!   changed or when its names differ (`medembed_api::pki::renewal`). The
//!   controller requeues at the renewal time. Workers reload the files when
//!   the kubelet updates the mounted Secret: no restart.
//!
//! Secrets are read by name (the deployment controller does not watch
//! them), so a serving Secret deleted by hand comes back at the
//! deployment's next reconcile.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::ResourceExt;
use medembed_api::crd::EmbeddingDeployment;
use medembed_api::pki::{self, KeyedCert};
use medembed_api::workers::{
    worker_name, worker_server_name, worker_tls_secret_name, CA_CERT_ENTRY, TLS_CERT_ENTRY,
    TLS_KEY_ENTRY,
};
use serde_json::json;
use tokio::sync::watch;

use crate::controller::Ctx;
use crate::resources::{self, MANAGED_BY, MANAGER};
use crate::Error;

/// The earliest a deployment is requeued for its certificate.
const MIN_REQUEUE: Duration = Duration::from_secs(60);

/// The workers' CA as last read, and a signal for each change of it.
#[derive(derive_more::Debug)]
pub struct CaState {
    #[debug(skip)]
    current: RwLock<Option<Arc<KeyedCert>>>,
    changed: watch::Sender<()>,
}

impl Default for CaState {
    fn default() -> Self {
        CaState {
            current: RwLock::new(None),
            changed: watch::channel(()).0,
        }
    }
}

impl CaState {
    /// A stream that yields each time the CA changes (for the deployment
    /// controller's `reconcile_all_on`).
    pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let mut rx = self.changed.subscribe();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    fn get(&self) -> Option<Arc<KeyedCert>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records `ca`; whether it differs from the one before.
    fn set(&self, ca: Arc<KeyedCert>) -> bool {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = cur
            .as_ref()
            .map(|c| c.cert_pem != ca.cert_pem)
            .unwrap_or(true);
        *cur = Some(ca);
        changed
    }
}

fn entry(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Reads the CA Secret, creating it when absent.
async fn read_or_create_ca(ctx: &Ctx) -> Result<KeyedCert, Error> {
    let ns = &ctx.config.lease_namespace;
    let name = &ctx.config.worker_ca_secret;
    let api = ctx.api::<Secret>(ns);
    let secret = match api.get_opt(name).await? {
        Some(s) => s,
        None => {
            let ca = pki::new_ca("medembed worker CA", SystemTime::now(), pki::CA_VALIDITY)
                .map_err(|e| Error::Certificate(e.to_string()))?;
            let secret = resources::tls_secret_in(name, ns, &ca, None)?;
            match api.create(&PostParams::default(), &secret).await {
                Ok(s) => {
                    tracing::info!(secret = %format!("{ns}/{name}"), "created the workers' CA");
                    s
                }
                // Created meanwhile (another replica, or its owner).
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let ca = KeyedCert {
        cert_pem: entry(&secret, TLS_CERT_ENTRY).unwrap_or_default(),
        key_pem: entry(&secret, TLS_KEY_ENTRY).unwrap_or_default(),
    };
    pki::check_ca(&ca).map_err(|e| {
        Error::Certificate(format!(
            "CA Secret {ns}/{name} (tls.crt, tls.key in PKCS #8): {e}"
        ))
    })?;
    Ok(ca)
}

/// Publishes the CA certificate for the gateway.
async fn publish(ctx: &Ctx, ca: &KeyedCert) -> Result<(), Error> {
    let cfg = &ctx.config;
    let Some(ns) = [&cfg.worker_ca_configmap_namespace, &cfg.gateway_namespace]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
    else {
        return Ok(());
    };
    let name = &ctx.config.worker_ca_configmap;
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "data": {CA_CERT_ENTRY: ca.cert_pem},
    }))?;
    ctx.api::<ConfigMap>(ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

/// Reads the CA (creating it if needed), publishes it, and signals the
/// deployments when it changed.
pub async fn load_ca(ctx: &Ctx) -> Result<Arc<KeyedCert>, Error> {
    let ca = Arc::new(read_or_create_ca(ctx).await?);
    publish(ctx, &ca).await?;
    if ctx.worker_ca.set(ca.clone()) {
        tracing::info!("workers' CA loaded and published");
        ctx.worker_ca.changed.send_replace(());
    }
    Ok(ca)
}

/// The CA as last read, reading it on first use.
async fn current_ca(ctx: &Ctx) -> Result<Arc<KeyedCert>, Error> {
    match ctx.worker_ca.get() {
        Some(ca) => Ok(ca),
        None => load_ca(ctx).await,
    }
}

/// Keeps the CA read and published while the operator leads.
pub async fn refresh(ctx: Arc<Ctx>) {
    loop {
        if let Err(e) = load_ca(&ctx).await {
            tracing::error!(error = %e, "workers' CA unusable; serving certificates are not issued");
        }
        tokio::time::sleep(Duration::from_secs(
            ctx.config.worker_ca_refresh_seconds.max(1),
        ))
        .await;
    }
}

/// The names of a deployment's serving certificate.
pub fn serving_names(deployment: &str, namespace: &str) -> Vec<String> {
    let host = worker_server_name(&worker_name(deployment), namespace);
    vec![host.clone(), format!("{host}.cluster.local")]
}

/// Issues (or keeps) the serving certificate of `dep`'s workers; returns
/// how long until it should be looked at again.
pub async fn ensure_serving(ctx: &Ctx, dep: &EmbeddingDeployment) -> Result<Duration, Error> {
    let ns = dep
        .namespace()
        .ok_or_else(|| Error::InvalidObject("no namespace".into()))?;
    let name = dep.name_any();
    let ca = current_ca(ctx).await?;
    let secret_name = worker_tls_secret_name(&name);
    let api = ctx.api::<Secret>(&ns);
    let existing = api.get_opt(&secret_name).await?;
    let cert_pem = existing.as_ref().and_then(|s| entry(s, TLS_CERT_ENTRY));
    let names = serving_names(&name, &ns);
    let now = SystemTime::now();
    let cert_pem = match pki::renewal(cert_pem.as_deref(), &ca.cert_pem, &names, now) {
        None => cert_pem.unwrap_or_default(),
        Some(why) => {
            let issued = pki::issue(&ca, &names, now, pki::SERVING_VALIDITY)
                .map_err(|e| Error::Certificate(format!("{secret_name}: {e}")))?;
            let secret = resources::worker_tls_secret(dep, &issued, &ca.cert_pem)?;
            api.patch(
                &secret_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
            tracing::info!(deployment = %format!("{ns}/{name}"), reason = why.as_str(),
                           "issued the workers' serving certificate");
            issued.cert_pem
        }
    };
    let renew_at = pki::inspect(&cert_pem)
        .map_err(|e| Error::Certificate(e.to_string()))?
        .renew_at();
    Ok(renew_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(MIN_REQUEUE))
}
