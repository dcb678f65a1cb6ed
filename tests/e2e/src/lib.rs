//! medembed on one machine: a real Kubernetes control plane (built from
//! source by `scripts/cluster-build.sh`), the Helm chart installed on it, and
//! a node agent that runs the chart's pods (operator, gateway) and the
//! operator's workers as local processes on loopback pod IPs, with the TEST
//! MODEL (random weights: its embeddings mean nothing) on a volume.
//!
//! The end-to-end tests (`tests/`) and the demo (`medembed-demo`, run by
//! `scripts/demo.sh`) are built on it: [`setup`] starts everything below the
//! chart, [`Env::install`] installs the release, [`Env::apply_samples`]
//! declares an endpoint, a deployment and a client, and [`post`] calls the
//! API.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use medembed_testsupport::{
    command, repo, wait, AgentConfig, ControlPlane, NodeAgent, NodeSpec, TestNamespace,
};
use serde_json::{json, Value};

pub const STEP: Duration = Duration::from_millis(250);

/// Paths of everything the tests run.
pub struct Paths {
    pub repo: PathBuf,
    pub chart: PathBuf,
    pub bins: HashMap<String, PathBuf>,
    pub ort_library: PathBuf,
    pub model_dir: PathBuf,
}

/// Everything the system needs, built or found once per process (the
/// repository's setup and binaries: `medembed_testsupport::repo`).
pub fn paths() -> &'static Paths {
    static P: OnceLock<Paths> = OnceLock::new();
    P.get_or_init(|| {
        let setup = repo::setup();
        let bins = ["medembed-worker", "medembed-operator", "medembed-gateway"]
            .into_iter()
            .map(|b| (b.to_string(), repo::bin(b)))
            .collect();
        Paths {
            repo: repo::root().to_path_buf(),
            chart: repo::root().join("charts/medembed"),
            bins,
            ort_library: setup.ort_library.clone(),
            model_dir: setup.model_dir.clone(),
        }
    })
}

/// Runs helm with `args`, returning stdout; panics with stderr on failure.
pub async fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    command::output(&cp.helm().await.expect("helm binary"), args).await
}

/// A control plane, a release namespace, a namespace for the user's specs and
/// a node agent with two 2-GPU nodes that runs the three images.
pub struct Env {
    pub agent: NodeAgent,
    pub release_ns: TestNamespace,
    pub ns: TestNamespace,
    pub admin: Client,
    pub cp: ControlPlane,
}

pub async fn setup(prefix: &str) -> Env {
    setup_with(prefix, |c| {
        c.node(NodeSpec::gpu(format!("{prefix}-gpu-0"), 2))
            .node(NodeSpec::gpu(format!("{prefix}-gpu-1"), 2))
    })
    .await
}

/// [`setup`] with the node agent's nodes (and anything else) set by `nodes`.
pub async fn setup_with(prefix: &str, nodes: impl FnOnce(AgentConfig) -> AgentConfig) -> Env {
    let p = paths();
    let t = std::time::Instant::now();
    let cp = ControlPlane::start().await.expect("control plane starts");
    eprintln!("control plane ready in {:?}", t.elapsed());
    let admin = cp.client().expect("admin client");
    let release_ns = cp.namespace("medembed-system").await.expect("namespace");
    let ns = cp.namespace(prefix).await.expect("namespace");
    let version = env!("CARGO_PKG_VERSION");
    let agent = NodeAgent::start(
        &cp,
        nodes(AgentConfig::new(prefix))
            .image(
                format!("medembed/operator:{version}"),
                &p.bins["medembed-operator"],
            )
            .image(
                format!("medembed/gateway:{version}"),
                &p.bins["medembed-gateway"],
            )
            .image(
                format!("medembed/worker:{version}"),
                &p.bins["medembed-worker"],
            )
            .env("ORT_DYLIB_PATH", p.ort_library.to_string_lossy())
            .env("MEDEMBED_LOG", "warn"),
    )
    .await
    .expect("node agent starts");
    Env {
        agent,
        release_ns,
        ns,
        admin,
        cp,
    }
}

impl Env {
    /// A PersistentVolume (hostPath: the TEST MODEL's directory's parent) and a
    /// claim bound to it, as a storage provisioner would leave them; returns
    /// the model's path inside the volume.
    pub async fn model_claim(&self, claim: &str) -> String {
        let model = &paths().model_dir;
        let parent = model.parent().expect("model dir has a parent");
        repo::host_path_claim(&self.admin, self.ns.name(), claim, parent)
            .await
            .expect("model claim");
        model
            .file_name()
            .expect("model dir name")
            .to_string_lossy()
            .into_owned()
    }

    /// The IP of a running, ready pod of the release's component (`gateway`,
    /// `operator`).
    pub async fn component_ips(&self, component: &str) -> Vec<String> {
        let pods = self
            .release_ns
            .api::<Pod>()
            .list(
                &ListParams::default()
                    .labels(&format!("app.kubernetes.io/name=medembed-{component}")),
            )
            .await
            .expect("list pods");
        pods.items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect()
    }

    /// The last lines of every container log the node agent wrote (pods
    /// running or gone), for failure messages.
    pub fn process_logs(&self) -> String {
        let Some(root) = self.agent.processes(None).first().and_then(|p| {
            p.log
                .parent()
                .and_then(|d| d.parent())
                .and_then(|d| d.parent())
                .map(Path::to_path_buf)
        }) else {
            return "(no process running)".into();
        };
        let mut out = String::new();
        let Ok(pods) = std::fs::read_dir(&root) else {
            return out;
        };
        for pod in pods.flatten() {
            let Ok(logs) = std::fs::read_dir(pod.path().join("logs")) else {
                continue;
            };
            for log in logs.flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("== {}\n", log.path().display()));
                for l in &lines[lines.len().saturating_sub(15)..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    pub async fn teardown(self) {
        self.agent.shutdown().await;
        drop(self.cp);
    }
}

/// Waits until `check` holds, failing with `what` and the cluster's state.
pub async fn eventually<F, Fut>(env: &Env, what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let r = wait::until(what, limit, STEP, || {
        let f = check();
        async move { Ok::<_, String>(f.await.then_some(())) }
    })
    .await;
    if let Err(e) = r {
        panic!(
            "{e}\n--- {} ---\n{}\n--- {} ---\n{}\n--- process logs ---\n{}",
            env.release_ns.name(),
            env.release_ns.describe().await,
            env.ns.name(),
            env.ns.describe().await,
            env.process_logs()
        );
    }
}

/// The API brief's image-and-text example request, verbatim.
pub const BRIEF_IMAGE_AND_TEXT: &str = include_str!("../tests/fixtures/brief_image_and_text.json");
/// The API brief's text-only example request, verbatim.
pub const BRIEF_TEXT_ONLY: &str = include_str!("../tests/fixtures/brief_text_only.json");

/// Values that make the chart's pods run under the node agent: programs bind
/// their own loopback pod IP.
pub fn local_values() -> Vec<String> {
    [
        "operator.listenHost=$(POD_IP)",
        "operator.workerListenHost=$(POD_IP)",
        "operator.leaseDurationSeconds=6",
        "operator.leaseRenewSeconds=2",
        "operator.logFormat=text",
        "gateway.listenHost=$(POD_IP)",
        "gateway.logFormat=text",
        "gateway.auditLog=off",
        "gateway.autoscaling.enabled=false",
        "gateway.replicas=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn dynamic_api(env: &Env, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("medembed.io", "v1alpha1", kind),
        plural,
    );
    Api::namespaced_with(env.admin.clone(), env.ns.name(), &ar)
}

pub async fn apply(api: &Api<DynamicObject>, name: &str, kind: &str, spec: Value) {
    let obj = json!({
        "apiVersion": "medembed.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// Applies the endpoint `chest` with `spec`, as a user would with kubectl.
pub async fn apply_endpoint(env: &Env, spec: Value) {
    let endpoints = dynamic_api(env, "EmbeddingEndpoint", "embeddingendpoints");
    apply(&endpoints, "chest", "EmbeddingEndpoint", spec).await;
}

/// The endpoint `chest` in key mode with `traffic` (deployment, percent).
pub fn key_endpoint(traffic: &[(&str, i64)]) -> Value {
    let traffic: serde_json::Map<String, Value> = traffic
        .iter()
        .map(|(d, p)| (d.to_string(), json!(p)))
        .collect();
    json!({"auth": {"mode": "Key"}, "traffic": traffic})
}

pub fn deployment_spec(env: &Env, model_path: &str) -> Value {
    json!({
        "endpoint": "chest",
        "model": {"pvc": {"claimName": "models", "path": model_path}},
        "runtime": {"executionProvider": "cpu", "maxBatchSize": 8, "maxQueueDelayMs": 2},
        "instanceCount": 2,
        "resources": {"gpu": {"count": 1}},
        "nodeSelector": {medembed_testsupport::node::AGENT_LABEL: env.agent.name()},
        "probes": {
            "readiness": {"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 2},
            "liveness": {"initialDelaySeconds": 0, "periodSeconds": 5},
        },
    })
}

/// Ready, serving, traffic-carrying deployments of the endpoint, by its status.
pub async fn endpoint_ready(env: &Env, want: &[(&str, i64)]) -> bool {
    let api = dynamic_api(env, "EmbeddingEndpoint", "embeddingendpoints");
    let Ok(e) = api.get("chest").await else {
        return false;
    };
    let st = &e.data["status"];
    let ready = st["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    ready
        && want.iter().all(|(name, traffic)| {
            st["deployments"].as_array().is_some_and(|ds| {
                ds.iter().any(|d| {
                    d["name"] == *name
                        && d["ready"] == true
                        && d["traffic"].as_i64() == Some(*traffic)
                })
            })
        })
}

/// Whether the EmbeddingDeployment `name` reports `n` ready replicas.
pub async fn ready_replicas(deployments: &Api<DynamicObject>, name: &str, n: i64) -> bool {
    let Ok(d) = deployments.get(name).await else {
        return false;
    };
    d.data["status"]["readyReplicas"].as_i64() == Some(n)
}

/// Sets the endpoint's `traffic` split and waits until its status shows it
/// (`what`).
pub async fn split(env: &Env, what: &str, traffic: &[(&str, i64)]) {
    apply_endpoint(env, key_endpoint(traffic)).await;
    eventually(env, what, Duration::from_secs(60), || {
        endpoint_ready(env, traffic)
    })
    .await;
}

pub fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// `v` as compact JSON with every list of more than four numbers cut to its
/// first four and a count of the rest: an answer's shape, readable.
pub fn abbreviate(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() > 4 && a.iter().all(Value::is_number) => {
            let head: Vec<String> = a[..4]
                .iter()
                .map(|x| format!("{:.4}", x.as_f64().unwrap_or(0.0)))
                .collect();
            format!("[{}, ... {} more]", head.join(", "), a.len() - 4)
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(abbreviate).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), abbreviate(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

pub async fn post(url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

/// The sample client's key (its Secret holds only the SHA-256).
pub const CLIENT_KEY: &str = "medembed-sample-client-key-0123456789";

/// What [`Env::apply_samples`] set up.
pub struct Sample {
    /// The endpoint's scoring URL on the gateway (by path).
    pub url: String,
    /// The endpoint's primary key (from the Secret the operator generated).
    pub key: String,
    /// The model's directory inside the model volume.
    pub model_path: String,
}

impl Env {
    /// `helm install medembed` of the chart with the values that make its
    /// pods run on the node agent, plus `extra` `--set` values; waits until
    /// both operator replicas and the gateway are ready.
    pub async fn install(&self, extra: &[&str]) {
        let p = paths();
        let chart = p.chart.to_string_lossy().into_owned();
        let kubeconfig = self.cp.kubeconfig().to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "install".into(),
            "medembed".into(),
            chart,
            "--kubeconfig".into(),
            kubeconfig,
            "--namespace".into(),
            self.release_ns.name().into(),
        ];
        for v in local_values()
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            args.push("--set".into());
            args.push(v.into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&self.cp, &args).await;
        eventually(
            self,
            "operator and gateway ready",
            Duration::from_secs(180),
            || async {
                self.component_ips("operator").await.len() == 2
                    && !self.component_ips("gateway").await.is_empty()
            },
        )
        .await;
    }

    /// Declares the sample specs a user would apply: the endpoint `chest` in
    /// key mode with deployment `blue` (two workers of the TEST MODEL from a
    /// volume, one GPU each) at 100 %, and the client `radiology` with its own
    /// key; waits until the endpoint is Ready and the gateway answers with the
    /// generated key.
    pub async fn apply_samples(&self) -> Sample {
        let model_path = self.model_claim("models").await;
        let endpoints = dynamic_api(self, "EmbeddingEndpoint", "embeddingendpoints");
        let deployments = dynamic_api(self, "EmbeddingDeployment", "embeddingdeployments");
        let clients = dynamic_api(self, "EmbeddingClient", "embeddingclients");
        apply_endpoint(self, key_endpoint(&[("blue", 100)])).await;
        apply(
            &deployments,
            "blue",
            "EmbeddingDeployment",
            deployment_spec(self, &model_path),
        )
        .await;
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(CLIENT_KEY.as_bytes()))
        };
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "radiology-keys"},
            "stringData": {"primary-sha256": digest},
        }))
        .expect("secret");
        self.ns
            .api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .expect("client key secret");
        apply(
            &clients,
            "radiology",
            "EmbeddingClient",
            json!({"endpoints": ["chest"], "keys": {"secretName": "radiology-keys"}}),
        )
        .await;
        eventually(
            self,
            "endpoint chest Ready with blue",
            Duration::from_secs(240),
            || endpoint_ready(self, &[("blue", 100)]),
        )
        .await;
        let ep = endpoints.get("chest").await.expect("endpoint");
        let secret_name = ep.data["status"]["keySecretName"]
            .as_str()
            .unwrap_or("chest-keys")
            .to_string();
        let keys = self
            .ns
            .api::<Secret>()
            .get(&secret_name)
            .await
            .expect("the endpoint's key Secret");
        let key = String::from_utf8(keys.data.expect("key data")["primaryKey"].0.clone())
            .expect("utf-8 key");
        let gw = self.component_ips("gateway").await[0].clone();
        let url = format!("http://{gw}:8443/endpoints/{}/chest/score", self.ns.name());
        // The gateway sees the ready workers and the key within moments.
        eventually(
            self,
            "gateway serves the endpoint",
            Duration::from_secs(60),
            || async { post(&url, Some(&key), BRIEF_TEXT_ONLY).await.0 == 200 },
        )
        .await;
        Sample {
            url,
            key,
            model_path,
        }
    }
}
