//! Shared set-up of the operator's integration tests: a real control plane,
//! the CRDs, the operator's service account bound to exactly the generated
//! ClusterRole (the API server enforces RBAC), a node agent that runs the real
//! worker binary on the TEST MODEL (random weights: embeddings mean nothing),
//! and helpers to build specs and wait.
//!
//! The worker binary, ONNX Runtime and the TEST MODEL come from
//! `medembed_testsupport::repo` (`MEDEMBED_WORKER_BIN` overrides the binary).

#![allow(dead_code, missing_docs)]

use std::path::Path;

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use medembed_api::crd::{EmbeddingDeployment, EmbeddingDeploymentStatus};
use medembed_operator::{crdgen, OperatorConfig, RunningOperator};
use medembed_testsupport::node::AGENT_LABEL;
use medembed_testsupport::{
    repo, wait, AgentConfig, ControlPlane, NodeAgent, NodeSpec, TestNamespace,
};
use serde_json::{json, Value};

pub const STEP: Duration = Duration::from_millis(200);
/// How long the operator may take to bring an object where a test wants it.
pub const LIMIT: Duration = Duration::from_secs(90);
const CRD_LIMIT: Duration = Duration::from_secs(30);
pub const WORKER_IMAGE: &str = "medembed/worker:test";
pub const CRASH_IMAGE: &str = "medembed/crasher:test";

/// Held for the whole run by every test that starts a control plane: on a
/// small machine their time limits assume the machine is theirs. Light tests
/// run beside them.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other heavy test runs; holds the others off until the
/// guard drops.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

pub struct Env {
    pub agent: NodeAgent,
    pub ns: TestNamespace,
    /// The operator's namespace (its service account and Lease).
    pub op_ns: String,
    /// A client authenticated as the operator's service account.
    pub op_client: Client,
    pub admin: Client,
    pub models: tempfile::TempDir,
    pub cp: ControlPlane,
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,medembed_operator=info")
            }),
        )
        .with_test_writer()
        .try_init();
}

/// A control plane with the CRDs, a namespace for the test's objects and
/// one for the operator.
pub struct Cluster {
    pub ns: TestNamespace,
    /// The operator's namespace (its service account and Lease).
    pub op_ns: String,
    pub admin: Client,
    pub cp: ControlPlane,
}

/// A control plane with the CRDs, the namespace `prefix-...` and the
/// operator's.
pub async fn cluster(prefix: &str) -> Cluster {
    init_tracing();
    let t = std::time::Instant::now();
    let cp = ControlPlane::start().await.expect("control plane starts");
    eprintln!("control plane ready in {:?}", t.elapsed());
    let admin = cp.client().expect("admin client");
    install_crds(&admin).await;
    let ns = cp.namespace(prefix).await.expect("namespace");
    let op_ns = cp
        .namespace("medembed-system")
        .await
        .expect("operator namespace")
        .name()
        .to_string();
    Cluster {
        ns,
        op_ns,
        admin,
        cp,
    }
}

/// A [`cluster`], the operator's RBAC and a node agent with `nodes` (name
/// suffix, GPUs).
pub async fn setup(prefix: &str, nodes: &[(&str, u32)]) -> Env {
    let Cluster {
        ns,
        op_ns,
        admin,
        cp,
    } = cluster(prefix).await;
    let setup = repo::setup();
    let op_client = operator_client(&cp, &admin, &op_ns).await;

    let mut config = AgentConfig::new(ns.name().to_string())
        .image("medembed/worker", repo::bin("medembed-worker"))
        .image("medembed/crasher", "/bin/false")
        .env(
            "ORT_DYLIB_PATH",
            setup.ort_library.to_string_lossy().into_owned(),
        )
        .env("MEDEMBED_LOG", "warn")
        .backoff(Duration::from_millis(300), Duration::from_secs(2));
    for (suffix, gpus) in nodes {
        config = config.node(NodeSpec::gpu(format!("{}-{suffix}", ns.name()), *gpus));
    }
    let agent = NodeAgent::start(&cp, config)
        .await
        .expect("node agent starts");

    // Two model versions (copies of the TEST MODEL) on a hostPath volume.
    let models = tempfile::Builder::new()
        .prefix("medembed-models.")
        .tempdir()
        .expect("tempdir");
    for v in ["v1", "v2"] {
        let dst = models.path().join(v);
        copy_dir(&setup.model_dir, &dst);
    }
    std::fs::create_dir_all(models.path().join("empty")).expect("empty model dir");
    Env {
        agent,
        ns,
        op_ns,
        op_client,
        admin,
        models,
        cp,
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read model dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

/// Applies the CRDs generated from the types and waits until established.
pub async fn install_crds(admin: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in crdgen::crds() {
        let name = crd.metadata.name.clone().expect("crd name");
        api.patch(
            &name,
            &PatchParams::apply("medembed-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        wait::within(&format!("CRD {name} established"), CRD_LIMIT, established)
            .await
            .expect("CRD established in time")
            .expect("CRD established");
    }
}

/// The operator's service account in `op_ns`, bound to the generated
/// ClusterRole and the leader-election Role; a client with its token.
pub async fn operator_client(cp: &ControlPlane, admin: &Client, op_ns: &str) -> Client {
    let token = operator_token(admin, op_ns).await;
    cp.client_with_token(&token).expect("operator client")
}

/// Like [`operator_client`], but returns the service account's token.
pub async fn operator_token(admin: &Client, op_ns: &str) -> String {
    scoped_operator_token(admin, op_ns, "medembed-operator", None).await
}

/// The token of service account `sa` in `op_ns`, bound to the generated
/// ClusterRole everywhere (`watch` None: a ClusterRoleBinding) or only in
/// namespace `watch` (a RoleBinding there, as for a namespace-scoped
/// operator), and to the leader-election Role in `op_ns`.
pub async fn scoped_operator_token(
    admin: &Client,
    op_ns: &str,
    sa: &str,
    watch: Option<&str>,
) -> String {
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), op_ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": sa}})).expect("sa");
    sas.create(&pp, &account).await.expect("create sa");
    let role = crdgen::cluster_role().expect("cluster role");
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            crdgen::CLUSTER_ROLE,
            &PatchParams::apply("medembed-tests").force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("cluster role");
    let subjects = json!([{"kind": "ServiceAccount", "name": sa, "namespace": op_ns}]);
    let role_ref = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": crdgen::CLUSTER_ROLE});
    match watch {
        None => {
            let crb: ClusterRoleBinding = serde_json::from_value(json!({
                "metadata": {"name": format!("{sa}-{op_ns}")},
                "roleRef": role_ref, "subjects": subjects,
            }))
            .expect("crb");
            Api::<ClusterRoleBinding>::all(admin.clone())
                .create(&pp, &crb)
                .await
                .expect("crb");
        }
        Some(ns) => {
            let rb: RoleBinding = serde_json::from_value(json!({
                "metadata": {"name": sa},
                "roleRef": role_ref, "subjects": subjects,
            }))
            .expect("rb");
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .create(&pp, &rb)
                .await
                .expect("namespace role binding");
        }
    }
    let roles = Api::<Role>::namespaced(admin.clone(), op_ns);
    if roles
        .get_opt(crdgen::LEASE_ROLE)
        .await
        .expect("get role")
        .is_none()
    {
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": crdgen::LEASE_ROLE}, "rules": crdgen::lease_rules(),
        }))
        .expect("role");
        roles.create(&pp, &role).await.expect("role");
    }
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-{sa}", crdgen::LEASE_ROLE)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": crdgen::LEASE_ROLE},
        "subjects": subjects,
    }))
    .expect("rb");
    Api::<RoleBinding>::namespaced(admin.clone(), op_ns)
        .create(&pp, &rb)
        .await
        .expect("rb");
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600 * 6),
            ..Default::default()
        }),
        ..Default::default()
    };
    sas.create_token_request(sa, &pp, &tr)
        .await
        .expect("token request")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

impl Env {
    /// The operator's configuration for these tests: workers bind their pod
    /// IP, short leases.
    pub fn op_config(&self, identity: &str) -> OperatorConfig {
        let mut c = OperatorConfig::for_tests();
        c.worker_image = WORKER_IMAGE.into();
        c.worker_listen_host = "$(POD_IP)".into();
        c.lease_namespace = self.op_ns.clone();
        c.identity = Some(identity.into());
        c.lease_duration_seconds = 4;
        c.lease_renew_seconds = 1;
        c
    }

    pub async fn start_operator(&self, identity: &str) -> RunningOperator {
        medembed_operator::start(self.op_config(identity), self.op_client.clone())
            .await
            .expect("operator starts")
    }

    /// An operator watching only this test's namespace, under a service
    /// account bound to the generated ClusterRole by a RoleBinding in that
    /// namespace alone (a cluster-wide watch would be forbidden).
    pub async fn start_namespaced_operator(&self, identity: &str) -> RunningOperator {
        let token = scoped_operator_token(
            &self.admin,
            &self.op_ns,
            "medembed-operator-ns",
            Some(self.ns.name()),
        )
        .await;
        let client = self.cp.client_with_token(&token).expect("operator client");
        let mut config = self.op_config(identity);
        config.namespace = Some(self.ns.name().to_string());
        medembed_operator::start(config, client)
            .await
            .expect("operator starts")
    }

    /// A PersistentVolume (hostPath: the models directory) and a claim bound
    /// to it, as a storage provisioner would leave them.
    pub async fn model_claim(&self, claim: &str) {
        medembed_testsupport::repo::host_path_claim(
            &self.admin,
            self.ns.name(),
            claim,
            self.models.path(),
        )
        .await
        .expect("model claim");
    }

    /// An EmbeddingDeployment spec on the model claim `claim` at `path`,
    /// pinned to this test's nodes, with fast probes.
    pub fn deployment_spec(&self, endpoint: &str, claim: &str, path: &str) -> Value {
        json!({
            "endpoint": endpoint,
            "model": {"pvc": {"claimName": claim, "path": path}},
            "runtime": {"executionProvider": "cpu", "maxBatchSize": 8},
            "instanceCount": 1,
            "nodeSelector": {AGENT_LABEL: self.agent.name()},
            "probes": {
                "readiness": {"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 3},
                "liveness": {"initialDelaySeconds": 0, "periodSeconds": 5},
            },
        })
    }

    pub async fn teardown(self) {
        self.agent.shutdown().await;
        drop(self.cp);
    }

    /// Ends the test `what`, whose body ran under [`wait::within`]: when it
    /// ran out of time, prints the namespace's state and fails; else stops
    /// everything and prints how long the test took since `started`.
    pub async fn finish(
        self,
        result: medembed_testsupport::Result<()>,
        what: &str,
        started: Instant,
    ) {
        if result.is_err() {
            eprintln!("{}", self.ns.describe().await);
        }
        result.unwrap_or_else(|e| panic!("{what} did not finish in time: {e}"));
        self.teardown().await;
        eprintln!("{what} took {:?}", started.elapsed());
    }
}

/// Creates an object of kind `kind` from `spec` with the admin client.
pub async fn create<K>(api: &Api<K>, name: &str, spec: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

/// Waits until the EmbeddingDeployment `name` and its status satisfy `ok`;
/// returns it, or the timeout, which names `what`.
pub async fn until_deployment(
    deps: &Api<EmbeddingDeployment>,
    name: &str,
    what: &str,
    ok: impl Fn(&EmbeddingDeployment, &EmbeddingDeploymentStatus) -> bool,
) -> medembed_testsupport::Result<EmbeddingDeployment> {
    wait::until(what, LIMIT, STEP, || async {
        let d = deps.get(name).await?;
        let st = d.status.clone().unwrap_or_default();
        Ok::<_, kube::Error>(ok(&d, &st).then_some(d))
    })
    .await
}

/// Deletes the namespace-less helper objects of a test (nothing for now).
pub async fn delete_namespace(admin: &Client, name: &str) {
    let _ = Api::<Namespace>::all(admin.clone())
        .delete(name, &Default::default())
        .await;
}
