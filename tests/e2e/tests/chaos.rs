//! Chaos, end to end, under steady load: the whole system on a real control
//! plane (the Helm chart, two operator replicas, two gateway replicas, the
//! workers of the TEST MODEL), a checked load running through the gateway
//! Service throughout (every answer's status and shape checked; see
//! `medembed_e2e::load`), and one fault per test. Each case counts its own
//! requests and failures and asserts **zero failed requests**:
//!
//! | case | fault |
//! | --- | --- |
//! | [`worker_killed_mid_request`] | a worker SIGKILLed under load |
//! | [`operator_killed_during_blue_green`] | both operator replicas SIGKILLed as the traffic moves 50/50 → 0/100 |
//! | [`api_server_stopped_30s`] | kube-apiserver stopped for 30 s, then started again |
//! | [`redis_stopped`] | the shared quota store stopped, then started again |
//! | [`gateway_rolled`] | the gateway Deployment rolled (a new ReplicaSet) |
//! | [`worker_out_of_memory`] | a deployment whose memory limit is too small |
//! | [`node_lost`] | a GPU node lost with a worker on it |
//!
//! The cluster has a system node (no GPUs) for the operator and the
//! gateway, and two 2-GPU nodes for the workers, as a hospital's cluster has
//! a system pool and a GPU pool. The cases run one at a time (each starts
//! its own control plane); run one alone with
//! `cargo test -p medembed-e2e --test chaos CASE`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use medembed_e2e::load::{assert_no_failures, Load, Target};
use medembed_e2e::*;
use medembed_testsupport::redis::RedisServer;
use medembed_testsupport::NodeSpec;
use serde_json::{json, Value};

/// One case at a time: each runs a control plane, four pods and a load on a
/// small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POOL_LABEL: &str = "medembed.test/pool";

/// The gateway's scoring port in its pods.
const GATEWAY_PORT: u16 = 8443;

/// A chaos environment: the cluster, the release and the samples.
struct Chaos {
    env: Env,
    sample: Sample,
    /// The system node (operator and gateway).
    system_node: String,
}

/// Starts the cluster with a system node and two GPU nodes, installs the
/// chart (two gateway replicas, a 2 s drain delay) with `extra` values, and
/// applies the samples (endpoint `chest` with deployment `blue`, two
/// workers).
async fn chaos_env(prefix: &str, extra: &[&str]) -> Chaos {
    let system_node = format!("{prefix}-sys");
    let sys = system_node.clone();
    let env = setup_with(prefix, move |c| {
        let mut system = NodeSpec::gpu(sys, 0);
        system.labels = BTreeMap::from([(POOL_LABEL.to_string(), "system".to_string())]);
        let mut c = c
            .node(system)
            .node(NodeSpec::gpu(format!("{prefix}-gpu-0"), 2))
            .node(NodeSpec::gpu(format!("{prefix}-gpu-1"), 2));
        // The gateway's drain delay and grace fit in this.
        c.max_grace = Duration::from_secs(20);
        c
    })
    .await;
    let mut values = vec![
        "gateway.replicas=2",
        "gateway.shutdownDelaySeconds=2",
        "gateway.shutdownGraceSeconds=10",
        "operator.nodeSelector.medembed\\.test/pool=system",
        "gateway.nodeSelector.medembed\\.test/pool=system",
    ];
    values.extend_from_slice(extra);
    env.install(&values).await;
    eventually(
        &env,
        "both gateway replicas ready",
        Duration::from_secs(120),
        || async { env.component_ips("gateway").await.len() == 2 },
    )
    .await;
    let sample = env.apply_samples().await;
    Chaos {
        env,
        sample,
        system_node,
    }
}

impl Chaos {
    /// The gateway Service's ready endpoints, followed as kube-proxy does.
    fn through_service(&self) -> Target {
        Target::Service {
            slices: Box::new(self.env.release_ns.api::<EndpointSlice>()),
            service: "medembed-gateway".into(),
            port: GATEWAY_PORT,
            path: format!("/endpoints/{}/chest/score", self.env.ns.name()),
        }
    }

    /// Steady checked load (4 clients) through the Service with `key`, once
    /// it has answered 10 requests.
    async fn load(&self, key: &str) -> Load {
        let load = Load::start(self.through_service(), key.to_string(), 4);
        load.more(10, Duration::from_secs(60)).await;
        assert_eq!(load.failure_count(), 0, "failures before the fault");
        load
    }

    fn deployments(&self) -> Api<DynamicObject> {
        dynamic_api(&self.env, "EmbeddingDeployment", "embeddingdeployments")
    }

    /// The worker pods of deployment `dep`.
    async fn worker_pods(&self, dep: &str) -> Vec<Pod> {
        self.env
            .ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("medembed.io/deployment={dep}")))
            .await
            .unwrap()
            .items
    }

    async fn teardown(self) {
        self.env.teardown().await;
    }
}

/// (uid, restarts) of every pod, sorted.
fn identities(pods: &[Pod]) -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> = pods
        .iter()
        .map(|p| (p.metadata.uid.clone().unwrap_or_default(), restarts(p)))
        .collect();
    v.sort();
    v
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn sigkill(pid: u32) {
    let s = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success(), "kill -KILL {pid}");
}

/// The condition `type_` of an object's status.
fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn lock_serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A worker killed with SIGKILL while requests are in flight: the gateway
/// retries them on the other worker; the node agent restarts the container
/// and the worker serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_mid_request() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-kill", &[]).await;
    let load = c.load(&c.sample.key).await;
    let victim = c
        .env
        .agent
        .processes(Some(c.env.ns.name()))
        .into_iter()
        .find(|p| p.pod.starts_with("blue-"))
        .expect("a blue worker process");
    let before = restarts(
        &c.worker_pods("blue")
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(&victim.pod))
            .unwrap(),
    );
    sigkill(victim.pid);
    eventually(
        &c.env,
        "the killed worker restarted and blue back to 2 ready",
        Duration::from_secs(120),
        || async {
            let pods = c.worker_pods("blue").await;
            let restarted = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&victim.pod))
                .is_some_and(|p| restarts(p) > before);
            restarted && ready_replicas(&c.deployments(), "blue", 2).await
        },
    )
    .await;
    load.more(20, Duration::from_secs(60)).await;
    assert_no_failures(load, "chaos: worker SIGKILLed").await;
    c.teardown().await;
}

/// Both operator replicas SIGKILLed just as the traffic moves from 50/50 to
/// 0/100: the restarted operator completes the shift; no worker pod is
/// replaced or restarted and no worker Deployment's spec is rewritten (its
/// generation is unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_killed_during_blue_green() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-operator", &[]).await;
    let deployments = c.deployments();
    apply(
        &deployments,
        "green",
        "EmbeddingDeployment",
        deployment_spec(&c.env, &c.sample.model_path),
    )
    .await;
    eventually(&c.env, "green ready", Duration::from_secs(180), || {
        ready_replicas(&deployments, "green", 2)
    })
    .await;
    split(&c.env, "traffic 50/50", &[("blue", 50), ("green", 50)]).await;
    let load = c.load(&c.sample.key).await;

    let workers = Api::<Deployment>::namespaced(c.env.admin.clone(), c.env.ns.name());
    let generation = |d: Deployment| d.metadata.generation.unwrap_or_default();
    let gens_before = (
        generation(workers.get("blue-worker").await.unwrap()),
        generation(workers.get("green-worker").await.unwrap()),
    );
    let mut pods_before = c.worker_pods("blue").await;
    pods_before.extend(c.worker_pods("green").await);
    let pods_before = identities(&pods_before);

    apply_endpoint(&c.env, key_endpoint(&[("blue", 0), ("green", 100)])).await;
    let operators: Vec<_> = c
        .env
        .agent
        .processes(Some(c.env.release_ns.name()))
        .into_iter()
        .filter(|p| p.pod.starts_with("medembed-operator-"))
        .collect();
    assert_eq!(operators.len(), 2, "two operator replicas");
    for p in &operators {
        sigkill(p.pid);
    }
    eventually(
        &c.env,
        "the shift to 0/100 completed by the restarted operator",
        Duration::from_secs(120),
        || endpoint_ready(&c.env, &[("blue", 0), ("green", 100)]),
    )
    .await;
    // The gateway follows the table within moments; then only green answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = load.ok_count();
    load.more(20, Duration::from_secs(60)).await;
    let answers = assert_no_failures(load, "chaos: operator killed during blue/green").await;
    assert!(
        answers[from..]
            .iter()
            .all(|a| a.deployment.as_deref() == Some("green")),
        "blue still answered after the shift"
    );
    let mut pods_after = c.worker_pods("blue").await;
    pods_after.extend(c.worker_pods("green").await);
    assert_eq!(
        identities(&pods_after),
        pods_before,
        "a worker pod was replaced or restarted"
    );
    let gens_after = (
        generation(workers.get("blue-worker").await.unwrap()),
        generation(workers.get("green-worker").await.unwrap()),
    );
    assert_eq!(gens_after, gens_before, "a worker Deployment was rewritten");
    let restarted: i32 = c
        .env
        .release_ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/name=medembed-operator"))
        .await
        .unwrap()
        .items
        .iter()
        .map(restarts)
        .sum();
    assert!(restarted >= 2, "the operators were restarted ({restarted})");
    c.teardown().await;
}

/// The API server stopped for 30 s: the gateway goes on serving from the
/// table it has; when the API server is back, the operator reconciles a
/// change made then (blue scaled to 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_server_stopped_30s() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-api", &[]).await;
    let load = c.load(&c.sample.key).await;
    let stopped = c
        .env
        .cp
        .stop_component("kube-apiserver")
        .await
        .expect("kube-apiserver stops");
    let during = load.ok_count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let served = load.ok_count() - during;
    c.env
        .cp
        .start_component(stopped)
        .await
        .expect("kube-apiserver starts again");
    eprintln!("chaos: {served} requests answered while the API server was stopped");
    assert!(
        served > 0,
        "nothing was served while the API server was down"
    );
    let mut spec = deployment_spec(&c.env, &c.sample.model_path);
    spec["instanceCount"] = json!(3);
    let deployments = c.deployments();
    apply(&deployments, "blue", "EmbeddingDeployment", spec).await;
    eventually(
        &c.env,
        "blue scaled to 3 by the operator after the outage",
        Duration::from_secs(180),
        || ready_replicas(&deployments, "blue", 3),
    )
    .await;
    load.more(20, Duration::from_secs(60)).await;
    assert_no_failures(load, "chaos: API server stopped 30 s").await;
    c.teardown().await;
}

/// `quota_store_error` counted by the gateways (summed over replicas).
async fn store_errors(c: &Chaos) -> f64 {
    let mut sum = 0.0;
    for ip in c.env.component_ips("gateway").await {
        let text = reqwest::get(format!("http://{ip}:9090/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += medembed_testsupport::metrics::metric(
            &text,
            "medembed_gateway_rejections_total",
            &["reason=\"quota_store_error\""],
        );
    }
    sum
}

/// The shared quota store (Redis) stopped under load: with the default
/// `redis.onFailure: open` the gateway admits every request and counts
/// `rejections_total{reason="quota_store_error",enforced="false"}`; once
/// Redis is back, the count stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped() {
    let _serial = lock_serial().await;
    let mut redis = RedisServer::start(&[]);
    let url = format!("gateway.redis.url=redis://127.0.0.1:{}", redis.port);
    let c = chaos_env("chaos-redis", &[&url]).await;
    // The sample client with a quota, so that every request asks Redis.
    apply(
        &dynamic_api(&c.env, "EmbeddingClient", "embeddingclients"),
        "radiology",
        "EmbeddingClient",
        json!({
            "endpoints": ["chest"],
            "keys": {"secretName": "radiology-keys"},
            "quota": {"requestsPerMinute": 1_000_000, "imagesPerMinute": 1_000_000},
        }),
    )
    .await;
    eventually(
        &c.env,
        "the client's key works",
        Duration::from_secs(60),
        || async {
            post(&c.sample.url, Some(CLIENT_KEY), BRIEF_TEXT_ONLY)
                .await
                .0
                == 200
        },
    )
    .await;
    let load = c.load(CLIENT_KEY).await;
    assert_eq!(store_errors(&c).await, 0.0, "store errors with Redis up");
    redis.stop();
    let at_stop = load.ok_count();
    load.more(30, Duration::from_secs(60)).await;
    let errors_down = store_errors(&c).await;
    eprintln!(
        "chaos: Redis down, {} requests admitted, {errors_down} quota_store_error counted",
        load.ok_count() - at_stop
    );
    assert!(errors_down > 0.0, "the store failure is counted");
    redis.restart();
    // Reconnected within a few requests; from then on nothing is counted.
    let mut settled = f64::NAN;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        load.more(20, Duration::from_secs(30)).await;
        let now = store_errors(&c).await;
        if now == settled {
            break;
        }
        settled = now;
    }
    load.more(20, Duration::from_secs(60)).await;
    assert_eq!(
        store_errors(&c).await,
        settled,
        "quota_store_error still growing with Redis back"
    );
    assert_no_failures(load, "chaos: Redis stopped").await;
    c.teardown().await;
}

/// The gateway Deployment rolled under load (what `kubectl rollout restart`
/// does): a new ReplicaSet surges a pod, each old pod turns not-ready on
/// SIGTERM, serves on for the drain delay while the Service stops sending to
/// it, then drains; the PodDisruptionBudget keeps one. Zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_rolled() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-roll", &[]).await;
    let load = c.load(&c.sample.key).await;
    let old: Vec<String> = c.env.component_ips("gateway").await;
    let gw = Api::<Deployment>::namespaced(c.env.admin.clone(), c.env.release_ns.name());
    gw.patch(
        "medembed-gateway",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "chaos"
        }}}}})),
    )
    .await
    .unwrap();
    eventually(
        &c.env,
        "the gateway rolled: two new replicas ready, the old ones gone",
        Duration::from_secs(180),
        || async {
            let Ok(d) = gw.get("medembed-gateway").await else {
                return false;
            };
            let st = d.status.unwrap_or_default();
            let ips = c.env.component_ips("gateway").await;
            st.observed_generation == d.metadata.generation
                && st.updated_replicas == Some(2)
                && st.ready_replicas == Some(2)
                && st.replicas == Some(2)
                && ips.len() == 2
                && ips.iter().all(|ip| !old.contains(ip))
                && c.env
                    .agent
                    .processes(Some(c.env.release_ns.name()))
                    .iter()
                    .filter(|p| p.pod.starts_with("medembed-gateway-"))
                    .count()
                    == 2
        },
    )
    .await;
    let new = c.env.component_ips("gateway").await;
    let from = load.ok_count();
    load.more(20, Duration::from_secs(60)).await;
    let answers = assert_no_failures(load, "chaos: gateway rolled").await;
    assert!(
        answers[from..]
            .iter()
            .all(|a| new.iter().any(|ip| a.to.contains(&format!("//{ip}:")))),
        "answers still came from the old gateway pods"
    );
    c.teardown().await;
}

/// A deployment whose workers' memory limit is too small for the model:
/// each is killed at the limit (`OOMKilled`) and restarted, the deployment
/// shows `Degraded` with reason `OutOfMemory`, and the endpoint's other
/// workers are untouched (no restart, still ready, zero failed requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_out_of_memory() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-oom", &[]).await;
    let load = c.load(&c.sample.key).await;
    let blue_before = identities(&c.worker_pods("blue").await);
    let mut spec = deployment_spec(&c.env, &c.sample.model_path);
    spec["instanceCount"] = json!(1);
    spec["resources"]["memory"] = json!("32Mi");
    apply(&c.deployments(), "tight", "EmbeddingDeployment", spec).await;
    eventually(
        &c.env,
        "tight is Degraded (OutOfMemory) after an OOM kill and a restart",
        Duration::from_secs(120),
        || async {
            let Ok(d) = c.deployments().get("tight").await else {
                return false;
            };
            let d = serde_json::to_value(d).unwrap();
            let degraded = condition(&d, "Degraded")
                .is_some_and(|c| c["status"] == "True" && c["reason"] == "OutOfMemory");
            let killed = c.worker_pods("tight").await.iter().any(|p| {
                restarts(p) >= 1
                    && p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c.last_state
                                    .as_ref()
                                    .and_then(|s| s.terminated.as_ref())
                                    .is_some_and(|t| {
                                        t.reason.as_deref() == Some("OOMKilled")
                                            && t.exit_code == 137
                                    })
                            })
                        })
            });
            degraded && killed
        },
    )
    .await;
    let d = serde_json::to_value(c.deployments().get("tight").await.unwrap()).unwrap();
    eprintln!(
        "chaos: tight: {}",
        condition(&d, "Degraded").unwrap()["message"]
    );
    load.more(20, Duration::from_secs(60)).await;
    assert_no_failures(load, "chaos: a worker out of memory").await;
    assert_eq!(
        identities(&c.worker_pods("blue").await),
        blue_before,
        "blue's workers were affected"
    );
    assert!(ready_replicas(&c.deployments(), "blue", 2).await);
    c.teardown().await;
}

/// A GPU node lost with one of blue's workers on it (its processes killed,
/// no heartbeat, its Node object deleted): the gateway stops using the dead
/// worker at once (connections refused, retried on the other), the pod
/// garbage collector deletes the lost pod, its replacement comes up on the
/// other GPU node, and blue's status shows 1/2 ready on the way back to 2/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_lost() {
    let _serial = lock_serial().await;
    let c = chaos_env("chaos-node", &[]).await;
    let pods = c.worker_pods("blue").await;
    let nodes: Vec<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert_ne!(
        nodes[0], nodes[1],
        "blue's workers are spread over the GPU nodes"
    );
    assert!(!nodes.contains(&c.system_node));
    let lost = nodes[0].clone();
    let load = c.load(&c.sample.key).await;
    let killed = c.env.agent.lose_node(&lost).await.expect("node lost");
    eprintln!("chaos: node {lost} lost with {killed:?}");
    let deployments = c.deployments();
    let mut saw_degraded_status = false;
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "blue not back to 2 ready workers away from {lost}:\n{}",
            c.env.ns.describe().await
        );
        if let Ok(d) = deployments.get("blue").await {
            let ready = d.data["status"]["readyReplicas"].as_i64();
            if ready.is_some_and(|r| r < 2) {
                saw_degraded_status = true;
            }
            let pods = c.worker_pods("blue").await;
            let elsewhere = pods.len() == 2
                && pods.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            != Some(lost.as_str())
                });
            if saw_degraded_status && ready == Some(2) && elsewhere {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "chaos: replacement ready {:?} after the node was lost",
        t.elapsed()
    );
    load.more(20, Duration::from_secs(60)).await;
    assert_no_failures(load, "chaos: GPU node lost").await;
    c.teardown().await;
}
