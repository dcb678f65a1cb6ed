//! The control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler as local processes on random loopback ports.
//!
//! [`ControlPlane::start`] delegates to the repository's scripts so that
//! tests and humans start exactly the same thing:
//!
//! 1. binaries: `$MEDEMBED_CLUSTER_BIN` if set, else `scripts/cluster-build.sh`
//!    (run once per test process; it builds into, or finds in,
//!    `$MEDEMBED_CACHE/cluster-<key>/bin`, under a lock shared by parallel runs);
//! 2. `scripts/cluster-up.sh --dir <tempdir> --watch-pid <this process>`, which
//!    writes certificates and a kubeconfig and waits until every component is
//!    healthy (its watchdog stops the cluster should this process die without
//!    running destructors);
//! 3. on drop, `scripts/cluster-down.sh <dir>`.
//!
//! With `MEDEMBED_TEST_KUBECONFIG` set, nothing is started: that cluster is
//! reused (and left running), e.g. one started by `scripts/cluster-up.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

use crate::{wait, Error, Result};

/// The repository root (two levels above this crate).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The control-plane binaries' directory, resolved once per process.
static BIN_DIR: OnceCell<PathBuf> = OnceCell::const_new();

async fn bin_dir() -> Result<PathBuf> {
    BIN_DIR
        .get_or_try_init(|| async {
            if let Some(dir) = std::env::var_os("MEDEMBED_CLUSTER_BIN") {
                return Ok(PathBuf::from(dir));
            }
            let script = repo_root().join("scripts/cluster-build.sh");
            // A cold build takes ~20 minutes on two cores; warm, milliseconds.
            let out = run_script(&script, &[], Duration::from_secs(3600)).await?;
            Ok(PathBuf::from(out.trim()))
        })
        .await
        .cloned()
}

async fn run_script(script: &Path, args: &[&str], limit: Duration) -> Result<String> {
    let mut cmd = tokio::process::Command::new(script);
    cmd.args(args).kill_on_drop(true);
    if let Some(bin) = BIN_DIR.get() {
        cmd.env("MEDEMBED_CLUSTER_BIN", bin);
    }
    let out = wait::within(&format!("{}", script.display()), limit, cmd.output())
        .await?
        .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        return Err(Error::Script {
            script: script.to_path_buf(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running (or reused) control plane. Dropping an owned one stops it.
pub struct ControlPlane {
    config: Config,
    kubeconfig: PathBuf,
    /// The state directory, for a control plane this value started.
    owned: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.config.cluster_url.to_string())
            .field("kubeconfig", &self.kubeconfig)
            .field("owned", &self.owned.is_some())
            .finish()
    }
}

impl ControlPlane {
    /// Starts a fresh control plane (building the binaries first if needed), or
    /// reuses the cluster named by `MEDEMBED_TEST_KUBECONFIG`.
    pub async fn start() -> Result<Self> {
        if let Some(path) = std::env::var_os("MEDEMBED_TEST_KUBECONFIG") {
            let kubeconfig = PathBuf::from(path);
            let config = load_config(&kubeconfig).await?;
            return Ok(ControlPlane {
                config,
                kubeconfig,
                owned: None,
            });
        }
        bin_dir().await?;
        let dir = tempfile::Builder::new()
            .prefix("medembed-cluster.")
            .tempdir()
            .map_err(|e| Error::io("creating the cluster state directory", e))?;
        let dir_str = dir.path().to_string_lossy().into_owned();
        let pid = std::process::id().to_string();
        let script = repo_root().join("scripts/cluster-up.sh");
        // Own the directory before starting, so a failure below still cleans up.
        let mut cp = ControlPlane {
            config: Config::new(
                "https://127.0.0.1:1"
                    .parse()
                    .map_err(|e| Error::Other(format!("{e}")))?,
            ),
            kubeconfig: dir.path().join("kubeconfig"),
            owned: Some(dir),
        };
        run_script(
            &script,
            &["--dir", &dir_str, "--watch-pid", &pid],
            Duration::from_secs(120),
        )
        .await?;
        cp.config = load_config(&cp.kubeconfig).await?;
        Ok(cp)
    }

    /// A new admin client (system:masters).
    pub fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config.clone())?)
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The admin kubeconfig file (for `helm --kubeconfig`, kubectl, ...).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory of the control-plane binaries and `helm`, when this
    /// process resolved it (always, for a control plane it started).
    pub fn bin_dir(&self) -> Option<&Path> {
        BIN_DIR.get().map(PathBuf::as_path)
    }

    /// The `helm` binary built next to the control plane (building it first,
    /// if needed, even when the cluster itself is reused).
    pub async fn helm(&self) -> Result<PathBuf> {
        Ok(bin_dir().await?.join("helm"))
    }

    /// A client authenticating with a bearer `token` (e.g. a service
    /// account's), trusting the cluster's CA.
    pub fn client_with_token(&self, token: &str) -> Result<Client> {
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// Creates a fresh namespace `<prefix>-<random>` and waits (≤ 30 s) until
    /// its `default` service account exists, so pods can be created in it.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = self.client()?;
        let clean: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("{}-{}", clean.trim_matches('-'), random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [("medembed.test/owner".to_string(), "testsupport".to_string())].into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait::until(
            &format!("service account default in namespace {name}"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async { sas.get_opt("default").await.map(|o| o.map(|_| ())) },
        )
        .await?;
        Ok(TestNamespace { name, client })
    }

    /// Stops one component of an owned control plane (`kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler` or `etcd`): SIGTERM, and
    /// SIGKILL if it is still running 10 s later, as a host's service manager
    /// would. [`ControlPlane::start_component`] starts it again with the same
    /// command line (same ports, certificates and data).
    pub async fn stop_component(&self, name: &str) -> Result<StoppedComponent> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let dir = self.owned_dir()?;
        let pid = read_pids(&dir)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .ok_or_else(|| Error::Other(format!("no component {name} in {}", dir.display())))?;
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| Error::io(format!("reading {name}'s command line"), e))?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_running(pid) {
            if std::time::Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(StoppedComponent {
            name: name.to_string(),
            argv,
        })
    }

    /// Starts a component stopped by [`ControlPlane::stop_component`] again,
    /// in its own session, logging to the same file, recorded in the state
    /// directory (so `scripts/cluster-down.sh` stops it); for the API server,
    /// waits until it answers again.
    pub async fn start_component(&self, stopped: StoppedComponent) -> Result<()> {
        let dir = self.owned_dir()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("logs").join(format!("{}.log", stopped.name)))
            .map_err(|e| Error::io("opening the component's log", e))?;
        let err = log
            .try_clone()
            .map_err(|e| Error::io("opening the component's log", e))?;
        // `setsid` executes the program in place (this child is not a process
        // group leader), so the child's pid is the component's.
        let child = Command::new("setsid")
            .args(&stopped.argv)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", stopped.name), e))?;
        let pid = child.id();
        // Reaped by a thread, so that it never lingers as a zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let pids_file = dir.join("pids");
        let lines: Vec<String> = read_pids(&dir)?
            .into_iter()
            .map(|(n, p)| {
                let p = if n == stopped.name { pid } else { p };
                format!("{n} {p}")
            })
            .collect();
        std::fs::write(&pids_file, lines.join("\n") + "\n")
            .map_err(|e| Error::io("recording the component's pid", e))?;
        if stopped.name == "kube-apiserver" {
            let client = self.client()?;
            wait::until(
                "the API server to answer again",
                Duration::from_secs(60),
                Duration::from_millis(200),
                || async { Ok::<_, Error>(client.apiserver_version().await.ok()) },
            )
            .await?;
        }
        Ok(())
    }

    fn owned_dir(&self) -> Result<PathBuf> {
        self.owned
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .ok_or_else(|| {
                Error::Other(
                    "only a control plane this process started can be stopped in part".into(),
                )
            })
    }

    /// Stops an owned control plane now (also done on drop); a reused one is
    /// left running.
    pub fn stop(&mut self) {
        if let Some(dir) = self.owned.take() {
            let script = repo_root().join("scripts/cluster-down.sh");
            match Command::new(&script).arg(dir.path()).status() {
                Ok(s) if s.success() => {}
                other => {
                    tracing::warn!("{} {}: {:?}", script.display(), dir.path().display(), other)
                }
            }
            drop(dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn load_config(path: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(path)?;
    Ok(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}

/// A short random suffix for names (from the standard library's hasher keys).
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let v = h.finish();
    (0..5)
        .map(|i| {
            let d = ((v >> (i * 6)) % 36) as u8;
            (if d < 10 { b'0' + d } else { b'a' + d - 10 }) as char
        })
        .collect()
}

/// A control-plane component stopped by [`ControlPlane::stop_component`].
#[derive(Debug)]
pub struct StoppedComponent {
    name: String,
    argv: Vec<String>,
}

/// `name pid` lines of the state directory's `pids` file.
fn read_pids(dir: &Path) -> Result<Vec<(String, u32)>> {
    let text = std::fs::read_to_string(dir.join("pids"))
        .map_err(|e| Error::io("reading the control plane's pids", e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (n, p) = l.split_once(' ')?;
            Some((n.to_string(), p.trim().parse().ok()?))
        })
        .collect())
}

/// Alive and not a zombie.
fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// A namespace created for one test.
#[derive(Clone)]
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A namespaced API for `K` in this namespace (admin client).
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// A summary of the namespace's pods, ReplicaSets and recent events, for
    /// failure messages.
    pub async fn describe(&self) -> String {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        use k8s_openapi::api::core::v1::{Event, Pod};
        use kube::api::ListParams;
        let lp = ListParams::default();
        let mut out = format!("namespace {}:\n", self.name);
        match self.api::<ReplicaSet>().list(&lp).await {
            Ok(l) => {
                for rs in l.items {
                    let st = rs.status.unwrap_or_default();
                    out += &format!(
                        "  rs {} replicas={} ready={:?}\n",
                        rs.metadata.name.unwrap_or_default(),
                        st.replicas,
                        st.ready_replicas
                    );
                }
            }
            Err(e) => out += &format!("  (listing replicasets: {e})\n"),
        }
        match self.api::<Pod>().list(&lp).await {
            Ok(l) => {
                for p in l.items {
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    let st = serde_json::to_string(&p.status).unwrap_or_default();
                    out += &format!(
                        "  pod {} node={node} deleting={} status={st}\n",
                        p.metadata.name.unwrap_or_default(),
                        p.metadata.deletion_timestamp.is_some()
                    );
                }
            }
            Err(e) => out += &format!("  (listing pods: {e})\n"),
        }
        match self.api::<Event>().list(&lp).await {
            Ok(l) => {
                for e in l.items.iter().rev().take(20) {
                    out += &format!(
                        "  event {} {}: {}\n",
                        e.reason.clone().unwrap_or_default(),
                        e.involved_object.name.clone().unwrap_or_default(),
                        e.message.clone().unwrap_or_default()
                    );
                }
            }
            Err(e) => out += &format!("  (listing events: {e})\n"),
        }
        out
    }

    /// Deletes the namespace (its objects go with it).
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}
