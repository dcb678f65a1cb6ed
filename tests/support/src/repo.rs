//! What tests need from the repository itself: the variables its setup
//! scripts export (ONNX Runtime's library, the TEST MODEL), the binaries cargo
//! builds, and a model directory offered to pods as a bound claim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

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

/// Builds the binaries of `packages` with cargo (`$CARGO`, else `cargo`) in
/// `repo`, and returns each binary's path by target name. A no-op build when
/// `cargo test --workspace` already built them with the same package set.
pub fn cargo_bins(repo: &Path, packages: &[&str]) -> Result<HashMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo).arg("build");
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .args(["--bins", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Other(format!("running cargo build: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!("building {packages:?} failed")));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| {
            let exe = v["executable"].as_str()?;
            Some((
                v["target"]["name"].as_str()?.to_string(),
                PathBuf::from(exe),
            ))
        })
        .collect())
}

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
