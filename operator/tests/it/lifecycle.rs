//! The life of a deployment against the real control plane, the operator
//! running under its generated RBAC role, and real worker processes serving
//! the TEST MODEL (random weights):
//!
//! apply -> children with the expected fields -> Ready once the workers'
//! /readyz pass -> a model change rolls the workers without losing ready
//! capacity -> a GPU count change re-creates the pods with the new request ->
//! autoscaling adds an HPA, turning it off prunes it -> delete -> children
//! garbage-collected.

use std::time::{Duration, Instant};

use crate::common::{create, until_deployment, LIMIT, STEP};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use medembed_api::crd::{find_condition, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_testsupport::wait;
use serde_json::json;

fn ready_reason(d: &EmbeddingDeployment) -> Option<(String, String)> {
    let st = d.status.as_ref()?;
    let c = find_condition(&st.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

async fn pods_of(api: &Api<Pod>, name: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("medembed.io/deployment={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn env_of(p: &Pod, key: &str) -> Option<String> {
    p.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == key)
        .and_then(|e| e.value.clone())
}

fn gpu_request(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.containers[0]
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("nvidia.com/gpu")
        .map(|q| q.0.clone())
}

/// Waits until the deployment reports Ready with `n` ready replicas on the
/// current generation.
async fn until_ready(deps: &Api<EmbeddingDeployment>, name: &str, n: i32) -> EmbeddingDeployment {
    let what = format!("{name} Ready with {n} workers");
    until_deployment(deps, name, &what, |d, st| {
        ready_reason(d).is_some_and(|(s, _)| s == "True")
            && st.ready_replicas == n
            && st.updated_replicas == n
            && st.observed_generation == d.metadata.generation
            && find_condition(&st.conditions, "Progressing").is_some_and(|c| !c.is_true())
    })
    .await
    .expect("deployment becomes ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_lifecycle() {
    let _heavy = crate::common::exclusive().await;
    let started = Instant::now();
    let env = crate::common::setup("op-life", &[("gpu-0", 2), ("gpu-1", 2)]).await;
    let op = env.start_operator("op-a").await;
    let result = wait::within("lifecycle", Duration::from_secs(600), async {
        env.model_claim("models").await;
        let eps = env.ns.api::<EmbeddingEndpoint>();
        let deps = env.ns.api::<EmbeddingDeployment>();
        create(&eps, "chest", json!({"hosts": ["chest.example.org"], "auth": {"mode": "Key"}, "traffic": {"blue": 100}})).await;
        let mut spec = env.deployment_spec("chest", "models", "v1");
        spec["instanceCount"] = json!(2);
        spec["resources"] = json!({"gpu": {"count": 1}, "cpu": "1", "memory": "1Gi"});
        spec["env"] = json!([{"name": "MEDEMBED_SHUTDOWN_GRACE_SECONDS", "value": "1"}]);
        create(&deps, "blue", spec).await;

        // Children with the expected fields.
        let d = wait::until("worker Deployment exists", LIMIT, STEP, || async {
            env.ns.api::<Deployment>().get_opt("blue-worker").await
        })
        .await
        .expect("worker deployment");
        let ds = d.spec.clone().expect("spec");
        assert_eq!(ds.replicas, Some(2));
        let ru = ds.strategy.clone().and_then(|s| s.rolling_update).expect("rolling update");
        assert_eq!(serde_json::to_value(&ru.max_unavailable).expect("json"), json!(0));
        let owner = &d.metadata.owner_references.clone().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("EmbeddingDeployment", "blue", Some(true)));
        let c = &ds.template.spec.clone().expect("pod spec").containers[0];
        assert_eq!(c.image.as_deref(), Some(crate::common::WORKER_IMAGE));
        let probe = c.readiness_probe.clone().expect("readiness probe");
        assert_eq!(probe.http_get.expect("http").path.as_deref(), Some("/readyz"));
        // The children are applied one after another: wait for each.
        let svc = wait::until("worker Service exists", LIMIT, STEP, || async {
            env.ns.api::<Service>().get_opt("blue-worker").await
        })
        .await
        .expect("service");
        assert_eq!(svc.spec.expect("svc spec").selector.expect("selector").get("app.kubernetes.io/instance").map(String::as_str), Some("blue"));
        let cm = wait::until("worker ConfigMap exists", LIMIT, STEP, || async {
            env.ns.api::<ConfigMap>().get_opt("blue-worker-config").await
        })
        .await
        .expect("configmap");
        let data = cm.data.expect("data");
        assert_eq!(data.get("MEDEMBED_MAX_BATCH_IMAGES").map(String::as_str), Some("8"));
        assert_eq!(data.get("MEDEMBED_REQUEST_TIMEOUT_MS").map(String::as_str), Some("5000"));
        let pdb = wait::until("worker PodDisruptionBudget exists", LIMIT, STEP, || async {
            env.ns.api::<PodDisruptionBudget>().get_opt("blue-worker").await
        })
        .await
        .expect("pdb");
        assert!(pdb.spec.expect("pdb spec").max_unavailable.is_some());
        assert!(env.ns.api::<HorizontalPodAutoscaler>().get_opt("blue-worker").await.expect("get hpa").is_none());
        // Every child is written by the one field manager.
        for mf in d.metadata.managed_fields.iter().flatten() {
            if mf.operation.as_deref() == Some("Apply") {
                assert_eq!(mf.manager.as_deref(), Some("medembed-operator"));
            }
        }
        // Key mode: a generated Secret with two keys, named in the status.
        let secret = wait::until("key secret", LIMIT, STEP, || async {
            env.ns.api::<Secret>().get_opt("chest-keys").await
        })
        .await
        .expect("key secret");
        let keys = secret.data.expect("secret data");
        assert_eq!(keys.get("primaryKey").map(|k| k.0.len()), Some(43));
        assert_ne!(keys.get("primaryKey"), keys.get("secondaryKey"));

        // Ready once the real workers loaded the model and passed /readyz.
        let t = Instant::now();
        let d = until_ready(&deps, "blue", 2).await;
        eprintln!("2 workers ready in {:?}", t.elapsed());
        assert_eq!(ready_reason(&d).map(|r| r.1).as_deref(), Some("WorkersReady"));
        assert_eq!(env.agent.processes(Some(env.ns.name())).len(), 2);
        let ep = wait::until("endpoint ready", LIMIT, STEP, || async {
            let e = eps.get("chest").await?;
            let ok = e.status.as_ref().is_some_and(|s| find_condition(&s.conditions, "Ready").is_some_and(|c| c.is_true()));
            Ok::<_, kube::Error>(ok.then_some(e))
        })
        .await
        .expect("endpoint ready");
        let est = ep.status.expect("endpoint status");
        assert_eq!(est.scoring_uri.as_deref(), Some("https://chest.example.org/score"));
        assert_eq!(est.key_secret_name.as_deref(), Some("chest-keys"));
        assert_eq!(est.deployments.len(), 1);
        assert!(est.deployments[0].ready && est.deployments[0].traffic == 100);

        // A model change rolls the workers; ready capacity never drops.
        let pods = env.ns.api::<Pod>();
        let patch = json!({"spec": {"model": {"pvc": {"claimName": "models", "path": "v2"}}}});
        deps.patch("blue", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("model change");
        let t = Instant::now();
        let mut min_ready = i32::MAX;
        loop {
            let ps = pods_of(&pods, "blue").await;
            let ready = ps.iter().filter(|p| pod_ready(p)).count() as i32;
            min_ready = min_ready.min(ready);
            let all_new = ps.len() == 2
                && ps.iter().all(|p| p.metadata.deletion_timestamp.is_none()
                    && env_of(p, "MEDEMBED_MODEL_DIR").is_some_and(|m| m.ends_with("/v2")));
            if all_new && ready == 2 {
                break;
            }
            assert!(t.elapsed() < LIMIT, "rollout did not finish\n{}", env.ns.describe().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("model rollout done in {:?}; fewest ready workers during it: {min_ready}", t.elapsed());
        assert!(min_ready >= 2, "ready capacity dropped to {min_ready} during the rollout");
        until_ready(&deps, "blue", 2).await;

        // A GPU count change re-creates the pods with the new request.
        let patch = json!({"spec": {"instanceCount": 1, "resources": {"gpu": {"count": 2}}}});
        deps.patch("blue", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("gpu change");
        wait::until("pods with 2 GPUs", LIMIT, STEP, || async {
            let ps = pods_of(&pods, "blue").await;
            let ok = ps.len() == 1 && ps.iter().all(|p| gpu_request(p).as_deref() == Some("2") && pod_ready(p));
            Ok::<_, kube::Error>(ok.then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", futures::executor::block_on(env.ns.describe())));
        until_ready(&deps, "blue", 1).await;

        // Autoscaling adds an HPA on the workers' utilisation; turning it off prunes it.
        let patch = json!({"spec": {"instanceCount": null, "autoscale": {"minReplicas": 1, "maxReplicas": 3, "targetUtilizationPercent": 70}}});
        deps.patch("blue", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("autoscale on");
        let hpa = wait::until("hpa", LIMIT, STEP, || async {
            env.ns.api::<HorizontalPodAutoscaler>().get_opt("blue-worker").await
        })
        .await
        .expect("hpa");
        let hs = hpa.spec;
        assert_eq!((hs.min_replicas, hs.max_replicas), (Some(1), 3));
        let m = &hs.metrics.expect("metrics")[0];
        assert_eq!(m.pods.as_ref().expect("pods metric").metric.name, "medembed_worker_utilization_percent");
        let patch = json!({"spec": {"autoscale": null, "instanceCount": 1}});
        deps.patch("blue", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("autoscale off");
        wait::until("hpa pruned", LIMIT, STEP, || async {
            let h = env.ns.api::<HorizontalPodAutoscaler>().get_opt("blue-worker").await?;
            Ok::<_, kube::Error>(h.is_none().then_some(()))
        })
        .await
        .expect("hpa pruned");

        // Delete: the children are garbage-collected, the workers stop.
        deps.delete("blue", &DeleteParams::foreground()).await.expect("delete");
        wait::until("children garbage-collected", LIMIT, STEP, || async {
            let d = env.ns.api::<Deployment>().get_opt("blue-worker").await?;
            let s = env.ns.api::<Service>().get_opt("blue-worker").await?;
            let c = env.ns.api::<ConfigMap>().get_opt("blue-worker-config").await?;
            let p = env.ns.api::<PodDisruptionBudget>().get_opt("blue-worker").await?;
            let procs = env.agent.processes(Some(env.ns.name())).len();
            Ok::<_, kube::Error>((d.is_none() && s.is_none() && c.is_none() && p.is_none() && procs == 0).then_some(()))
        })
        .await
        .expect("children gone");
        eps.delete("chest", &DeleteParams::foreground()).await.expect("delete endpoint");
        wait::until("key secret garbage-collected", LIMIT, STEP, || async {
            let s = env.ns.api::<Secret>().get_opt("chest-keys").await?;
            Ok::<_, kube::Error>(s.is_none().then_some(()))
        })
        .await
        .expect("secret gone");

        let metrics = op.metrics_text();
        assert!(metrics.contains("medembed_operator_reconciles_total{controller=\"deployment\"}"), "{metrics}");
    })
    .await;
    op.shutdown().await.expect("operator stops");
    env.finish(result, "deployment_lifecycle", started).await;
}
