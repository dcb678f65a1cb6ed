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
//! test does not depend on the operator's controllers running. The keys and
//! key sets reach the gateway as in a real installation: the tenants' Secrets
//! and ConfigMaps are read by the operator's credentials publisher (run here
//! on its own), which writes the one Secret the gateway reads. An endpoint in
//! Token mode takes its identity provider's key set from a ConfigMap.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{client, fixture, hash, mixed_body, now, token, worker_requests, Load};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use medembed_api::crd::{EmbeddingClient, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_gateway::GatewayConfig;
use medembed_testsupport::node::AGENT_LABEL;
use medembed_testsupport::{repo, wait, AgentConfig, ControlPlane, NodeAgent, NodeSpec};
use serde_json::{json, Value};

const STEP: Duration = Duration::from_millis(100);
const LIMIT_CRD: Duration = Duration::from_secs(30);
const IMAGE: &str = "medembed/worker";
const PORT: u16 = 8080;
const CLIENT_KEY: &str = "radiology-key-0000000000000000000000001";
const CLIENT_KEY_2: &str = "radiology-key-0000000000000000000000002";
const OTHER_KEY: &str = "cardiology-key-000000000000000000000001";
const ENDPOINT_PRIMARY: &str = "endpoint-primary-0000000000000000000001";
const ENDPOINT_SECONDARY: &str = "endpoint-secondary-00000000000000000001";
const ISSUER: &str = "https://idp.hospital.example";

/// The credentials Secret's name.
const CREDENTIALS: &str = "medembed-credentials";

/// Runs the operator's credentials publisher for namespace `ns` (into
/// `ns/CREDENTIALS`) until the returned task is dropped.
fn publish_credentials(admin: &Client, ns: &str) -> AbortOnDrop {
    use medembed_operator::credentials;
    let settings = credentials::Settings {
        namespace: ns.to_string(),
        name: CREDENTIALS.to_string(),
        watch_namespace: Some(ns.to_string()),
        resync: Duration::from_secs(300),
    };
    let metrics = medembed_operator::metrics::Metrics::new().unwrap();
    AbortOnDrop(tokio::spawn(credentials::run(
        admin.clone(),
        settings,
        metrics,
    )))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        wait::within(&format!("CRD {name} established"), LIMIT_CRD, established)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn create<K>(api: &Api<K>, v: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let o: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
}

/// One of medembed's resources: `kind` (EmbeddingEndpoint, ...) named `name`.
fn medembed(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "medembed.io/v1alpha1", "kind": kind,
           "metadata": {"name": name}, "spec": spec})
}

/// The worker Service of deployment `dep` of `endpoint`, as the operator
/// shapes it, selecting the pods of deployment `pods`.
fn worker_service(dep: &str, endpoint: &str, pods: &str) -> Value {
    json!({"metadata": {"name": format!("{dep}-worker"), "labels": labels_of(dep, endpoint)},
           "spec": {"selector": selector(pods),
                    "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}})
}

fn labels(dep: &str) -> Value {
    labels_of(dep, "chest")
}

fn labels_of(dep: &str, endpoint: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "medembed-worker",
        "app.kubernetes.io/instance": dep,
        "app.kubernetes.io/managed-by": "medembed-operator",
        "app.kubernetes.io/component": "worker",
        "medembed.io/deployment": dep,
        "medembed.io/endpoint": endpoint,
    })
}

fn selector(dep: &str) -> Value {
    json!({"app.kubernetes.io/name": "medembed-worker", "app.kubernetes.io/instance": dep})
}

/// The worker Deployment as the operator shapes it (listen on the pod IP,
/// readiness on `/readyz`, rolling without losing ready capacity).
fn worker_deployment(dep: &str, agent: &str, replicas: i32) -> Value {
    let setup = repo::setup();
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
                            {"name": "MEDEMBED_MODEL_DIR", "value": setup.model_dir},
                            {"name": "ORT_DYLIB_PATH", "value": setup.ort_library},
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

/// Waits until a request to `url` with `key` gets `want`.
async fn until_status(what: &str, limit: Duration, url: &str, key: &str, want: u16) {
    wait::until(what, limit, STEP, || async {
        Ok::<_, String>((status_of(url, Some(key), None).await == want).then_some(()))
    })
    .await
    .unwrap();
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
    let _heavy = crate::common::exclusive().await;
    let started = std::time::Instant::now();
    let worker_bin = repo::bin("medembed-worker");
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
    let secret = |name: &str, data: Value| json!({"metadata": {"name": name}, "stringData": data});
    let secrets = ns.api::<Secret>();
    let chest_keys = json!({"primaryKey": ENDPOINT_PRIMARY, "secondaryKey": ENDPOINT_SECONDARY});
    create(&secrets, secret("chest-keys", chest_keys)).await;
    create(&secrets, secret("radiology-keys", hashes(CLIENT_KEY, None))).await;
    create(&secrets, secret("cardiology-keys", hashes(OTHER_KEY, None))).await;
    let (endpoints, clients) = (ns.api::<EmbeddingEndpoint>(), ns.api::<EmbeddingClient>());
    let chest = json!({"hosts": ["chest.hospital.example"],
                       "auth": {"mode": "Key", "keySecretName": "chest-keys"},
                       "requestSettings": {"requestTimeoutMs": 60000}});
    create(&endpoints, medembed("EmbeddingEndpoint", "chest", chest)).await;
    create(
        &endpoints,
        medembed("EmbeddingEndpoint", "heart", json!({})),
    )
    .await;
    let blue = json!({"endpoint": "chest", "model": {"pvc": {"claimName": "models"}}});
    create(
        &ns.api::<EmbeddingDeployment>(),
        medembed("EmbeddingDeployment", "blue", blue),
    )
    .await;
    for (name, endpoint, keys) in [
        ("radiology", "chest", "radiology-keys"),
        ("cardiology", "heart", "cardiology-keys"),
    ] {
        let spec = json!({"endpoints": [endpoint], "keys": {"secretName": keys}});
        create(&clients, medembed("EmbeddingClient", name, spec)).await;
    }
    create(
        &ns.api::<Service>(),
        worker_service("blue", "chest", "blue"),
    )
    .await;
    let deployments = ns.api::<Deployment>();
    create(&deployments, worker_deployment("blue", agent.name(), 2)).await;

    let _publisher = publish_credentials(&admin, &name);
    let mut cfg = GatewayConfig::for_kubernetes(cp.kubeconfig(), Some(name.clone()));
    cfg.credentials_secret = Some(format!("{name}/{CREDENTIALS}"));
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

    a_forged_endpoint_slice_receives_nothing(&ns, &url).await;
    eprintln!("forged EndpointSlice checked after {:?}", started.elapsed());
    token_mode_with_the_key_set_from_a_config_map(&ns, &gw).await;
    eprintln!("token mode checked after {:?}", started.elapsed());
    limits_follow_the_live_replica_count(&cp, &ns).await;
    eprintln!("live replica count checked after {:?}", started.elapsed());

    // Load while the worker Deployment scales 2 -> 3 -> 1.
    let load = Load::start(&url, CLIENT_KEY, 4);
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
    let (ok, failures) = load.finish().await;
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
    let limit = Duration::from_secs(30);
    until_status("the rotated key works", limit, &url, CLIENT_KEY_2, 200).await;
    assert_eq!(status_of(&url, Some(CLIENT_KEY), None).await, 401);

    // A deleted client is gone.
    ns.api::<EmbeddingClient>()
        .delete("radiology", &Default::default())
        .await
        .unwrap();
    until_status(
        "the deleted client is refused",
        limit,
        &url,
        CLIENT_KEY_2,
        401,
    )
    .await;

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
    let idp_keys = json!({"metadata": {"name": "idp-keys"}, "data": {"jwks.json": jwks}});
    create(&ns.api::<ConfigMap>(), idp_keys).await;
    let token_auth = json!({"mode": "Token", "token": {"issuer": ISSUER, "audiences": ["medembed"],
                                                       "jwksConfigMap": "idp-keys"}});
    let ct = medembed("EmbeddingEndpoint", "ct", json!({"auth": token_auth}));
    create(&ns.api::<EmbeddingEndpoint>(), ct).await;
    let ct_blue = json!({"endpoint": "ct", "model": {"pvc": {"claimName": "models"}}});
    create(
        &ns.api::<EmbeddingDeployment>(),
        medembed("EmbeddingDeployment", "ct-blue", ct_blue),
    )
    .await;
    create(
        &ns.api::<Service>(),
        worker_service("ct-blue", "ct", "blue"),
    )
    .await;
    let pacs = json!({"endpoints": ["ct"], "token": {"subject": "pacs-archive"}});
    create(
        &ns.api::<EmbeddingClient>(),
        medembed("EmbeddingClient", "pacs", pacs),
    )
    .await;
    let url = format!("http://{}/endpoints/{}/ct/score", gw.addr, ns.name());
    let exp = now() + 600;
    let good = token("pacs-archive", "medembed", ISSUER, exp);
    let accepted = "a token signed by the ConfigMap's key is accepted";
    until_status(accepted, Duration::from_secs(60), &url, &good, 200).await;
    for (credential, want, what) in [
        (None, 401, "no token"),
        (
            Some(token("pacs-archive", "medembed", ISSUER, now() - 120)),
            401,
            "expired",
        ),
        (
            Some(token("pacs-archive", "billing", ISSUER, exp)),
            401,
            "audience",
        ),
        (
            Some(token(
                "pacs-archive",
                "medembed",
                "https://evil.example",
                exp,
            )),
            401,
            "issuer",
        ),
        (
            Some(token("someone-else", "medembed", ISSUER, exp)),
            403,
            "no such client",
        ),
        (Some(CLIENT_KEY.to_string()), 401, "a key"),
    ] {
        assert_eq!(
            status_of(&url, credential.as_deref(), None).await,
            want,
            "{what}"
        );
    }

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
    let refused = "tokens of the withdrawn key are refused";
    until_status(refused, Duration::from_secs(30), &url, &good, 401).await;
}

/// An autoscaled gateway divides its limits by the replicas actually
/// serving: a second gateway told its Service (`--peers-service`) follows
/// that Service's EndpointSlices as they gain and lose ready addresses, and
/// falls back to `--replicas` when none is known.
async fn limits_follow_the_live_replica_count(
    cp: &ControlPlane,
    ns: &medembed_testsupport::TestNamespace,
) {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slice = |ready: &[bool]| {
        let endpoints: Vec<Value> = ready
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"addresses": [format!("10.77.0.{}", i + 1)], "conditions": {"ready": r}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "gw-peers-a",
                            "labels": {"kubernetes.io/service-name": "gw-peers",
                                       "endpointslice.kubernetes.io/managed-by": "medembed-tests"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8443}],
               "endpoints": endpoints})
    };
    let slices = ns.api::<EndpointSlice>();
    create(&slices, slice(&[true, true, true, true])).await;
    let mut cfg = GatewayConfig::for_kubernetes(cp.kubeconfig(), Some(ns.name().to_string()));
    cfg.replicas = 2;
    cfg.peers_service = Some(format!("{}/gw-peers", ns.name()));
    let gw = medembed_gateway::start(cfg).await.expect("gateway starts");
    let replicas = |want: u32| {
        let r = gw.state.replicas.clone();
        async move {
            wait::until(
                &format!("{want} replicas"),
                Duration::from_secs(30),
                STEP,
                || {
                    let r = r.clone();
                    async move { Ok::<_, String>((r.get() == want).then_some(())) }
                },
            )
            .await
            .unwrap()
        }
    };
    replicas(4).await;
    // Two replicas turn unready (scaled in, or failing probes).
    let patch = Patch::Apply(slice(&[true, false, true, false]));
    let pp = PatchParams::apply("medembed-tests").force();
    slices.patch("gw-peers-a", &pp, &patch).await.unwrap();
    replicas(2).await;
    slices
        .patch("gw-peers-a", &pp, &Patch::Apply(slice(&[true, true, true])))
        .await
        .unwrap();
    replicas(3).await;
    // No slice at all: the configured number, never zero.
    slices
        .delete("gw-peers-a", &Default::default())
        .await
        .unwrap();
    replicas(2).await;
    gw.shutdown().await;
}

/// A writer of EndpointSlices copies the worker Service's labels onto its
/// own slice, aimed at a listener of its own: the gateway keeps sending the
/// endpoint's requests (patients' images) to the real workers only.
async fn a_forged_endpoint_slice_receives_nothing(
    ns: &medembed_testsupport::TestNamespace,
    url: &str,
) {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    let stolen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = stolen.clone();
    let listener = tokio::spawn(async move {
        while let Ok((_s, _)) = evil.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut labels = labels("blue");
    labels["kubernetes.io/service-name"] = json!("blue-worker");
    for (name, managed_by) in [
        ("blue-worker-forged", "someone-else"),
        ("blue-worker-copied", "endpointslice-controller.k8s.io"),
    ] {
        let mut l = labels.clone();
        l["endpointslice.kubernetes.io/managed-by"] = json!(managed_by);
        let forged = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": l},
            "addressType": "IPv4", "ports": [{"name": "http", "port": evil_port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]});
        create(&ns.api::<EndpointSlice>(), forged).await;
    }
    // Long enough for the watch to deliver them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..8 {
        assert_eq!(status_of(url, Some(CLIENT_KEY), None).await, 200);
    }
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "requests reached a forged slice"
    );
    // (The EndpointSlice controller may already have removed the slice that
    // claims to be its own.)
    for name in ["blue-worker-forged", "blue-worker-copied"] {
        let _ = ns
            .api::<EndpointSlice>()
            .delete(name, &Default::default())
            .await;
    }
    listener.abort();
}
