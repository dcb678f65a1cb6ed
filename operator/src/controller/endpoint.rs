//! The `EmbeddingEndpoint` controller: keeps the key Secret of an endpoint in
//! Key mode, and reports its scoring URL and each deployment's readiness and
//! traffic.
//!
//! The generated Secret is created once with two random 256-bit keys and
//! never rewritten (rotation is the user's: replace a key in the Secret). It
//! is deleted when the endpoint leaves Key mode or names its own Secret. Key
//! values are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Resource, ResourceExt};
use medembed_api::crd::{
    find_condition, AuthMode, EmbeddingDeployment, EmbeddingEndpoint, EmbeddingEndpointStatus,
    EndpointDeploymentStatus, Seniority, REASON_HOST_CONFLICT, REASON_HOST_NOT_ALLOWED,
    REASON_SECRET_CONFLICT,
};
use serde_json::json;

use super::{key_of, now_rfc3339, Ctx};
use crate::resources::{self, MANAGER};
use crate::status::{self, cond};
use crate::Error;

const NAME: &str = "endpoint";

/// Runs the controller until the returned future is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let controller = Controller::new(
        ctx.watched::<EmbeddingEndpoint>(),
        watcher::Config::default(),
    );
    let store = controller.store();
    controller
        .with_config(ctx.config.controller())
        // A change to an endpoint (its deletion included) may settle another's
        // host conflict: reconcile every endpoint sharing one of its hosts.
        .watches(
            ctx.watched::<EmbeddingEndpoint>(),
            watcher::Config::default(),
            move |changed| {
                let uid = changed.meta().uid.clone();
                store
                    .state()
                    .into_iter()
                    .filter(|other| other.meta().uid != uid && shares_host(&changed, other))
                    .map(|other| ObjectRef::from_obj(&*other))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            ctx.watched::<EmbeddingDeployment>(),
            watcher::Config::default(),
            |d| {
                let ns = d.namespace()?;
                Some(ObjectRef::new(&d.spec.endpoint).within(&ns))
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(ep: Arc<EmbeddingEndpoint>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.failed(NAME, &key_of(&*ep), error)
}

async fn reconcile(ep: Arc<EmbeddingEndpoint>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let action = reconcile_inner(&ep, &ctx).await?;
    ctx.succeeded(NAME, &key_of(&*ep), started);
    Ok(action)
}

const KEY_SECRET_INVALID: &str = "KeySecretInvalid";

/// Whether `secret` has `ep` (this very object: its UID) as an owner.
fn owned_by(secret: &Secret, ep: &EmbeddingEndpoint) -> bool {
    ep.meta()
        .uid
        .as_ref()
        .is_some_and(|uid| secret.owner_references().iter().any(|o| &o.uid == uid))
}

fn shares_host(a: &EmbeddingEndpoint, b: &EmbeddingEndpoint) -> bool {
    a.spec
        .hosts
        .iter()
        .any(|h| b.spec.hosts.iter().any(|o| o.eq_ignore_ascii_case(h)))
}

/// The host names of `ep` claimed by an older endpoint (the gateway routes
/// them to that one), each with its owner's `namespace/name`.
pub fn host_conflicts(ep: &EmbeddingEndpoint, all: &[EmbeddingEndpoint]) -> Vec<(String, String)> {
    let mine = Seniority::of(ep.meta());
    let mut out = Vec::new();
    for h in &ep.spec.hosts {
        let owner = all
            .iter()
            .filter(|o| o.meta().uid != ep.meta().uid)
            .filter(|o| o.spec.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)))
            .map(|o| Seniority::of(o.meta()))
            .filter(|s| *s < mine)
            .min();
        if let Some(owner) = owner {
            out.push((h.clone(), owner.id));
        }
    }
    out
}

/// Traffic of each deployment: the spec's weights, or all of it to a single
/// deployment when no weights are given.
pub fn traffic_of(ep: &EmbeddingEndpoint, deployment: &str, count: usize) -> i32 {
    if ep.spec.traffic.is_empty() {
        if count == 1 {
            100
        } else {
            0
        }
    } else {
        ep.spec.traffic.get(deployment).copied().unwrap_or(0)
    }
}

async fn ensure_keys(
    ep: &EmbeddingEndpoint,
    ctx: &Ctx,
    ns: &str,
) -> Result<(Option<String>, Option<(&'static str, String)>), Error> {
    let secrets = ctx.api::<Secret>(ns);
    let generated = medembed_api::crd::generated_key_secret_name(&ep.name_any());
    let wants_generated =
        ep.spec.auth.mode == AuthMode::Key && ep.spec.auth.key_secret_name.is_none();
    if wants_generated {
        if let Some(existing) = secrets.get_opt(&generated).await? {
            // Adopted only when this endpoint created it: a Secret of that
            // name made by anyone else holds keys someone else knows.
            if !owned_by(&existing, ep) {
                return Ok((
                    None,
                    Some((
                        REASON_SECRET_CONFLICT,
                        format!(
                            "Secret {generated} exists and is not owned by this endpoint; delete it or name a key Secret in spec.auth.keySecretName"
                        ),
                    )),
                ));
            }
        } else {
            let s =
                resources::key_secret(ep, &resources::generate_key(), &resources::generate_key())?;
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &s,
                )
                .await
            {
                Ok(_) => {
                    ctx.event(
                        ep,
                        false,
                        "KeysGenerated",
                        format!("generated a primary and a secondary key in Secret {generated}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok((Some(generated), None));
    }
    // Not wanted (any more): remove a Secret this endpoint generated.
    if let Some(s) = secrets.get_opt(&generated).await? {
        if owned_by(&s, ep) {
            match secrets.delete(&generated, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    match (&ep.spec.auth.mode, &ep.spec.auth.key_secret_name) {
        (AuthMode::Key, Some(name)) => {
            let problem = match secrets.get_opt(name).await? {
                None => Some((KEY_SECRET_INVALID, format!("Secret {name} not found"))),
                Some(s) => {
                    let data = s.data.unwrap_or_default();
                    let primary = medembed_api::crd::ENDPOINT_KEY_ENTRIES[0];
                    (!data.contains_key(primary)).then(|| {
                        (
                            KEY_SECRET_INVALID,
                            format!("Secret {name} has no {primary}"),
                        )
                    })
                }
            };
            Ok((Some(name.clone()), problem))
        }
        _ => Ok((None, None)),
    }
}

async fn reconcile_inner(ep: &EmbeddingEndpoint, ctx: &Ctx) -> Result<Action, Error> {
    let ns = ep
        .namespace()
        .ok_or_else(|| Error::InvalidObject("no namespace".into()))?;
    let name = ep.name_any();
    if ep.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let (key_secret_name, key_problem) = ensure_keys(ep, ctx, &ns).await?;
    let not_allowed: Vec<&str> = ep
        .spec
        .hosts
        .iter()
        .filter(|h| !ctx.config.allowed_hosts.allows(&ns, h))
        .map(String::as_str)
        .collect();
    let conflicts = if ep.spec.hosts.is_empty() {
        Vec::new()
    } else {
        let all = ctx
            .watched::<EmbeddingEndpoint>()
            .list(&ListParams::default())
            .await?
            .items;
        host_conflicts(ep, &all)
    };
    let host_problem = if !not_allowed.is_empty() {
        Some((
            REASON_HOST_NOT_ALLOWED,
            format!(
                "host name(s) not allowed in namespace {ns}: {}",
                not_allowed.join(", ")
            ),
        ))
    } else if !conflicts.is_empty() {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(h, owner)| format!("{h} (claimed by {owner})"))
            .collect();
        Some((
            REASON_HOST_CONFLICT,
            format!(
                "host name(s) claimed by an older endpoint, not routed here: {}",
                list.join(", ")
            ),
        ))
    } else {
        None
    };

    let mut deps: Vec<EmbeddingDeployment> = ctx
        .api::<EmbeddingDeployment>(&ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|d| d.spec.endpoint == name)
        .collect();
    deps.sort_by_key(|d| d.name_any());
    let count = deps.len();
    let mirror = ep.spec.mirror_traffic.clone();
    let rows: Vec<EndpointDeploymentStatus> = deps
        .iter()
        .map(|d| {
            let dn = d.name_any();
            let st = d.status.clone().unwrap_or_default();
            let ready = find_condition(&st.conditions, "Ready").is_some_and(|c| c.is_true());
            EndpointDeploymentStatus {
                traffic: traffic_of(ep, &dn, count),
                mirror: mirror
                    .as_ref()
                    .filter(|m| m.deployment == dn)
                    .map_or(0, |m| m.percent),
                name: dn,
                ready,
                ready_replicas: st.ready_replicas,
            }
        })
        .collect();

    let mut missing: Vec<String> = ep
        .spec
        .traffic
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(d, _)| d.clone())
        .chain(mirror.iter().map(|m| m.deployment.clone()))
        .filter(|d| !rows.iter().any(|r| &r.name == d))
        .collect();
    missing.dedup();
    let serving: Vec<&EndpointDeploymentStatus> = rows.iter().filter(|r| r.traffic > 0).collect();
    let not_ready: Vec<&str> = serving
        .iter()
        .filter(|r| !r.ready)
        .map(|r| r.name.as_str())
        .collect();
    let generation = ep.metadata.generation;
    let ready = !serving.is_empty()
        && not_ready.is_empty()
        && missing.is_empty()
        && key_problem.is_none()
        && host_problem.is_none();
    let (reason, message) = if let Some((reason, p)) = &host_problem {
        (*reason, p.clone())
    } else if let Some((reason, p)) = &key_problem {
        (*reason, p.clone())
    } else if !missing.is_empty() {
        (
            "DeploymentNotFound",
            format!("no EmbeddingDeployment named {}", missing.join(", ")),
        )
    } else if serving.is_empty() {
        ("NoTraffic", "no deployment takes traffic".to_string())
    } else if !not_ready.is_empty() {
        (
            "DeploymentNotReady",
            format!("not ready: {}", not_ready.join(", ")),
        )
    } else {
        (
            "DeploymentsReady",
            format!("{} deployment(s) serving", serving.len()),
        )
    };
    let mut conditions = vec![
        cond("Ready", ready, reason, message.clone(), generation),
        cond(
            "Progressing",
            rows.iter().any(|r| !r.ready),
            if rows.iter().any(|r| !r.ready) {
                "DeploymentsProgressing"
            } else {
                "Stable"
            },
            "",
            generation,
        ),
        cond(
            "Degraded",
            !ready && (key_problem.is_some() || host_problem.is_some() || !missing.is_empty()),
            reason,
            message,
            generation,
        ),
    ];
    let old = ep.status.clone().unwrap_or_default();
    status::merge_transitions(&mut conditions, &old.conditions, &now_rfc3339());
    let new = EmbeddingEndpointStatus {
        observed_generation: generation,
        conditions,
        scoring_uri: Some(ctx.config.scoring_uri(&ns, &name, &ep.spec.hosts)),
        key_secret_name,
        deployments: rows,
    };
    if new != old {
        let changed = status::transitions(&old.conditions, &new.conditions);
        let patch = json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint", "status": new});
        ctx.api::<EmbeddingEndpoint>(&ns)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        if let Some(c) = changed.iter().find(|c| c.type_ == "Ready") {
            ctx.event(
                ep,
                !c.is_true()
                    && (!old.conditions.is_empty()
                        || host_problem.is_some()
                        || key_problem.is_some()),
                &c.reason,
                c.message.clone(),
            )
            .await;
        }
    }
    Ok(Action::requeue(Duration::from_secs(
        ctx.config.resync_seconds,
    )))
}
