//! A node agent standing in for the kubelet: pods as local processes.
//!
//! [`NodeAgent::start`] registers one or more fake nodes (by default one GPU
//! node) that advertise `cpu`, `memory`, `pods` and `nvidia.com/gpu` in
//! `status.capacity`/`allocatable`, a `Ready` condition and loopback
//! addresses, and keeps them alive with a `Lease` heartbeat in
//! `kube-node-lease` (plus a node-status refresh). It then polls the pods bound
//! to its nodes (`spec.nodeName`) and, like the kubelet:
//!
//! - gives each pod its own loopback pod IP `127.B.x.y` (`B` is random per
//!   agent, or [`AgentConfig::ip_block`]) and runs each container as a local
//!   process: the image name is mapped to a binary by [`AgentConfig::image`]
//!   (see [`pod`] for argv, environment and volume rules);
//! - reports `status.podIP`, container states (running, terminated, waiting
//!   with `CrashLoopBackOff`), restart counts, and `Ready` from the readiness
//!   probe (HTTP GET, HTTPS GET without verifying the certificate as the
//!   kubelet does, or TCP on the pod IP);
//! - restarts exited containers per `restartPolicy` with exponential back-off
//!   ([`AgentConfig::backoff`]; the kubelet's is 10 s doubling to 5 min,
//!   tests use a shorter base);
//! - when a pod is deleted, stops its processes (SIGTERM to the process group,
//!   SIGKILL after the grace period, capped by [`AgentConfig::max_grace`]) and
//!   finalises the deletion (`gracePeriodSeconds=0` with a UID precondition),
//!   so the object goes away.
//!
//! - enforces `resources.limits.memory` as the cgroup's OOM killer would,
//!   sampled: a container process whose resident memory exceeds its limit is
//!   killed (SIGKILL to its group) and reported terminated with reason
//!   `OOMKilled`, exit code 137, then restarted per `restartPolicy`;
//! - can **lose** a node ([`NodeAgent::lose_node`]): its processes are
//!   killed at once, its heartbeat stops and its Node object is deleted, as
//!   when a machine vanishes and the cloud's node controller removes it; the
//!   pod garbage collector then deletes the pods bound to it and their
//!   controllers replace them on the remaining nodes.
//!
//! Not modelled: init containers, liveness/startup probes (ignored), exec
//! probes (treated as passing), CPU limits, image pulls, networking
//! between pod IPs beyond loopback (every pod IP is reachable from every
//! process), and ClusterIPs (never dial them).
//!
//! Processes are spawned from one dedicated thread through
//! `setpriv --pdeathsig KILL` (when `setpriv` exists), so they die with the
//! agent even if the test process is killed; dropping the agent kills them too.

pub mod pod;
mod spawn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Error, Result};

const MANAGER: &str = "medembed-node-agent";
/// The label every node of an agent carries, with the agent's name as value.
pub const AGENT_LABEL: &str = "medembed.test/agent";

/// One fake node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The node's name (also its `kubernetes.io/hostname` label).
    pub name: String,
    /// `nvidia.com/gpu` in capacity and allocatable (0: not advertised).
    pub gpus: u32,
    /// CPU capacity, as a quantity (e.g. "16").
    pub cpu: String,
    /// Memory capacity, as a quantity (e.g. "64Gi").
    pub memory: String,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// A node with `gpus` GPUs, 16 CPUs and 64 GiB of memory.
    pub fn gpu(name: impl Into<String>, gpus: u32) -> Self {
        NodeSpec {
            name: name.into(),
            gpus,
            cpu: "16".into(),
            memory: "64Gi".into(),
            labels: BTreeMap::new(),
        }
    }
}

/// What a [`NodeAgent`] runs and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name: the value of the [`AGENT_LABEL`] node label and the
    /// prefix of default node names.
    pub name: String,
    /// The nodes to register (default: one `<name>-gpu-0` with 2 GPUs).
    pub nodes: Vec<NodeSpec>,
    /// Image name → local binary. An image is looked up as written, then
    /// without its tag or digest (`repo/name:tag` → `repo/name`).
    pub images: HashMap<String, PathBuf>,
    /// Extra environment for every container (before the pod's own env).
    pub env: Vec<(String, String)>,
    /// Variables copied from the agent's own environment into every container
    /// (the rest of the agent's environment is not passed).
    pub inherit_env: Vec<String>,
    /// Restart back-off: first delay and cap (doubling in between).
    pub backoff: (Duration, Duration),
    /// Upper bound on a deleted pod's termination grace period.
    pub max_grace: Duration,
    /// How often the pods bound to the nodes are listed.
    pub poll_interval: Duration,
    /// Second octet of the pod IPs (127.B.x.y); random in 16..=250 if unset.
    pub ip_block: Option<u8>,
}

impl AgentConfig {
    /// A configuration with defaults and one 2-GPU node named `<name>-gpu-0`.
    pub fn new(name: impl Into<String>) -> Self {
        AgentConfig {
            name: name.into(),
            nodes: Vec::new(),
            images: HashMap::new(),
            env: Vec::new(),
            inherit_env: [
                "PATH",
                "HOME",
                "TMPDIR",
                "LANG",
                "RUST_LOG",
                "RUST_BACKTRACE",
                "LD_LIBRARY_PATH",
            ]
            .map(String::from)
            .to_vec(),
            backoff: (Duration::from_millis(500), Duration::from_secs(8)),
            max_grace: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
            ip_block: None,
        }
    }

    /// Maps an image name to a local binary.
    pub fn image(mut self, image: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        self.images.insert(image.into(), binary.into());
        self
    }

    /// Adds a node.
    pub fn node(mut self, node: NodeSpec) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds an environment variable for every container.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the restart back-off (first delay, cap).
    pub fn backoff(mut self, first: Duration, cap: Duration) -> Self {
        self.backoff = (first, cap);
        self
    }

    /// Sets the pod IP block (127.B.x.y).
    pub fn ip_block(mut self, b: u8) -> Self {
        self.ip_block = Some(b);
        self
    }

    pub(crate) fn binary_for(&self, image: &str) -> Option<&Path> {
        if let Some(p) = self.images.get(image) {
            return Some(p);
        }
        let no_digest = image.split('@').next().unwrap_or(image);
        // A tag follows the last ':' after the last '/' (a registry port does not).
        let base = match no_digest.rfind(':') {
            Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
            _ => no_digest,
        };
        self.images.get(base).map(PathBuf::as_path)
    }
}

/// A container process the agent is running.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container's name.
    pub container: String,
    /// The process id (also its process group id).
    pub pid: u32,
    /// The pod IP the process was told to listen on (`POD_IP`).
    pub pod_ip: Ipv4Addr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// State shared by the agent's tasks.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: AgentConfig,
    pub(crate) root: tempfile::TempDir,
    pub(crate) spawner: spawn::Spawner,
    /// The API server's URL (`https://127.0.0.1:PORT`), for pods' kubeconfigs.
    pub(crate) cluster_url: String,
    pods: Mutex<HashMap<String, pod::PodHandle>>,
    /// Nodes lost on purpose: no heartbeat, no pods.
    lost: Mutex<HashSet<String>>,
    next_ip: Mutex<u32>,
    ip_block: u8,
}

impl Shared {
    fn allocate_ip(&self) -> Ipv4Addr {
        let mut n = self.next_ip.lock().unwrap_or_else(|e| e.into_inner());
        let i = *n;
        *n += 1;
        Ipv4Addr::new(127, self.ip_block, (i / 250) as u8, (i % 250 + 1) as u8)
    }
}

/// A running node agent. Dropping it kills its processes; prefer
/// [`NodeAgent::shutdown`], which also removes its nodes.
pub struct NodeAgent {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("name", &self.shared.config.name)
            .field("nodes", &self.node_names())
            .finish()
    }
}

impl NodeAgent {
    /// Registers the nodes, waits until the API server shows them, and starts
    /// the heartbeat and the pod loop.
    pub async fn start(cp: &crate::ControlPlane, mut config: AgentConfig) -> Result<Self> {
        let client: Client = cp.client()?;
        let cluster_url = cp
            .config()
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        if config.nodes.is_empty() {
            config
                .nodes
                .push(NodeSpec::gpu(format!("{}-gpu-0", config.name), 2));
        }
        let root = tempfile::Builder::new()
            .prefix("medembed-node.")
            .tempdir()
            .map_err(|e| Error::io("creating the node agent's directory", e))?;
        let ip_block = config.ip_block.unwrap_or_else(|| {
            16 + (crate::cluster::random_suffix()
                .bytes()
                .map(u32::from)
                .sum::<u32>()
                * 7
                % 235) as u8
        });
        let shared = Arc::new(Shared {
            cluster_url,
            client,
            config,
            root,
            spawner: spawn::Spawner::new()?,
            pods: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
            next_ip: Mutex::new(0),
            ip_block,
        });
        for node in &shared.config.nodes {
            register(&shared, node).await?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(heartbeat(shared.clone(), stop_rx.clone())),
            tokio::spawn(pod_loop(shared.clone(), stop_rx)),
        ];
        Ok(NodeAgent {
            shared,
            stop,
            tasks,
        })
    }

    /// The names of the agent's nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.shared
            .config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// The agent's name, the value of its nodes' [`AGENT_LABEL`]; put
    /// `nodeSelector: {AGENT_LABEL: name}` in pods when a cluster is shared.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The container processes running now, optionally only in `namespace`.
    pub fn processes(&self, namespace: Option<&str>) -> Vec<ProcessInfo> {
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ProcessInfo> = pods
            .values()
            .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
            .flat_map(|p| p.processes())
            .collect();
        out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
        out
    }

    /// Loses node `name` as a machine that vanished would: every process of
    /// its pods is killed now (SIGKILL, no grace), its heartbeat stops, it
    /// runs nothing more, and its Node object is deleted (what the cloud's
    /// node controller does for a deleted instance). The pod garbage
    /// collector deletes the pods bound to it after its quarantine (~40 s).
    /// Returns the names of the pods that were running there.
    pub async fn lose_node(&self, name: &str) -> Result<Vec<String>> {
        if !self.shared.config.nodes.iter().any(|n| n.name == name) {
            return Err(Error::Other(format!("no node {name} on this agent")));
        }
        self.shared
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        let killed: Vec<pod::PodHandle> = {
            let mut pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
            let uids: Vec<String> = pods
                .iter()
                .filter(|(_, h)| h.node == name)
                .map(|(u, _)| u.clone())
                .collect();
            uids.iter().filter_map(|u| pods.remove(u)).collect()
        };
        let mut names = Vec::new();
        for h in &killed {
            h.kill_now();
            names.push(h.name.clone());
        }
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        names.sort();
        Ok(names)
    }

    /// Stops the agent: kills every process (SIGTERM, then SIGKILL), and
    /// deletes its nodes (the pod garbage collector then removes their pods).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let handles: Vec<pod::PodHandle> = {
            let mut pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.drain().map(|(_, h)| h).collect()
        };
        for h in handles {
            h.stop(Duration::from_secs(2)).await;
        }
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        for n in &self.shared.config.nodes {
            let _ = nodes.delete(&n.name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let pods = self.shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        for h in pods.values() {
            h.kill_now();
        }
    }
}

fn node_object(spec: &NodeSpec, agent: &str) -> serde_json::Value {
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert(AGENT_LABEL.into(), agent.into());
    if spec.gpus > 0 {
        labels.insert("nvidia.com/gpu.present".into(), "true".into());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": spec.name, "labels": labels },
        "spec": {},
    })
}

fn node_status(spec: &NodeSpec) -> serde_json::Value {
    let now = Time(Timestamp::now());
    let mut capacity = serde_json::Map::new();
    capacity.insert("cpu".into(), json!(spec.cpu));
    capacity.insert("memory".into(), json!(spec.memory));
    capacity.insert("pods".into(), json!("110"));
    capacity.insert("ephemeral-storage".into(), json!("100Gi"));
    if spec.gpus > 0 {
        capacity.insert("nvidia.com/gpu".into(), json!(spec.gpus.to_string()));
    }
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": spec.name },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "medembed node agent is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "nodeInfo": {
                "machineID": spec.name, "systemUUID": spec.name, "bootID": spec.name,
                "kernelVersion": "local", "osImage": "medembed node agent",
                "containerRuntimeVersion": "medembed-local://0.1",
                "kubeletVersion": "v1.36.3", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

async fn register(shared: &Shared, spec: &NodeSpec) -> Result<()> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    nodes
        .patch(
            &spec.name,
            &pp,
            &Patch::Apply(node_object(spec, &shared.config.name)),
        )
        .await?;
    nodes
        .patch_status(&spec.name, &pp, &Patch::Apply(node_status(spec)))
        .await?;
    // The TaintNodesByCondition admission plugin taints new nodes
    // `node.kubernetes.io/not-ready:NoSchedule`; the node lifecycle controller
    // (not running here) would lift it once Ready. Lift it ourselves.
    let untaint = json!({"spec": {"taints": null}});
    nodes
        .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&untaint))
        .await?;
    renew_lease(shared, spec).await?;
    Ok(())
}

async fn renew_lease(shared: &Shared, spec: &NodeSpec) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": spec.name },
        "spec": {
            "holderIdentity": spec.name,
            "leaseDurationSeconds": 40,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now()),
        },
    });
    leases
        .patch(
            &spec.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}

/// Renews each node's Lease every 10 s and refreshes its status every 30 s.
async fn heartbeat(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        tick += 1;
        for spec in &shared.config.nodes {
            if is_lost(&shared, &spec.name) {
                continue;
            }
            if let Err(e) = renew_lease(&shared, spec).await {
                tracing::warn!(node = %spec.name, "lease renewal failed: {e}");
            }
            if tick.is_multiple_of(3) {
                let nodes: Api<Node> = Api::all(shared.client.clone());
                let pp = PatchParams::apply(MANAGER).force();
                if let Err(e) = nodes
                    .patch_status(&spec.name, &pp, &Patch::Apply(node_status(spec)))
                    .await
                {
                    tracing::warn!(node = %spec.name, "node status refresh failed: {e}");
                }
            }
        }
    }
}

fn is_lost(shared: &Shared, node: &str) -> bool {
    shared
        .lost
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(node)
}

/// Reconciles the pods bound to the agent's nodes with the local processes.
async fn pod_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let pods_api: Api<Pod> = Api::all(shared.client.clone());
    loop {
        if let Err(e) = reconcile(&shared, &pods_api).await {
            tracing::warn!("node agent: listing pods failed: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile(shared: &Arc<Shared>, pods_api: &Api<Pod>) -> Result<()> {
    let mut bound: HashMap<String, Pod> = HashMap::new();
    for node in &shared.config.nodes {
        if is_lost(shared, &node.name) {
            continue;
        }
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", node.name));
        for p in pods_api.list(&lp).await?.items {
            if let Some(uid) = p.metadata.uid.clone() {
                bound.insert(uid, p);
            }
        }
    }
    let mut to_stop: Vec<(pod::PodHandle, Option<Pod>)> = Vec::new();
    {
        let mut local = shared.pods.lock().unwrap_or_else(|e| e.into_inner());
        // Pods gone from the API: stop their processes.
        let gone: Vec<String> = local
            .keys()
            .filter(|u| !bound.contains_key(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(h) = local.remove(&uid) {
                to_stop.push((h, None));
            }
        }
        let known: HashSet<String> = local.keys().cloned().collect();
        for (uid, p) in &bound {
            let deleting = p.metadata.deletion_timestamp.is_some();
            if deleting {
                if let Some(h) = local.remove(uid) {
                    to_stop.push((h, Some(p.clone())));
                } else {
                    to_stop_finalise_only(shared, p.clone());
                }
                continue;
            }
            let finished = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            );
            if !known.contains(uid) && !finished {
                let ip = shared.allocate_ip();
                let handle = pod::PodHandle::start(shared.clone(), p.clone(), ip);
                local.insert(uid.clone(), handle);
            }
        }
    }
    for (h, pod) in to_stop {
        let shared = shared.clone();
        tokio::spawn(async move {
            let grace = pod
                .as_ref()
                .and_then(|p| p.metadata.deletion_grace_period_seconds)
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(Duration::from_secs(2))
                .min(shared.config.max_grace);
            h.stop(grace).await;
            if let Some(p) = pod {
                finalise(&shared, &p).await;
            }
        });
    }
    Ok(())
}

fn to_stop_finalise_only(shared: &Arc<Shared>, p: Pod) {
    let shared = shared.clone();
    tokio::spawn(async move { finalise(&shared, &p).await });
}

/// Deletes a terminating pod for good (what the kubelet does once its
/// containers are gone): grace period 0, guarded by the pod's UID.
async fn finalise(shared: &Shared, p: &Pod) {
    let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
    else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, "finalising deletion failed: {e}"),
    }
}
