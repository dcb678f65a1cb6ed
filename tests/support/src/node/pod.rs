//! One pod on the node agent: its files, its environment, its container
//! processes, its probes and the status it reports.
//!
//! # How a container becomes a process
//!
//! - **Program**: the binary mapped to the container's `image`
//!   ([`super::AgentConfig::image`]). The image's entrypoint *is* that binary,
//!   so argv is `command[1..]` followed by `args` (`command[0]` names the
//!   entrypoint inside the image and is dropped), after `$(VAR)` expansion as
//!   in Kubernetes. An unmapped image leaves the container waiting with reason
//!   `ErrImagePull`.
//! - **Environment**: a clean environment with the variables named in
//!   [`super::AgentConfig::inherit_env`], then [`super::AgentConfig::env`], then
//!   these (a pod's own `env` may override them):
//!   `POD_IP` (the pod's loopback IP: programs must bind it),
//!   `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`, `HOSTNAME`,
//!   `KUBERNETES_SERVICE_HOST`/`_PORT` (the real API server on loopback),
//!   `MEDEMBED_POD_DIR` (the pod's directory) and `MEDEMBED_MOUNTS` (the mount
//!   table, `mountPath=hostPath` pairs separated by newlines); then `envFrom`
//!   (ConfigMaps, Secrets, with prefix) and `env` (`value` with `$(VAR)`
//!   expansion; `valueFrom` `fieldRef` for `metadata.name|namespace|uid`,
//!   `metadata.labels['k']`, `metadata.annotations['k']`, `spec.nodeName`,
//!   `spec.serviceAccountName`, `status.podIP(s)`, `status.hostIP(s)`;
//!   `secretKeyRef`, `configMapKeyRef` (honouring `optional`); and
//!   `resourceFieldRef`, which yields the raw quantity of the limit, else the
//!   request, else "0").
//! - **Volumes**: written under `<pod dir>/volumes/<volume>`: `configMap`,
//!   `secret` (all keys, or `items`), `emptyDir`, `downwardAPI`, `projected`
//!   (ConfigMap, Secret, downward API and `serviceAccountToken` sources; the
//!   token comes from the TokenRequest API, bound to the pod); `hostPath` maps
//!   to the real path, and so does a `persistentVolumeClaim` bound to a
//!   PersistentVolume with a `hostPath` or `local` path (the claim must exist
//!   and name its volume, else the pod stays in `ContainerCreating`); anything
//!   else is an empty directory. A missing
//!   ConfigMap or Secret that is not `optional` keeps the pod in
//!   `ContainerCreating` until it appears.
//! - **Mount paths**: processes see host paths, not the `mountPath`s, so every
//!   occurrence of a mount path (at a path boundary, longest first) in argv and
//!   in env values is **rewritten** to its host directory (`subPath`
//!   honoured), e.g. `--config=/etc/medembed/config.yaml` becomes
//!   `--config=/tmp/medembed-node.x/ns_pod_uid/volumes/config/config.yaml`.
//!   `MEDEMBED_MOUNTS` lists the table for programs that build paths
//!   themselves.
//! - **API access**: when the pod has a service-account token volume, a
//!   kubeconfig using that token and the cluster CA is written to the pod
//!   directory and exported as `KUBECONFIG`, so `kube::Config::infer()` in
//!   the program authenticates as the pod's service account (RBAC applies).
//! - stdout and stderr go to `<pod dir>/logs/<container>.log`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector,
    Pod, Probe, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::spawn::signal_group;
use super::{ProcessInfo, Shared};

/// The objects a volume can project keys from.
#[derive(Clone, Copy)]
enum Object {
    ConfigMap,
    Secret,
}

impl Object {
    /// The name kubelet's messages use.
    fn noun(self) -> &'static str {
        match self {
            Object::ConfigMap => "configmap",
            Object::Secret => "secret",
        }
    }
}

/// A container's current state.
#[derive(Debug, Clone)]
enum CState {
    Waiting { reason: String, message: String },
    Running { started: Timestamp },
    Terminated(Term),
}

/// How a container process ended.
#[derive(Debug, Clone)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: String,
    started: Timestamp,
    finished: Timestamp,
}

#[derive(Debug, Clone)]
struct CtrState {
    name: String,
    image: String,
    binary: Option<PathBuf>,
    pid: Option<u32>,
    log: PathBuf,
    state: CState,
    last: Option<Term>,
    restarts: i32,
    ready: bool,
}

#[derive(Debug)]
struct PodState {
    containers: Vec<CtrState>,
    prepared: bool,
    start: Timestamp,
    ready_transition: Timestamp,
    was_ready: bool,
}

type Shared0 = Arc<Mutex<PodState>>;

fn lock(s: &Shared0) -> std::sync::MutexGuard<'_, PodState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent's handle on one running pod.
pub(crate) struct PodHandle {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The node the pod is bound to.
    pub(crate) node: String,
    ip: Ipv4Addr,
    state: Shared0,
    /// `Some(grace)` once the pod is to stop.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl PodHandle {
    /// Starts the pod's task: prepare files, start containers, report status.
    pub(crate) fn start(shared: Arc<Shared>, pod: Pod, ip: Ipv4Addr) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = shared.root.path().join(format!(
            "{namespace}_{name}_{}",
            uid.get(..8).unwrap_or(&uid)
        ));
        let spec = pod.spec.clone().unwrap_or_default();
        let node = spec.node_name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let containers = spec
            .containers
            .iter()
            .map(|c| CtrState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                binary: None,
                pid: None,
                log: dir.join("logs").join(format!("{}.log", c.name)),
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last: None,
                restarts: 0,
                ready: false,
            })
            .collect();
        let state = Arc::new(Mutex::new(PodState {
            containers,
            prepared: false,
            start: now,
            ready_transition: now,
            was_ready: false,
        }));
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(run_pod(shared, pod, ip, dir, state.clone(), stop_rx));
        PodHandle {
            namespace,
            name,
            node,
            ip,
            state,
            stop,
            task,
        }
    }

    /// The pod's running container processes.
    pub(crate) fn processes(&self) -> Vec<ProcessInfo> {
        lock(&self.state)
            .containers
            .iter()
            .filter(|c| matches!(c.state, CState::Running { .. }))
            .filter_map(|c| {
                c.pid.map(|pid| ProcessInfo {
                    namespace: self.namespace.clone(),
                    pod: self.name.clone(),
                    container: c.name.clone(),
                    pid,
                    pod_ip: self.ip,
                    log: c.log.clone(),
                })
            })
            .collect()
    }

    /// Stops the containers: SIGTERM, SIGKILL after `grace`; waits for them.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let mut task = self.task;
        if tokio::time::timeout(grace + Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        // Whatever is still recorded as running gets SIGKILL.
        for c in &lock(&self.state).containers {
            if let Some(pid) = c.pid {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    /// SIGKILLs every process now (for drop).
    pub(crate) fn kill_now(&self) {
        self.task.abort();
        for c in &lock(&self.state).containers {
            if let Some(pid) = c.pid {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}

/// What to run for one container.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    program: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log: PathBuf,
    readiness: Option<Probe>,
    ports: Vec<ContainerPort>,
    /// `resources.limits.memory`, in bytes.
    memory_limit: Option<u64>,
}

/// How often a container with a memory limit has its resident memory read.
const MEMORY_CHECK: Duration = Duration::from_millis(100);

/// A Kubernetes quantity of bytes (`64Mi`, `1Gi`, `500M`, `1e9`, `1024`).
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0 && n.is_finite()).then_some((n * mult) as u64)
}

/// Resident memory of a process (`VmRSS` in `/proc/PID/status`).
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn run_pod(
    shared: Arc<Shared>,
    pod: Pod,
    ip: Ipv4Addr,
    dir: PathBuf,
    state: Shared0,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let notify = Arc::new(Notify::new());
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let mut last_written = Value::Null;

    // Prepare files and plans; retry while ConfigMaps/Secrets are missing.
    let plans = loop {
        match prepare(&shared, &pod, ip, &dir).await {
            Ok(plans) => break plans,
            Err(msg) => {
                for c in &mut lock(&state).containers {
                    c.state = CState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: msg.clone(),
                    };
                }
                write_status(&api, &name, &pod, ip, &state, &mut last_written).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    lock(&state).prepared = true;

    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let mut workers = Vec::new();
    for (idx, plan) in plans.into_iter().enumerate() {
        lock(&state).containers[idx].binary = plan.program.clone();
        if let Some(probe) = plan.readiness.clone() {
            workers.push(tokio::spawn(probe_loop(
                idx,
                probe,
                plan.ports.clone(),
                ip,
                state.clone(),
                notify.clone(),
                stop.clone(),
            )));
        }
        let sup = Supervisor {
            shared: shared.clone(),
            pod_name: name.clone(),
            idx,
            plan,
            policy: policy.clone(),
            state: state.clone(),
            notify: notify.clone(),
        };
        workers.push(tokio::spawn(sup.run(stop.clone())));
    }

    loop {
        write_status(&api, &name, &pod, ip, &state, &mut last_written).await;
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => break,
        }
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Runs one container: spawn, wait, restart with back-off per restart policy.
struct Supervisor {
    shared: Arc<Shared>,
    pod_name: String,
    idx: usize,
    plan: Plan,
    policy: String,
    state: Shared0,
    notify: Arc<Notify>,
}

impl Supervisor {
    fn set(&self, f: impl FnOnce(&mut CtrState)) {
        f(&mut lock(&self.state).containers[self.idx]);
        self.notify.notify_one();
    }

    async fn run(self, mut stop: watch::Receiver<Option<Duration>>) {
        let (first, cap) = self.shared.config.backoff;
        let mut delay = first;
        let has_probe = self.plan.readiness.is_some();
        loop {
            if stop.borrow().is_some() {
                return;
            }
            let Some(program) = self.plan.program.clone() else {
                self.set(|c| {
                    c.state = CState::Waiting {
                        reason: "ErrImagePull".into(),
                        message: format!("image {:?} is not mapped to a local binary", c.image),
                    }
                });
                let _ = stop.changed().await;
                return;
            };
            let started = Timestamp::now();
            let began = Instant::now();
            let term = match self.spawn(&program).await {
                Err(e) => Term {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: e.to_string(),
                    started,
                    finished: Timestamp::now(),
                },
                Ok(mut child) => {
                    let pid = child.id();
                    self.set(|c| {
                        c.pid = pid;
                        c.state = CState::Running { started };
                        c.ready = !has_probe;
                    });
                    let mut oom_killed = false;
                    let mut memory_check = tokio::time::interval(MEMORY_CHECK);
                    let status = loop {
                        tokio::select! {
                            s = child.wait() => break s,
                            _ = stop.changed() => {
                                let grace = stop.borrow().unwrap_or_default();
                                if let Some(pid) = pid {
                                    signal_group(pid, Signal::SIGTERM);
                                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                                        signal_group(pid, Signal::SIGKILL);
                                        let _ = child.wait().await;
                                    }
                                }
                                self.set(|c| { c.pid = None; c.ready = false; });
                                return;
                            }
                            _ = memory_check.tick(), if self.plan.memory_limit.is_some() && !oom_killed => {
                                // The cgroup's OOM killer, sampled: a process
                                // over its limit is killed outright.
                                let over = pid
                                    .and_then(resident_bytes)
                                    .zip(self.plan.memory_limit)
                                    .is_some_and(|(rss, limit)| rss > limit);
                                if over {
                                    if let Some(pid) = pid {
                                        signal_group(pid, Signal::SIGKILL);
                                    }
                                    oom_killed = true;
                                }
                            }
                        }
                    };
                    use std::os::unix::process::ExitStatusExt;
                    let (exit_code, signal) = match status {
                        Ok(s) => match (s.code(), s.signal()) {
                            (Some(code), _) => (code, None),
                            (None, Some(sig)) => (128 + sig, Some(sig)),
                            _ => (255, None),
                        },
                        Err(_) => (255, None),
                    };
                    Term {
                        exit_code,
                        signal,
                        reason: if oom_killed {
                            "OOMKilled".into()
                        } else if exit_code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        },
                        message: String::new(),
                        started,
                        finished: Timestamp::now(),
                    }
                }
            };
            let restart = match self.policy.as_str() {
                "Never" => false,
                "OnFailure" => term.exit_code != 0,
                _ => true,
            };
            if !restart {
                self.set(|c| {
                    c.pid = None;
                    c.ready = false;
                    c.state = CState::Terminated(term);
                });
                let _ = stop.changed().await;
                return;
            }
            // A container that ran for a while starts its back-off afresh.
            if began.elapsed() > cap * 2 {
                delay = first;
            }
            let message = format!(
                "back-off {:?} restarting failed container={} pod={}",
                delay, self.plan.name, self.pod_name
            );
            self.set(|c| {
                c.pid = None;
                c.ready = false;
                c.last = Some(term);
                c.state = CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message,
                };
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(cap);
            self.set(|c| c.restarts += 1);
        }
    }

    async fn spawn(&self, program: &Path) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.plan.log)?;
        let mut cmd = self.shared.spawner.command(program);
        cmd.args(&self.plan.args)
            .env_clear()
            .envs(self.plan.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.plan.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.shared.spawner.spawn(cmd).await
    }
}

/// Runs a readiness probe against the pod IP and updates the container's
/// `ready` per the probe's thresholds.
async fn probe_loop(
    idx: usize,
    probe: Probe,
    ports: Vec<ContainerPort>,
    ip: Ipv4Addr,
    state: Shared0,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let period = secs(probe.period_seconds, 10).max(Duration::from_millis(200));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_millis(200));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    let initial = secs(probe.initial_delay_seconds, 0);
    let (mut ok_run, mut fail_run) = (0, 0);
    let mut current_started: Option<Timestamp> = None;
    loop {
        let running = match &lock(&state).containers[idx].state {
            CState::Running { started } => Some(*started),
            _ => None,
        };
        if running != current_started {
            // A new process: counters reset, initial delay applies again.
            current_started = running;
            ok_run = 0;
            fail_run = 0;
            if running.is_some() && !initial.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(initial) => {}
                    _ = stop.changed() => return,
                }
            }
        }
        if running.is_some() {
            let ok = check(&probe, &ports, ip, timeout).await;
            let mut st = lock(&state);
            let c = &mut st.containers[idx];
            if ok {
                ok_run += 1;
                fail_run = 0;
                if !c.ready
                    && ok_run >= success_threshold
                    && matches!(c.state, CState::Running { .. })
                {
                    c.ready = true;
                    notify.notify_one();
                }
            } else {
                fail_run += 1;
                ok_run = 0;
                if c.ready && fail_run >= failure_threshold {
                    c.ready = false;
                    notify.notify_one();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(if running.is_some() { period } else { Duration::from_millis(200) }) => {}
            _ = stop.changed() => return,
        }
    }
}

fn port_of(p: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(s) => ports
            .iter()
            .find(|cp| cp.name.as_deref() == Some(s.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .or_else(|| s.parse().ok()),
    }
}

/// One probe attempt: HTTP GET (2xx/3xx passes; over TLS with `scheme:
/// HTTPS`, the certificate not verified), TCP connect, or (exec, gRPC: not
/// modelled) pass.
async fn check(probe: &Probe, ports: &[ContainerPort], ip: Ipv4Addr, timeout: Duration) -> bool {
    if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port, ports) else {
            return false;
        };
        let host: Ipv4Addr = h.host.as_deref().and_then(|s| s.parse().ok()).unwrap_or(ip);
        let path = h.path.as_deref().unwrap_or("/");
        let addr = SocketAddr::from((host, port));
        let answer = match h.scheme.as_deref() {
            Some("HTTPS") => crate::http::get_tls(addr, path, timeout).await,
            _ => crate::http::get(addr, path, timeout).await,
        };
        return matches!(answer, Ok(r) if (200..400).contains(&r.status));
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = port_of(&t.port, ports) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        );
    }
    true
}

fn ts(t: Timestamp) -> Value {
    json!(Time(t))
}

fn term_json(t: &Term, container_id: &str) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code, "reason": t.reason,
        "startedAt": ts(t.started), "finishedAt": ts(t.finished),
        "containerID": container_id,
    });
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    if !t.message.is_empty() {
        v["message"] = json!(t.message);
    }
    json!({ "terminated": v })
}

/// The pod's status as the kubelet would report it.
fn status_json(pod: &Pod, ip: Ipv4Addr, st: &mut PodState) -> Value {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let all_ready = !st.containers.is_empty() && st.containers.iter().all(|c| c.ready);
    if all_ready != st.was_ready {
        st.was_ready = all_ready;
        st.ready_transition = Timestamp::now();
    }
    let statuses: Vec<Value> = st
        .containers
        .iter()
        .map(|c| {
            let id = format!("local://{}", c.pid.map(|p| p.to_string()).unwrap_or_default());
            let state = match &c.state {
                CState::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
                CState::Running { started } => json!({"running": {"startedAt": ts(*started)}}),
                CState::Terminated(t) => term_json(t, &id),
            };
            let mut v = json!({
                "name": c.name, "image": c.image,
                "imageID": c.binary.as_ref().map(|b| format!("local://{}", b.display())).unwrap_or_default(),
                "ready": c.ready, "started": matches!(c.state, CState::Running { .. }),
                "restartCount": c.restarts, "state": state,
                "lastState": c.last.as_ref().map(|t| term_json(t, "")).unwrap_or(json!({})),
            });
            if c.pid.is_some() {
                v["containerID"] = json!(id);
            }
            v
        })
        .collect();
    let all_done = st
        .containers
        .iter()
        .all(|c| matches!(c.state, CState::Terminated(_)));
    let phase = if !st.prepared {
        "Pending"
    } else if policy != "Always" && all_done && !st.containers.is_empty() {
        let ok = st
            .containers
            .iter()
            .all(|c| matches!(&c.state, CState::Terminated(t) if t.exit_code == 0));
        if ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let tf = |b: bool| if b { "True" } else { "False" };
    let cond = |t: &str, ok: bool, when: Timestamp| {
        let mut v = json!({"type": t, "status": tf(ok), "lastTransitionTime": ts(when)});
        if !ok && (t == "Ready" || t == "ContainersReady") {
            let not_ready: Vec<&str> = st
                .containers
                .iter()
                .filter(|c| !c.ready)
                .map(|c| c.name.as_str())
                .collect();
            v["reason"] = json!("ContainersNotReady");
            v["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
        v
    };
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
        "startTime": ts(st.start),
        "conditions": [
            cond("PodReadyToStartContainers", st.prepared, st.start),
            cond("Initialized", true, st.start),
            cond("Ready", all_ready, st.ready_transition),
            cond("ContainersReady", all_ready, st.ready_transition),
            cond("PodScheduled", true, st.start),
        ],
        "containerStatuses": statuses,
    })
}

async fn write_status(
    api: &Api<Pod>,
    name: &str,
    pod: &Pod,
    ip: Ipv4Addr,
    state: &Shared0,
    last: &mut Value,
) {
    let status = status_json(pod, ip, &mut lock(state));
    if status == *last {
        return;
    }
    let patch = json!({ "status": status });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => *last = status,
        Err(kube::Error::Api(s)) if s.code == 404 => *last = status,
        Err(e) => tracing::warn!(pod = %name, "writing pod status failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Preparing files and plans.

/// Writes the pod's volumes and resolves every container's plan. `Err` carries
/// a message for `ContainerCreating` (e.g. a missing ConfigMap).
async fn prepare(
    shared: &Shared,
    pod: &Pod,
    ip: Ipv4Addr,
    dir: &Path,
) -> Result<Vec<Plan>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| io("creating pod dir", e))?;
    let src = Sources {
        shared,
        ns: ns.clone(),
        pod,
        ip,
    };

    // Volumes.
    let mut vol_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut token_volumes: Vec<(String, PathBuf, PathBuf)> = Vec::new(); // (volume, token file, ca file)
    for v in spec.volumes.iter().flatten() {
        let vdir = dir.join("volumes").join(&v.name);
        if let Some(hp) = &v.host_path {
            vol_dirs.insert(v.name.clone(), PathBuf::from(&hp.path));
            continue;
        }
        if let Some(claim) = &v.persistent_volume_claim {
            vol_dirs.insert(v.name.clone(), src.claim_dir(&claim.claim_name).await?);
            continue;
        }
        std::fs::create_dir_all(&vdir).map_err(|e| io("creating volume dir", e))?;
        if let Some(cm) = &v.config_map {
            let items = cm.items.as_deref();
            src.write_object(Object::ConfigMap, &cm.name, items, cm.optional, &vdir)
                .await?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let items = s.items.as_deref();
            src.write_object(Object::Secret, &name, items, s.optional, &vdir)
                .await?;
        } else if let Some(d) = &v.downward_api {
            src.write_fields(d.items.as_deref(), &vdir)?;
        } else if let Some(p) = &v.projected {
            for s in p.sources.iter().flatten() {
                if let Some(cm) = &s.config_map {
                    let items = cm.items.as_deref();
                    src.write_object(Object::ConfigMap, &cm.name, items, cm.optional, &vdir)
                        .await?;
                }
                if let Some(sec) = &s.secret {
                    let items = sec.items.as_deref();
                    src.write_object(Object::Secret, &sec.name, items, sec.optional, &vdir)
                        .await?;
                }
                if let Some(d) = &s.downward_api {
                    src.write_fields(d.items.as_deref(), &vdir)?;
                }
                if let Some(t) = &s.service_account_token {
                    let token = src.token(t.audience.clone(), t.expiration_seconds).await?;
                    let file = vdir.join(&t.path);
                    write_file(&file, token.as_bytes())?;
                    token_volumes.push((v.name.clone(), file, vdir.join("ca.crt")));
                }
            }
        }
        vol_dirs.insert(v.name.clone(), vdir);
    }

    let mut plans = Vec::new();
    for c in &spec.containers {
        plans.push(src.plan(c, dir, &vol_dirs, &token_volumes).await?);
    }
    Ok(plans)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("key {:?} not found", it.key))?;
                write_file(&dir.join(&it.path), v)?;
            }
        }
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v)?;
            }
        }
    }
    Ok(())
}

/// Lookups of the objects a pod refers to.
struct Sources<'a> {
    shared: &'a Shared,
    ns: String,
    pod: &'a Pod,
    ip: Ipv4Addr,
}

impl Sources<'_> {
    /// The host directory behind a claim: its PersistentVolume's `hostPath`
    /// or `local` path.
    async fn claim_dir(&self, claim: &str) -> Result<PathBuf, String> {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.shared.client.clone(), &self.ns);
        let pvc = claims
            .get_opt(claim)
            .await
            .map_err(|e| format!("persistentvolumeclaim {claim}: {e}"))?
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
        let pvs: Api<PersistentVolume> = Api::all(self.shared.client.clone());
        let pv = pvs
            .get_opt(&volume)
            .await
            .map_err(|e| format!("persistentvolume {volume}: {e}"))?
            .ok_or_else(|| format!("persistentvolume \"{volume}\" not found"))?;
        let spec = pv.spec.unwrap_or_default();
        spec.host_path
            .map(|h| h.path)
            .or(spec.local.map(|l| l.path))
            .map(PathBuf::from)
            .ok_or_else(|| format!("persistentvolume \"{volume}\" has no hostPath or local path"))
    }

    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|e| format!("configmap {name}: {e}"))?;
        Ok(cm.map(|cm| {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            m.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            m
        }))
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let s = api
            .get_opt(name)
            .await
            .map_err(|e| format!("secret {name}: {e}"))?;
        Ok(s.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
    }

    /// Writes a ConfigMap's or Secret's keys (or the chosen `items`) into a
    /// volume's directory; a missing object is an error unless `optional`.
    async fn write_object(
        &self,
        kind: Object,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        dir: &Path,
    ) -> Result<(), String> {
        let data = match kind {
            Object::ConfigMap => self.config_map(name).await?,
            Object::Secret => self.secret(name).await?,
        };
        match data {
            Some(data) => write_items(dir, &data, items),
            None if optional.unwrap_or(false) => Ok(()),
            None => Err(format!("{} \"{name}\" not found", kind.noun())),
        }
    }

    /// Writes downward-API field references into a volume's directory.
    fn write_fields(
        &self,
        items: Option<&[DownwardAPIVolumeFile]>,
        dir: &Path,
    ) -> Result<(), String> {
        for item in items.into_iter().flatten() {
            if let Some(f) = &item.field_ref {
                write_file(&dir.join(&item.path), self.field(f)?.as_bytes())?;
            }
        }
        Ok(())
    }

    /// A service-account token bound to this pod (TokenRequest API).
    async fn token(
        &self,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> Result<String, String> {
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audience.into_iter().collect()),
                expiration_seconds: Some(expiration.unwrap_or(3600).max(600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: self.pod.metadata.name.clone(),
                    uid: self.pod.metadata.uid.clone(),
                }),
            }),
            ..Default::default()
        };
        let tr = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("token for service account {sa}: {e}"))?;
        tr.status
            .and_then(|s| s.token)
            .ok_or_else(|| "token request returned no token".into())
    }

    /// `fieldRef` values.
    fn field(&self, f: &ObjectFieldSelector) -> Result<String, String> {
        let m = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let path = f.field_path.as_str();
        let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        if let Some(v) = keyed("metadata.labels['", &m.labels) {
            return Ok(v);
        }
        if let Some(v) = keyed("metadata.annotations['", &m.annotations) {
            return Ok(v);
        }
        Ok(match path {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" | "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
            other => return Err(format!("unsupported fieldRef {other:?}")),
        })
    }

    async fn plan(
        &self,
        c: &Container,
        dir: &Path,
        vol_dirs: &BTreeMap<String, PathBuf>,
        token_volumes: &[(String, PathBuf, PathBuf)],
    ) -> Result<Plan, String> {
        // Mount table, longest mount path first.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut kubeconfig = None;
        for vm in c.volume_mounts.iter().flatten() {
            let Some(base) = vol_dirs.get(&vm.name) else {
                return Err(format!("volume {:?} not found", vm.name));
            };
            let host = match vm.sub_path.as_deref() {
                Some(sp) if !sp.is_empty() => base.join(sp),
                _ => base.clone(),
            };
            mounts.push((vm.mount_path.trim_end_matches('/').to_string(), host));
            if let Some((_, token, ca)) = token_volumes.iter().find(|(v, _, _)| *v == vm.name) {
                kubeconfig = Some((token.clone(), ca.clone()));
            }
        }
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));

        let mut env = Env::default();
        for key in &self.shared.config.inherit_env {
            if let Some(v) = std::env::var_os(key) {
                env.set(key, &v.to_string_lossy());
            }
        }
        for (k, v) in &self.shared.config.env {
            env.set(k, v);
        }
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let node = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        env.set("POD_IP", &self.ip.to_string());
        env.set("POD_NAME", &name);
        env.set("POD_NAMESPACE", &self.ns);
        env.set("NODE_NAME", &node);
        env.set("HOSTNAME", &name);
        if let Some(hostport) = self.shared.cluster_url.strip_prefix("https://") {
            if let Some((host, port)) = hostport.rsplit_once(':') {
                env.set("KUBERNETES_SERVICE_HOST", host);
                env.set("KUBERNETES_SERVICE_PORT", port);
            }
        }
        env.set("MEDEMBED_POD_DIR", &dir.to_string_lossy());
        let table: Vec<String> = mounts
            .iter()
            .map(|(m, h)| format!("{m}={}", h.display()))
            .collect();
        env.set("MEDEMBED_MOUNTS", &table.join("\n"));
        if let Some((token, ca)) = kubeconfig {
            let path = dir.join(format!("kubeconfig-{}", c.name));
            let kc = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    tokenFile: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {}}}\ncurrent-context: c\n",
                self.shared.cluster_url,
                ca.display(),
                token.display(),
                self.ns
            );
            write_file(&path, kc.as_bytes())?;
            env.set("KUBECONFIG", &path.to_string_lossy());
        }
        // The agent's own variables hold host paths already (a mount at
        // `/tmp` must not rewrite the pod directory under `/tmp`); only what
        // the pod sets below is rewritten.
        let agent_vars = env.vars.clone();

        for ef in c.env_from.iter().flatten() {
            let prefix = ef.prefix.clone().unwrap_or_default();
            let data = if let Some(r) = &ef.config_map_ref {
                match self.config_map(&r.name).await? {
                    Some(d) => d,
                    None if r.optional.unwrap_or(false) => BTreeMap::new(),
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &ef.secret_ref {
                match self.secret(&r.name).await? {
                    Some(d) => d,
                    None if r.optional.unwrap_or(false) => BTreeMap::new(),
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else {
                BTreeMap::new()
            };
            for (k, v) in data {
                env.set(&format!("{prefix}{k}"), &String::from_utf8_lossy(&v));
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(vf) = &e.value_from {
                if let Some(f) = &vf.field_ref {
                    Some(self.field(f)?)
                } else if let Some(r) = &vf.secret_key_ref {
                    let data = self.secret(&r.name).await?;
                    match data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if r.optional.unwrap_or(false) => None,
                        None => {
                            return Err(format!("secret \"{}\" key {:?} not found", r.name, r.key))
                        }
                    }
                } else if let Some(r) = &vf.config_map_key_ref {
                    let data = self.config_map(&r.name).await?;
                    match data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if r.optional.unwrap_or(false) => None,
                        None => {
                            return Err(format!(
                                "configmap \"{}\" key {:?} not found",
                                r.name, r.key
                            ))
                        }
                    }
                } else if let Some(r) = &vf.resource_field_ref {
                    let res = c.resources.as_ref();
                    let key = r
                        .resource
                        .split_once('.')
                        .map(|(_, k)| k)
                        .unwrap_or(&r.resource);
                    let pick = |m: Option<
                        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    >| {
                        m.and_then(|m| m.get(key)).map(|q| q.0.clone())
                    };
                    Some(
                        pick(res.and_then(|r| r.limits.as_ref()))
                            .or_else(|| pick(res.and_then(|r| r.requests.as_ref())))
                            .unwrap_or_else(|| "0".into()),
                    )
                } else {
                    None
                }
            } else {
                Some(env.expand(e.value.as_deref().unwrap_or_default()))
            };
            if let Some(v) = value {
                env.set(&e.name, &v);
            }
        }

        // Rewrite mount paths in env values (not in the agent's own variables).
        let env_vars: Vec<(String, String)> = env
            .vars
            .iter()
            .map(|(k, v)| {
                let own = agent_vars.iter().any(|(ak, av)| ak == k && av == v);
                let v = if own || k == "MEDEMBED_MOUNTS" {
                    v.clone()
                } else {
                    rewrite_mounts(v, &mounts)
                };
                (k.clone(), v)
            })
            .collect();
        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten())
            .map(|a| rewrite_mounts(&env.expand(a), &mounts))
            .collect();
        let cwd = c
            .working_dir
            .as_deref()
            .map(|w| PathBuf::from(rewrite_mounts(w, &mounts)))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| dir.to_path_buf());
        Ok(Plan {
            name: c.name.clone(),
            program: c
                .image
                .as_deref()
                .and_then(|i| self.shared.config.binary_for(i))
                .map(Path::to_path_buf),
            args,
            env: env_vars,
            cwd,
            log: dir.join("logs").join(format!("{}.log", c.name)),
            readiness: c.readiness_probe.clone(),
            ports: c.ports.clone().unwrap_or_default(),
            memory_limit: c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"))
                .and_then(|q| parse_bytes(&q.0)),
        })
    }
}

/// An ordered environment with Kubernetes' `$(VAR)` expansion.
#[derive(Default)]
struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn set(&mut self, k: &str, v: &str) {
        match self.vars.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => self.vars.push((k.to_string(), v.to_string())),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// `$(VAR)` → its value if defined (else left as is); `$$` → `$`.
    fn expand(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(inner) = after.strip_prefix('(') {
                match inner.find(')') {
                    Some(end) => {
                        let name = &inner[..end];
                        match self.get(name) {
                            Some(v) => out.push_str(v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        rest = &inner[end + 1..];
                    }
                    None => {
                        out.push('$');
                        rest = after;
                    }
                }
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }
}

/// Replaces each mount path (at a path boundary) by its host directory. One
/// left-to-right pass, longest mount path first at each position, so host
/// paths are never rewritten again.
pub fn rewrite_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    const BEFORE: &[char] = &['=', ':', ',', ';', ' ', '"', '\''];
    const AFTER: &[char] = &['/', ':', ',', ';', ' ', '"', '\''];
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < s.len() {
        let at_boundary = i == 0 || s[..i].ends_with(BEFORE);
        if at_boundary {
            for (m, host) in mounts {
                if m.is_empty() {
                    continue;
                }
                if let Some(tail) = s[i..].strip_prefix(m.as_str()) {
                    if tail.is_empty() || tail.starts_with(AFTER) {
                        out.push_str(&host.to_string_lossy());
                        i += m.len();
                        continue 'outer;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_mount_paths_at_boundaries_only() {
        let mounts = vec![
            (
                "/etc/app/certs".to_string(),
                PathBuf::from("/tmp/p/volumes/certs"),
            ),
            (
                "/etc/app".to_string(),
                PathBuf::from("/tmp/p/volumes/config"),
            ),
        ];
        assert_eq!(
            rewrite_mounts("/etc/app/config.yaml", &mounts),
            "/tmp/p/volumes/config/config.yaml"
        );
        assert_eq!(
            rewrite_mounts("--tls=/etc/app/certs/tls.crt", &mounts),
            "--tls=/tmp/p/volumes/certs/tls.crt"
        );
        assert_eq!(
            rewrite_mounts("/etc/application", &mounts),
            "/etc/application"
        );
        assert_eq!(rewrite_mounts("x/etc/app", &mounts), "x/etc/app");
        assert_eq!(
            rewrite_mounts("a:/etc/app", &mounts),
            "a:/tmp/p/volumes/config"
        );
    }

    #[test]
    fn parses_byte_quantities() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("12Qi"), None);
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn expands_like_kubernetes() {
        let mut env = Env::default();
        env.set("A", "1");
        assert_eq!(env.expand("x$(A)y"), "x1y");
        assert_eq!(env.expand("$(B)"), "$(B)");
        assert_eq!(env.expand("$$(A)"), "$(A)");
        assert_eq!(env.expand("cost $5"), "cost $5");
    }
}
