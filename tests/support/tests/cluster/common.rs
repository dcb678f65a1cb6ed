//! Helpers shared by the integration tests: a control plane, a namespace and
//! a node agent that runs `test-http` for the image `medembed/test-http`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use medembed_testsupport::node::AGENT_LABEL;
use medembed_testsupport::{
    http, wait, AgentConfig, ControlPlane, NodeAgent, NodeSpec, TestNamespace,
};
use serde_json::{json, Value};

/// The image name the agent maps to the `test-http` binary.
pub const IMAGE: &str = "medembed/test-http:latest";
/// The port `test-http` listens on in these tests.
pub const PORT: u16 = 8080;

/// A started control plane, a fresh namespace and a node agent with one
/// 2-GPU node, whose pods are pinned to it by `nodeSelector`.
pub struct Env {
    pub agent: NodeAgent,
    pub ns: TestNamespace,
    pub cp: ControlPlane,
}

pub async fn setup(prefix: &str) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t = std::time::Instant::now();
    let cp = ControlPlane::start().await.expect("control plane starts");
    eprintln!("control plane ready in {:?}", t.elapsed());
    let ns = cp.namespace(prefix).await.expect("namespace");
    let config = AgentConfig::new(ns.name().to_string())
        .node(NodeSpec::gpu(format!("{}-gpu-0", ns.name()), 2))
        .image("medembed/test-http", env!("CARGO_BIN_EXE_test-http"));
    let agent = NodeAgent::start(&cp, config)
        .await
        .expect("node agent starts");
    Env { agent, ns, cp }
}

impl Env {
    /// A pod spec running test-http with `env`, a named port and a readiness
    /// probe on /healthz every second, pinned to this test's node.
    pub fn pod_spec(&self, env: &[(&str, &str)]) -> Value {
        let mut vars = vec![json!({"name": "PORT", "value": PORT.to_string()})];
        vars.extend(env.iter().map(|(k, v)| json!({"name": k, "value": v})));
        json!({
            "nodeSelector": { AGENT_LABEL: self.agent.name() },
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "web",
                "image": IMAGE,
                "env": vars,
                "ports": [{"name": "http", "containerPort": PORT}],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 1, "failureThreshold": 1,
                },
            }],
        })
    }

    /// Stops the agent (its processes and nodes) and then the control plane.
    pub async fn teardown(self) {
        self.agent.shutdown().await;
        drop(self.cp);
    }
}

/// Runs the test `what` on a fresh [`setup`] (`prefix`): its `body` within
/// `limit` (past it, the namespace's state is printed and the test fails),
/// then the teardown, then how long it all took.
pub async fn run(prefix: &str, what: &str, limit: Duration, body: impl AsyncFnOnce(&Env)) {
    let started = std::time::Instant::now();
    let env = setup(prefix).await;
    let result = wait::within(what, limit, body(&env)).await;
    if result.is_err() {
        eprintln!("{}", env.ns.describe().await);
    }
    result.unwrap_or_else(|e| panic!("{what} did not finish in time: {e}"));
    env.teardown().await;
    eprintln!("{what} took {:?}", started.elapsed());
}

/// The pod's IP, once reported.
pub fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// GET `path` on a pod IP; `None` when unreachable.
pub async fn get(ip: Ipv4Addr, path: &str) -> Option<http::Response> {
    http::get(SocketAddr::from((ip, PORT)), path, Duration::from_secs(2))
        .await
        .ok()
}

/// Whether a process id is still alive.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
