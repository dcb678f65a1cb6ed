//! Kubernetes discovery against a real control plane (kube-apiserver,
//! controller-manager and scheduler; pods run by the test node agent as local
//! processes): the gateway finds endpoints, deployments, clients, keys and
//! the workers' EndpointSlices by watching them, and follows a worker
//! Deployment scaled up and down under load without a failed request.
//!
//! The workers are real `medembed-worker` processes serving the TEST MODEL
//! (random weights, MedImageInsight's exact I/O). The worker Deployment and
//! Service are created here with the names and labels the operator gives
//! them (`operator/src/resources.rs`: `NAME-worker`, labels
//! `medembed.io/deployment` and `medembed.io/endpoint`, port `http`), so the
//! test does not depend on the operator running. An endpoint in Token mode
//! takes its identity provider's key set from a ConfigMap.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, fixture, hash, metric, mixed_body, now, token, worker_env};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use medembed_api::crd::{EmbeddingClient, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_gateway::GatewayConfig;
use medembed_testsupport::node::AGENT_LABEL;
use medembed_testsupport::{wait, AgentConfig, ControlPlane, NodeAgent, NodeSpec};
use serde_json::json;

const STEP: Duration = Duration::from_millis(100);
const IMAGE: &str = "medembed/worker";
const PORT: u16 = 8080;
const CLIENT_KEY: &str = "radiology-key-0000000000000000000000001";
const CLIENT_KEY_2: &str = "radiology-key-0000000000000000000000002";
const OTHER_KEY: &str = "cardiology-key-000000000000000000000001";
const ENDPOINT_PRIMARY: &str = "endpoint-primary-0000000000000000000001";
const ENDPOINT_SECONDARY: &str = "endpoint-secondary-00000000000000000001";
const ISSUER: &str = "https://idp.hospital.example";

/// Applies the committed CRDs (`crds/*.yaml`) and waits until established.
async fn install_crds(admin: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for kind in [
        "embeddingendpoint",
        "embeddingdeployment",
        "embeddingclient",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.yaml"))).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(
            text.split("\n---\n")
                .find(|d| d.contains("CustomResourceDefinition"))
                .unwrap(),
        )
        .unwrap();
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("medembed-gateway-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        wait::until(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            STEP,
            || async {
                let c = api.get(&name).await?;
                let ok = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                Ok::<_, kube::Error>(ok.then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

async fn create<K>(api: &Api<K>, v: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let o: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
}

fn labels(dep: &str) -> serde_json::Value {
    labels_of(dep, "chest")
}

fn labels_of(dep: &str, endpoint: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/name": "medembed-worker",
        "app.kubernetes.io/instance": dep,
        "app.kubernetes.io/managed-by": "medembed-operator",
        "app.kubernetes.io/component": "worker",
        "medembed.io/deployment": dep,
        "medembed.io/endpoint": endpoint,
    })
}

fn selector(dep: &str) -> serde_json::Value {
    json!({"app.kubernetes.io/name": "medembed-worker", "app.kubernetes.io/instance": dep})
}

/// The worker Deployment as the operator shapes it (listen on the pod IP,
/// readiness on `/readyz`, rolling without losing ready capacity).
fn worker_deployment(dep: &str, agent: &str, replicas: i32) -> serde_json::Value {
    let e = worker_env();
    json!({
        "metadata": {"name": format!("{dep}-worker"), "labels": labels(dep)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(dep)},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(dep)},
                "spec": {
                    "nodeSelector": {AGENT_LABEL: agent},
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "worker",
                        "image": IMAGE,
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "MEDEMBED_LISTEN", "value": format!("$(POD_IP):{PORT}")},
                            {"name": "MEDEMBED_MODEL_DIR", "value": e.model},
                            {"name": "ORT_DYLIB_PATH", "value": e.ort},
                            {"name": "MEDEMBED_INTRA_THREADS", "value": "1"},
                            {"name": "MEDEMBED_DECODE_THREADS", "value": "1"},
                            {"name": "MEDEMBED_SHUTDOWN_GRACE_SECONDS", "value": "5"},
                            {"name": "MEDEMBED_LOG", "value": "warn"},
                        ],
                        "ports": [{"name": "http", "containerPort": PORT}],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http"},
                            "periodSeconds": 1, "failureThreshold": 1,
                        },
                    }],
                },
            },
        },
    })
}

/// The workers of deployment `dep` of endpoint `ns/chest` in the gateway's
/// current table.
fn gateway_workers(gw: &medembed_gateway::RunningGateway, ns: &str, dep: &str) -> BTreeSet<String> {
    let t = gw.state.tables.get();
    t.endpoints
        .iter()
        .find(|e| e.id == format!("{ns}/chest"))
        .and_then(|e| e.deployments.get(dep))
        .map(|d| d.workers.iter().map(|w| w.authority.clone()).collect())
        .unwrap_or_default()
}

async fn until_workers(
    gw: &medembed_gateway::RunningGateway,
    ns: &medembed_testsupport::TestNamespace,
    agent: &NodeAgent,
    n: usize,
) -> BTreeSet<String> {
    let r = wait::until(
        &format!("the gateway routes to {n} ready workers"),
        Duration::from_secs(180),
        STEP,
        || async {
            let w = gateway_workers(gw, ns.name(), "blue");
            Ok::<_, String>((w.len() == n).then_some(w))
        },
    )
    .await;
    match r {
        Ok(w) => w,
        Err(e) => {
            let slices = ns
                .api::<k8s_openapi::api::discovery::v1::EndpointSlice>()
                .list(&Default::default())
                .await
                .map(|l| serde_json::to_string(&l.items).unwrap_or_default());
            let logs: Vec<String> = agent
                .processes(Some(ns.name()))
                .iter()
                .map(|p| {
                    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    format!("{} {}: {:?}", p.pod, p.pod_ip, tail)
                })
                .collect();
            panic!(
                "{e}\ngateway sees {:?}\nslices: {slices:?}\nprocesses: {logs:#?}\n{}",
                gateway_workers(gw, ns.name(), "blue"),
                ns.describe().await
            )
        }
    }
}

async fn status_of(url: &str, key: Option<&str>, host: Option<&str>) -> u16 {
    let mut r = client().post(url).body(mixed_body());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(h) = host {
        r = r.header("host", h);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_follows_the_cluster_and_scaling_under_load_fails_no_request() {
    let started = std::time::Instant::now();
    let worker_bin = worker_env().bin.clone();
    let cp = ControlPlane::start().await.expect("control plane starts");
    let admin = cp.client().unwrap();
    install_crds(&admin).await;
    let ns = cp.namespace("gateway").await.unwrap();
    let name = ns.name().to_string();
    let agent = NodeAgent::start(
        &cp,
        AgentConfig::new(name.clone())
            .node(NodeSpec::gpu(format!("{name}-node-0"), 2))
            .image(IMAGE, &worker_bin),
    )
    .await
    .expect("node agent starts");

    // The resources a tenant and the operator would create.
    let hashes = |a: &str, b: Option<&str>| {
        let mut d = json!({"primary-sha256": hash(a)});
        if let Some(b) = b {
            d["secondary-sha256"] = json!(hash(b));
        }
        d
    };
    create(
        &ns.api::<Secret>(),
        json!({"metadata": {"name": "chest-keys"},
               "stringData": {"primaryKey": ENDPOINT_PRIMARY, "secondaryKey": ENDPOINT_SECONDARY}}),
    )
    .await;
    create(
        &ns.api::<Secret>(),
        json!({"metadata": {"name": "radiology-keys"}, "stringData": hashes(CLIENT_KEY, None)}),
    )
    .await;
    create(
        &ns.api::<Secret>(),
        json!({"metadata": {"name": "cardiology-keys"}, "stringData": hashes(OTHER_KEY, None)}),
    )
    .await;
    create(
        &ns.api::<EmbeddingEndpoint>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
               "metadata": {"name": "chest"},
               "spec": {"hosts": ["chest.hospital.example"],
                        "auth": {"mode": "Key", "keySecretName": "chest-keys"},
                        "requestSettings": {"requestTimeoutMs": 60000}}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingEndpoint>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
               "metadata": {"name": "heart"}, "spec": {}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingDeployment>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingDeployment",
               "metadata": {"name": "blue"},
               "spec": {"endpoint": "chest", "model": {"pvc": {"claimName": "models"}}}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingClient>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient",
               "metadata": {"name": "radiology"},
               "spec": {"endpoints": ["chest"], "keys": {"secretName": "radiology-keys"}}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingClient>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient",
               "metadata": {"name": "cardiology"},
               "spec": {"endpoints": ["heart"], "keys": {"secretName": "cardiology-keys"}}}),
    )
    .await;
    create(
        &ns.api::<Service>(),
        json!({"metadata": {"name": "blue-worker", "labels": labels("blue")},
               "spec": {"selector": selector("blue"),
                        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}),
    )
    .await;
    let deployments = ns.api::<Deployment>();
    create(&deployments, worker_deployment("blue", agent.name(), 2)).await;

    let mut cfg = GatewayConfig::for_kubernetes(cp.kubeconfig(), Some(name.clone()));
    cfg.scrape_interval_ms = 250;
    cfg.host_template = Some("{name}.{namespace}.ml.example".into());
    let gw = medembed_gateway::start(cfg).await.expect("gateway starts");
    let first = until_workers(&gw, &ns, &agent, 2).await;
    eprintln!(
        "2 workers discovered after {:?}: {first:?}",
        started.elapsed()
    );
    let url = format!("http://{}/endpoints/{name}/chest/score", gw.addr);
    let host_url = format!("http://{}/score", gw.addr);

    // Routing and keys from the cluster.
    assert_eq!(status_of(&url, Some(CLIENT_KEY), None).await, 200);
    assert_eq!(
        status_of(
            &host_url,
            Some(ENDPOINT_PRIMARY),
            Some("chest.hospital.example")
        )
        .await,
        200
    );
    let templated = format!("chest.{name}.ml.example");
    assert_eq!(
        status_of(&host_url, Some(ENDPOINT_SECONDARY), Some(&templated)).await,
        200
    );
    assert_eq!(status_of(&url, None, None).await, 401);
    assert_eq!(status_of(&url, Some("wrong-key"), None).await, 401);
    assert_eq!(status_of(&url, Some(OTHER_KEY), None).await, 403);
    let heart = format!("http://{}/endpoints/{name}/heart/score", gw.addr);
    assert_eq!(status_of(&heart, Some(OTHER_KEY), None).await, 503);

    token_mode_with_the_key_set_from_a_config_map(&ns, &gw).await;
    eprintln!("token mode checked after {:?}", started.elapsed());

    // Load while the worker Deployment scales 2 -> 3 -> 1.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client()
                    .post(&url)
                    .bearer_auth(CLIENT_KEY)
                    .body(mixed_body())
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((r.status().as_u16(), r.text().await.unwrap_or_default()));
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let scale = |n: i32| {
        let d = deployments.clone();
        async move {
            d.patch(
                "blue-worker",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": n}})),
            )
            .await
            .unwrap();
        }
    };
    scale(3).await;
    let three = until_workers(&gw, &ns, &agent, 3).await;
    let added: Vec<&String> = three.difference(&first).collect();
    assert_eq!(added.len(), 1, "one new worker: {three:?}");
    let added = added[0].clone();
    eprintln!("3 workers after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served_by_new = worker_requests(&added).await;
    scale(1).await;
    let one = until_workers(&gw, &ns, &agent, 1).await;
    eprintln!("1 worker after {:?}: {one:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("{ok} requests under load, {} failed", failures.len());
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        served_by_new > 0.0,
        "the added worker {added} got no request"
    );
    assert!(ok > 20, "only {ok} requests");

    // Key rotation without restart: the client's Secret gets a new primary.
    ns.api::<Secret>()
        .patch(
            "radiology-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": hashes(CLIENT_KEY_2, None)})),
        )
        .await
        .unwrap();
    wait::until(
        "the rotated key works",
        Duration::from_secs(30),
        STEP,
        || async {
            Ok::<_, String>((status_of(&url, Some(CLIENT_KEY_2), None).await == 200).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&url, Some(CLIENT_KEY), None).await, 401);

    // A deleted client is gone.
    ns.api::<EmbeddingClient>()
        .delete("radiology", &Default::default())
        .await
        .unwrap();
    wait::until(
        "the deleted client is refused",
        Duration::from_secs(30),
        STEP,
        || async {
            Ok::<_, String>((status_of(&url, Some(CLIENT_KEY_2), None).await == 401).then_some(()))
        },
    )
    .await
    .unwrap();

    gw.shutdown().await;
    agent.shutdown().await;
    drop(cp);
    eprintln!("took {:?}", started.elapsed());
}

/// Token mode for an air-gapped cluster: the identity provider's key set is
/// a ConfigMap (`jwksConfigMap`), read by the gateway's watch, and replacing
/// it takes effect without a restart. Endpoint `ct` routes to the same worker
/// pods as `chest` through its own deployment's Service.
async fn token_mode_with_the_key_set_from_a_config_map(
    ns: &medembed_testsupport::TestNamespace,
    gw: &medembed_gateway::RunningGateway,
) {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    create(
        &ns.api::<ConfigMap>(),
        json!({"metadata": {"name": "idp-keys"}, "data": {"jwks.json": jwks}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingEndpoint>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
               "metadata": {"name": "ct"},
               "spec": {"auth": {"mode": "Token",
                                 "token": {"issuer": ISSUER, "audiences": ["medembed"],
                                           "jwksConfigMap": "idp-keys"}}}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingDeployment>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingDeployment",
               "metadata": {"name": "ct-blue"},
               "spec": {"endpoint": "ct", "model": {"pvc": {"claimName": "models"}}}}),
    )
    .await;
    create(
        &ns.api::<Service>(),
        json!({"metadata": {"name": "ct-blue-worker", "labels": labels_of("ct-blue", "ct")},
               "spec": {"selector": selector("blue"),
                        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}),
    )
    .await;
    create(
        &ns.api::<EmbeddingClient>(),
        json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient",
               "metadata": {"name": "pacs"},
               "spec": {"endpoints": ["ct"], "token": {"subject": "pacs-archive"}}}),
    )
    .await;
    let url = format!("http://{}/endpoints/{}/ct/score", gw.addr, ns.name());
    let exp = now() + 600;
    let good = token("pacs-archive", "medembed", ISSUER, exp);
    wait::until(
        "a token signed by the ConfigMap's key is accepted",
        Duration::from_secs(60),
        STEP,
        || async {
            Ok::<_, String>((status_of(&url, Some(&good), None).await == 200).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&url, None, None).await, 401, "no token");
    let expired = token("pacs-archive", "medembed", ISSUER, now() - 120);
    assert_eq!(status_of(&url, Some(&expired), None).await, 401, "expired");
    let other_aud = token("pacs-archive", "billing", ISSUER, exp);
    assert_eq!(
        status_of(&url, Some(&other_aud), None).await,
        401,
        "audience"
    );
    let other_iss = token("pacs-archive", "medembed", "https://evil.example", exp);
    assert_eq!(status_of(&url, Some(&other_iss), None).await, 401, "issuer");
    let stranger = token("someone-else", "medembed", ISSUER, exp);
    assert_eq!(
        status_of(&url, Some(&stranger), None).await,
        403,
        "no such client"
    );
    assert_eq!(status_of(&url, Some(CLIENT_KEY), None).await, 401, "a key");

    // The identity provider's key is withdrawn: the gateway follows the
    // ConfigMap and refuses tokens it signed, without a restart.
    ns.api::<ConfigMap>()
        .patch(
            "idp-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"jwks.json": "{\"keys\": []}"}})),
        )
        .await
        .unwrap();
    wait::until(
        "tokens of the withdrawn key are refused",
        Duration::from_secs(30),
        STEP,
        || async {
            Ok::<_, String>((status_of(&url, Some(&good), None).await == 401).then_some(()))
        },
    )
    .await
    .unwrap();
}

async fn worker_requests(authority: &str) -> f64 {
    let m = reqwest::get(format!("http://{authority}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&m, "medembed_worker_requests_total", &["status=\"200\""])
}
