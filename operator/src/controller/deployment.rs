//! The `EmbeddingDeployment` controller: applies the worker children and
//! reports the workers' state.
//!
//! One reconcile: read the endpoint (for its request settings and response
//! format), check the model source, apply ConfigMap, Deployment, Service,
//! PodDisruptionBudget, NetworkPolicy (when the gateway's namespace is
//! known) and HPA (or delete an HPA no longer wanted), then
//! compute the status from the worker Deployment and its pods, write it when
//! it changed, and publish an event for each condition that changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Resource, ResourceExt};
use medembed_api::crd::{
    EmbeddingDeployment, EmbeddingDeploymentStatus, EmbeddingEndpoint, DEFAULT_GPU_RESOURCE,
};
use serde_json::json;

use super::{key_of, now_rfc3339, Ctx};
use crate::resources::{self, DEPLOYMENT_LABEL, MANAGED_BY, MANAGER};
use crate::status::{self, Failure};
use crate::Error;

const NAME: &str = "deployment";

/// Runs the controller until the returned future is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(
        ctx.watched::<EmbeddingDeployment>(),
        watcher::Config::default(),
    )
    .with_config(ctx.config.controller());
    let store = controller.store();
    // A new workers' CA: every serving certificate is re-issued under it.
    let controller = if ctx.config.worker_tls {
        controller.reconcile_all_on(ctx.worker_ca.changes())
    } else {
        controller
    };
    controller
        .owns(ctx.watched::<Deployment>(), managed.clone())
        .owns(ctx.watched::<Service>(), managed.clone())
        .owns(ctx.watched::<ConfigMap>(), managed.clone())
        .owns(ctx.watched::<PodDisruptionBudget>(), managed.clone())
        .owns(ctx.watched::<HorizontalPodAutoscaler>(), managed.clone())
        .owns(ctx.watched::<NetworkPolicy>(), managed.clone())
        .watches(ctx.watched::<Pod>(), managed, |pod| {
            let ns = pod.namespace()?;
            let name = pod.labels().get(DEPLOYMENT_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .watches(
            ctx.watched::<EmbeddingEndpoint>(),
            watcher::Config::default(),
            move |ep| {
                let ns = ep.namespace().unwrap_or_default();
                let name = ep.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|d| {
                        d.spec.endpoint == name && d.namespace().as_deref() == Some(ns.as_str())
                    })
                    .map(|d| ObjectRef::from_obj(&*d))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(dep: Arc<EmbeddingDeployment>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.failed(NAME, &key_of(&*dep), error)
}

async fn reconcile(dep: Arc<EmbeddingDeployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let action = reconcile_inner(&dep, &ctx).await?;
    ctx.succeeded(NAME, &key_of(&*dep), started);
    Ok(action)
}

async fn apply<K>(ctx: &Ctx, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::InvalidObject("no name".into()))?;
    ctx.api::<K>(ns)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    Ok(())
}

async fn reconcile_inner(dep: &EmbeddingDeployment, ctx: &Ctx) -> Result<Action, Error> {
    let ns = dep
        .namespace()
        .ok_or_else(|| Error::InvalidObject("no namespace".into()))?;
    let name = dep.name_any();
    if dep.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    let endpoint = ctx
        .api::<EmbeddingEndpoint>(&ns)
        .get_opt(&dep.spec.endpoint)
        .await?;
    let settings = resources::EndpointSettings::of(endpoint.as_ref());

    // A model source problem Kubernetes would only show as a pending pod.
    let mut spec_problem: Option<Failure> = None;
    if let Some(pvc) = &dep.spec.model.pvc {
        if ctx
            .api::<PersistentVolumeClaim>(&ns)
            .get_opt(&pvc.claim_name)
            .await?
            .is_none()
        {
            spec_problem = Some(Failure {
                reason: "ModelSourceInvalid",
                message: format!("persistentvolumeclaim \"{}\" not found", pvc.claim_name),
            });
        }
    }

    // The serving certificate first: the workers mount it.
    let tls_recheck = if ctx.config.worker_tls {
        Some(crate::worker_tls::ensure_serving(ctx, dep).await?)
    } else {
        None
    };
    apply(ctx, &ns, &resources::config_map(dep, &settings)?).await?;
    apply(
        ctx,
        &ns,
        &resources::deployment(dep, &settings, &ctx.defaults)?,
    )
    .await?;
    apply(ctx, &ns, &resources::service(dep, &ctx.defaults)?).await?;
    apply(ctx, &ns, &resources::pdb(dep)?).await?;
    if let Some(np) = &ctx.network_policy {
        apply(
            ctx,
            &ns,
            &resources::network_policy(dep, &ctx.defaults, np)?,
        )
        .await?;
    }
    match resources::hpa(dep)? {
        Some(h) => apply(ctx, &ns, &h).await?,
        None => prune_hpa(ctx, &ns, dep).await?,
    }

    // Status from what the cluster shows.
    let worker = ctx
        .api::<Deployment>(&ns)
        .get_opt(&resources::worker_name(&name))
        .await?;
    let pods = ctx
        .api::<Pod>(&ns)
        .list(&ListParams::default().labels(&format!("{DEPLOYMENT_LABEL}={name}")))
        .await?
        .items;
    let gpu = dep.spec.resources.gpu.as_ref().map(|g| {
        if g.resource_name.is_empty() {
            DEFAULT_GPU_RESOURCE.to_string()
        } else {
            g.resource_name.clone()
        }
    });
    let failure = status::pod_failure(&pods, gpu.as_deref(), k8s_openapi::jiff::Timestamp::now());
    let r = status::replicas(worker.as_ref());
    let generation = dep.metadata.generation;
    let mut conditions = status::deployment_conditions(r, failure, spec_problem, generation);
    let old = dep.status.clone().unwrap_or_default();
    status::merge_transitions(&mut conditions, &old.conditions, &now_rfc3339());
    let new = EmbeddingDeploymentStatus {
        observed_generation: generation,
        conditions,
        replicas: r.desired,
        ready_replicas: r.ready,
        updated_replicas: r.updated,
        service_name: Some(resources::worker_name(&name)),
    };
    if new != old {
        let changed = status::transitions(&old.conditions, &new.conditions);
        let patch = json!({
            "apiVersion": "medembed.io/v1alpha1",
            "kind": "EmbeddingDeployment",
            "status": new,
        });
        ctx.api::<EmbeddingDeployment>(&ns)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        for c in changed {
            let (warning, publish) = match (c.type_.as_str(), c.is_true()) {
                ("Ready", true) => (false, true),
                ("Ready", false) => (
                    false,
                    old.conditions
                        .iter()
                        .any(|o| o.type_ == "Ready" && o.is_true()),
                ),
                ("Degraded", true) => (true, true),
                ("Degraded", false) => (false, !old.conditions.is_empty()),
                _ => (false, false),
            };
            if publish {
                let note = if c.message.is_empty() {
                    c.reason.clone()
                } else {
                    c.message.clone()
                };
                ctx.event(dep, warning, &c.reason, note).await;
            }
        }
        tracing::info!(
            deployment = %key_of(dep),
            desired = new.replicas,
            ready = new.ready_replicas,
            reason = %new.conditions.first().map(|c| c.reason.as_str()).unwrap_or(""),
            "status updated"
        );
    }
    let settled = new.conditions.iter().all(|c| match c.type_.as_str() {
        "Ready" => c.is_true(),
        _ => !c.is_true(),
    });
    let next = if settled {
        Duration::from_secs(ctx.config.resync_seconds)
    } else {
        Duration::from_secs(15)
    };
    // Back before the serving certificate is due for renewal.
    Ok(Action::requeue(tls_recheck.map_or(next, |t| t.min(next))))
}

/// Deletes the HPA of a deployment that no longer autoscales (only one this
/// operator made for it).
async fn prune_hpa(ctx: &Ctx, ns: &str, dep: &EmbeddingDeployment) -> Result<(), Error> {
    let api = ctx.api::<HorizontalPodAutoscaler>(ns);
    let name = resources::worker_name(&dep.name_any());
    if let Some(h) = api.get_opt(&name).await? {
        let ours = h
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == dep.meta().uid.as_ref() && o.controller == Some(true));
        if ours {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(deployment = %key_of(dep), "deleted the HPA (autoscaling off)")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
