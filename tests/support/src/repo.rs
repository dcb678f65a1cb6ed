//! What every crate's tests need from the repository itself, in one place
//! and without Kubernetes: the root, what the setup scripts provide (ONNX
//! Runtime's library, the Python environment, the TEST MODEL), and the
//! workspace's binaries, each found or built once per test process. With
//! the `cluster` feature, also a model directory offered to pods as a bound
//! claim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::{Error, Result};

/// Runs `script --exports` (bash) and returns the `export NAME='value'` pairs
/// it prints. The scripts build what is missing first (cached).
pub fn script_exports(script: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new("bash")
        .arg(script)
        .arg("--exports")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Other(format!("cannot run {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Other(format!("{} failed", script.display())));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect())
}

/// Builds every binary of the workspace with cargo (`$CARGO`, else `cargo`)
/// in `repo`, with the same package set and targets as `cargo test
/// --workspace` (so after it, a no-op: one build serves the tests, the demo
/// and these), and returns each binary's path by target name.
pub fn cargo_bins(repo: &Path) -> Result<HashMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo)
        .args([
            "build",
            "--workspace",
            "--all-targets",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Other(format!("running cargo build: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other("building the workspace failed".into()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        // Not a binary's own unit-test harness (also of kind "bin").
        .filter(|v| v["profile"]["test"] != true)
        .filter(|v| {
            v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|v| {
            let exe = v["executable"].as_str()?;
            Some((
                v["target"]["name"].as_str()?.to_string(),
                PathBuf::from(exe),
            ))
        })
        .collect())
}

/// The repository's root directory.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the repository's root")
    })
}

/// What the repository's setup scripts provide (built once, cached outside
/// the repository): ONNX Runtime's library and the Python environment
/// (`scripts/python-env.sh`) and the TEST MODEL (`scripts/test-model.sh`:
/// MedImageInsight's exact inputs and outputs, random weights).
#[derive(Debug)]
pub struct Setup {
    /// `libonnxruntime.so`.
    pub ort_library: PathBuf,
    /// The Python interpreter of the repository's environment (ONNX
    /// Runtime, numpy, Pillow, transformers, requests).
    pub python: PathBuf,
    /// The TEST MODEL's directory.
    pub model_dir: PathBuf,
}

/// The setup, from the scripts' exports, run once per test process.
pub fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut vars = Vec::new();
        for script in ["scripts/python-env.sh", "scripts/test-model.sh"] {
            vars.extend(script_exports(&root().join(script)).unwrap_or_else(|e| panic!("{e}")));
        }
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| PathBuf::from(v))
                .unwrap_or_else(|| panic!("the setup scripts export no {k}"))
        };
        Setup {
            ort_library: get("ORT_DYLIB_PATH"),
            python: get("MEDEMBED_PYTHON"),
            model_dir: get("MEDEMBED_TEST_MODEL"),
        }
    })
}

/// The path of the workspace binary `name` (e.g. `medembed-worker`): the
/// environment's `MEDEMBED_WORKER_BIN` (for `medembed-worker`; likewise for
/// the others) when set, else built once per test process by
/// [`cargo_bins`].
pub fn bin(name: &str) -> PathBuf {
    let var = format!(
        "{}_BIN",
        name.trim_start_matches("medembed-")
            .to_ascii_uppercase()
            .replace('-', "_")
    );
    let var = format!("MEDEMBED_{var}");
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    static BINS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BINS.get_or_init(|| cargo_bins(root()).unwrap_or_else(|e| panic!("{e}")))
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("the workspace has no binary {name}"))
}

#[cfg(feature = "cluster")]
pub use claim::host_path_claim;

#[cfg(feature = "cluster")]
mod claim {
    use std::path::Path;

    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::{Api, Client};
    use serde_json::json;

    use crate::{Error, Result};

    /// A PersistentVolume on `host_path` and the claim `claim` in `namespace`
    /// bound to it, as a storage provisioner would leave them (the node agent
    /// maps such a claim to the host path).
    pub async fn host_path_claim(
        admin: &Client,
        namespace: &str,
        claim: &str,
        host_path: &Path,
    ) -> Result<()> {
        let pv_name = format!("{namespace}-{claim}");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "hostPath": {"path": host_path.to_string_lossy()},
                "claimRef": {"namespace": namespace, "name": claim},
                "persistentVolumeReclaimPolicy": "Retain",
            },
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        let pvs = Api::<PersistentVolume>::all(admin.clone());
        pvs.create(&PostParams::default(), &pv).await?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": claim, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": pv_name,
                "storageClassName": "",
            },
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), namespace);
        pvcs.create(&PostParams::default(), &pvc).await?;
        let st = json!({"status": {"phase": "Bound", "accessModes": ["ReadOnlyMany"], "capacity": {"storage": "1Gi"}}});
        pvcs.patch_status(claim, &PatchParams::default(), &Patch::Merge(&st))
            .await?;
        let st = json!({"status": {"phase": "Bound"}});
        pvs.patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(&st))
            .await?;
        Ok(())
    }
}
