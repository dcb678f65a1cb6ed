//! Pure functions that build the desired child objects of an
//! `EmbeddingDeployment` (worker Deployment, Service, PodDisruptionBudget,
//! ConfigMap, HorizontalPodAutoscaler) and of an `EmbeddingEndpoint` (its key
//! Secret), and the TLS Secrets of worker TLS (the CA's, a deployment's
//! serving certificate). No I/O here: the reconcilers apply what these
//! return, and unit tests check them field by field.
//!
//! Choices that matter:
//! - the rollout never drops ready capacity: `maxUnavailable: 0`,
//!   `maxSurge: 1`, and readiness is the worker's `/readyz` (model loaded and
//!   warmed up);
//! - the worker's settings travel in a ConfigMap read with `envFrom`; a hash
//!   of its data is a pod-template annotation, so a settings change rolls the
//!   workers like an image change does;
//! - with autoscaling, `spec.replicas` is left out of the applied Deployment
//!   so the HPA owns it (server-side apply field ownership);
//! - with worker TLS, the serving certificate's Secret is mounted read-only
//!   and the probes speak HTTPS; a new certificate is not a template change
//!   (the worker reloads its files), so it rolls nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use medembed_api::crd::{
    generated_key_secret_name, EmbeddingDeployment, EmbeddingEndpoint, ProbeSettings,
    RequestSettings, DEFAULT_GPU_RESOURCE, ENDPOINT_KEY_ENTRIES,
};
use medembed_api::pki::KeyedCert;
use medembed_api::workers::{
    env, worker_tls_secret_name, CA_CERT_ENTRY, TLS_CERT_ENTRY, TLS_KEY_ENTRY, WORKER_PORT_NAME,
};
pub use medembed_api::workers::{
    worker_name, DEPLOYMENT_LABEL, ENDPOINT_LABEL, EXIT_MODEL_LOAD, MANAGED_BY,
};
use medembed_api::{ResponseFormat, WorkerSettings};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::Error;

/// The field manager of every server-side apply.
pub const MANAGER: &str = "medembed-operator";
/// Pod-template annotation: hash of the worker ConfigMap's data.
pub const CONFIG_HASH_ANNOTATION: &str = "medembed.io/config-hash";
/// The worker container's name.
pub const WORKER_CONTAINER: &str = "worker";
/// The name of the metric the HPA scales on (exported by every worker).
pub const UTILIZATION_METRIC: &str = "medembed_worker_utilization_percent";
/// Where the model volume is mounted in the worker.
pub const MODEL_MOUNT: &str = "/var/lib/medembed/model";
/// Where the worker's caches (TensorRT engines) live.
pub const CACHE_MOUNT: &str = "/var/cache/medembed";

/// Where the worker's (and the fetch container's) scratch volume is mounted:
/// the root filesystem is read-only.
pub const TMP_MOUNT: &str = "/tmp";
/// Where the serving certificate's Secret is mounted (worker TLS).
pub const TLS_MOUNT: &str = "/etc/medembed/tls";
/// Size limit of the scratch volume at [`TMP_MOUNT`].
pub const TMP_SIZE: &str = "1Gi";
/// Size limit of the cache volume at [`CACHE_MOUNT`] (TensorRT engines).
pub const CACHE_SIZE: &str = "16Gi";
/// The non-root user and group the workers run as (the images' `USER`).
pub const WORKER_UID: i64 = 65532;

/// The pod-level security context of the workers: the `restricted` Pod
/// Security profile.
fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_UID,
        "fsGroup": WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The container-level security context of every worker container (init
/// containers included): the `restricted` profile, read-only root.
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// Operator-wide settings that shape the children.
#[derive(Debug, Clone)]
pub struct WorkerDefaults {
    /// Worker image when the spec gives none.
    pub image: String,
    /// Image of the init container fetching URL model sources.
    pub fetch_image: String,
    /// Host part of the worker's listen address (`0.0.0.0`, or `$(POD_IP)`).
    pub listen_host: String,
    /// The worker's port.
    pub port: u16,
    /// Whether workers serve HTTPS with their deployment's serving
    /// certificate (`--worker-tls`).
    pub tls: bool,
}

/// Name of the worker ConfigMap.
pub fn config_name(deployment: &str) -> String {
    format!("{deployment}-worker-config")
}

fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Result<OwnerReference, Error> {
    obj.controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidObject("object has no name or uid".into()))
}

fn name_ns<K: Resource>(obj: &K) -> Result<(String, String), Error> {
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::InvalidObject("object has no name".into()))?;
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or_else(|| Error::InvalidObject("object has no namespace".into()))?;
    Ok((name, ns))
}

/// Labels selecting the pods of deployment `name` (stable for the Deployment's
/// lifetime: the selector is immutable).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "medembed-worker".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// All labels of a deployment's children.
pub fn child_labels(name: &str, endpoint: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert("app.kubernetes.io/component".into(), "worker".into());
    l.insert(DEPLOYMENT_LABEL.into(), name.into());
    l.insert(ENDPOINT_LABEL.into(), endpoint.into());
    l
}

fn meta(name: &str, ns: &str, labels: &BTreeMap<String, String>, owner: &OwnerReference) -> Value {
    json!({ "name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner] })
}

/// What a deployment's workers take from their endpoint: its request limits
/// and the JSON shape of its answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSettings {
    /// The endpoint's request limits.
    pub request: RequestSettings,
    /// The endpoint's response format.
    pub response_format: ResponseFormat,
}

impl EndpointSettings {
    /// The settings of `endpoint`, or the defaults while it does not exist.
    pub fn of(endpoint: Option<&EmbeddingEndpoint>) -> Self {
        endpoint
            .map(|e| EndpointSettings {
                request: e.spec.request_settings.clone(),
                response_format: e.spec.response_format,
            })
            .unwrap_or_default()
    }
}

/// The settings of a deployment's workers: its runtime, and its endpoint's
/// request limits and response format.
pub fn worker_settings(dep: &EmbeddingDeployment, endpoint: &EndpointSettings) -> WorkerSettings {
    let request = &endpoint.request;
    let rt = &dep.spec.runtime;
    WorkerSettings {
        execution_provider: rt.execution_provider,
        sessions: rt.sessions_per_gpu,
        max_batch_images: rt.max_batch_size,
        max_batch_texts: rt.max_batch_size.saturating_mul(4),
        max_queue_delay_ms: rt.max_queue_delay_ms,
        max_concurrent_requests: rt.max_concurrent_requests,
        request_timeout_ms: request.request_timeout_ms,
        max_body_bytes: request.max_body_bytes,
        max_rows: request.max_rows_per_request,
        response_format: endpoint.response_format,
        trt_cache_dir: format!("{CACHE_MOUNT}/tensorrt"),
        json_logs: true,
    }
}

/// SHA-256 (hex) of a string map, in key order.
pub fn hash_map(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The worker ConfigMap.
pub fn config_map(
    dep: &EmbeddingDeployment,
    endpoint: &EndpointSettings,
) -> Result<ConfigMap, Error> {
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&config_name(&name), &ns, &labels, &owner),
        "data": worker_settings(dep, endpoint).to_env(),
    }))?)
}

fn probe(path: &str, s: Option<&ProbeSettings>, tls: bool) -> Value {
    let s = s.cloned().unwrap_or_default();
    let scheme = if tls { "HTTPS" } else { "HTTP" };
    json!({
        "httpGet": { "path": path, "port": WORKER_PORT_NAME, "scheme": scheme },
        "initialDelaySeconds": s.initial_delay_seconds.unwrap_or(10),
        "periodSeconds": s.period_seconds.unwrap_or(10),
        "timeoutSeconds": s.timeout_seconds.unwrap_or(2),
        "failureThreshold": s.failure_threshold.unwrap_or(30),
        "successThreshold": s.success_threshold.unwrap_or(1),
    })
}

/// The number of workers asked for when not autoscaling.
pub fn fixed_replicas(dep: &EmbeddingDeployment) -> Option<i32> {
    match &dep.spec.autoscale {
        Some(_) => None,
        None => Some(dep.spec.instance_count.unwrap_or(1)),
    }
}

/// The worker Deployment.
pub fn deployment(
    dep: &EmbeddingDeployment,
    endpoint: &EndpointSettings,
    defaults: &WorkerDefaults,
) -> Result<Deployment, Error> {
    let (name, ns) = name_ns(dep)?;
    let spec = &dep.spec;
    let labels = child_labels(&name, &spec.endpoint);
    let owner = owner_of(dep)?;
    let settings_hash = hash_map(&worker_settings(dep, endpoint).to_env());

    // The model volume and where the worker finds the model in it.
    let mut volumes = vec![
        json!({"name": "cache", "emptyDir": {"sizeLimit": CACHE_SIZE}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}),
    ];
    let mut init_containers: Vec<Value> = Vec::new();
    let sub = |p: &Option<String>| {
        p.as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
            .map(|p| format!("{MODEL_MOUNT}/{p}"))
            .unwrap_or_else(|| MODEL_MOUNT.to_string())
    };
    let model_dir;
    if let Some(pvc) = &spec.model.pvc {
        volumes.push(json!({"name": "model", "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": true}}));
        model_dir = sub(&pvc.path);
    } else if let Some(img) = &spec.model.image {
        volumes.push(json!({"name": "model", "image": {
            "reference": img.reference,
            "pullPolicy": img.pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into()),
        }}));
        model_dir = sub(&img.path);
    } else if let Some(url) = &spec.model.url {
        let size = url
            .cache_size
            .clone()
            .map(|q| q.0)
            .unwrap_or_else(|| "20Gi".into());
        volumes.push(json!({"name": "model", "emptyDir": {"sizeLimit": size}}));
        init_containers.push(json!({
            "name": "fetch-model",
            "image": defaults.fetch_image,
            "args": ["fetch-model", "--url", url.url, "--sha256", url.sha256, "--dest", MODEL_MOUNT],
            "volumeMounts": [
                {"name": "model", "mountPath": MODEL_MOUNT},
                {"name": "tmp", "mountPath": TMP_MOUNT},
            ],
            "securityContext": container_security(),
        }));
        model_dir = MODEL_MOUNT.to_string();
    } else {
        return Err(Error::InvalidSpec(
            "exactly one model source (pvc, image or url) must be set".into(),
        ));
    }

    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": env::LISTEN, "value": format!("{}:{}", defaults.listen_host, defaults.port)}),
        json!({"name": env::MODEL_DIR, "value": model_dir}),
        json!({"name": env::TERMINATION_LOG, "value": "/dev/termination-log"}),
    ];
    let mut mounts = vec![
        json!({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": true}),
        json!({"name": "cache", "mountPath": CACHE_MOUNT}),
        json!({"name": "tmp", "mountPath": TMP_MOUNT}),
    ];
    if defaults.tls {
        // Group-readable: the pod's fsGroup owns Secret volume files.
        volumes.push(json!({"name": "tls", "secret": {
            "secretName": worker_tls_secret_name(&name),
            "defaultMode": 0o440,
        }}));
        mounts.push(json!({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": true}));
        env.push(
            json!({"name": env::TLS_CERT_FILE, "value": format!("{TLS_MOUNT}/{TLS_CERT_ENTRY}")}),
        );
        env.push(
            json!({"name": env::TLS_KEY_FILE, "value": format!("{TLS_MOUNT}/{TLS_KEY_ENTRY}")}),
        );
    }
    env.extend(
        spec.env
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
    );

    let mut limits = serde_json::Map::new();
    let mut requests = serde_json::Map::new();
    if let Some(gpu) = &spec.resources.gpu {
        let rn = if gpu.resource_name.is_empty() {
            DEFAULT_GPU_RESOURCE
        } else {
            &gpu.resource_name
        };
        limits.insert(rn.to_string(), json!(gpu.count.to_string()));
        requests.insert(rn.to_string(), json!(gpu.count.to_string()));
    }
    for (k, q) in [
        ("cpu", &spec.resources.cpu),
        ("memory", &spec.resources.memory),
    ] {
        if let Some(q) = q {
            limits.insert(k.into(), json!(q.0));
            requests.insert(k.into(), json!(q.0));
        }
    }

    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 40,
        "containers": [{
            "name": WORKER_CONTAINER,
            "image": spec.image.clone().unwrap_or_else(|| defaults.image.clone()),
            "env": env,
            "envFrom": [{"configMapRef": {"name": config_name(&name)}}],
            "ports": [{"name": WORKER_PORT_NAME, "containerPort": defaults.port, "protocol": "TCP"}],
            "readinessProbe": probe("/readyz", spec.probes.readiness.as_ref(), defaults.tls),
            "livenessProbe": probe("/livez", spec.probes.liveness.as_ref(), defaults.tls),
            "resources": {"limits": limits, "requests": requests},
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security(),
        }],
        "securityContext": pod_security(),
        "volumes": volumes,
    });
    let ps = pod_spec
        .as_object_mut()
        .ok_or_else(|| Error::InvalidObject("pod spec".into()))?;
    if !init_containers.is_empty() {
        ps.insert("initContainers".into(), json!(init_containers));
    }
    if !spec.node_selector.is_empty() {
        ps.insert("nodeSelector".into(), json!(spec.node_selector));
    }
    if !spec.tolerations.is_empty() {
        ps.insert(
            "tolerations".into(),
            serde_json::to_value(&spec.tolerations)?,
        );
    }
    if let Some(a) = &spec.affinity {
        ps.insert("affinity".into(), serde_json::to_value(a)?);
    }
    // Spread the workers over nodes where the scheduler can (a preference,
    // never a reason to leave one pending): a lost node takes as few of a
    // deployment's workers as possible. Per revision, so that a rollout's new
    // workers spread too. Hostname only: a node lacking any constraint's key
    // is left out of the scheduler's spreading score, and on-premises nodes
    // often have no zone label.
    ps.insert(
        "topologySpreadConstraints".into(),
        json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(&name)},
            "matchLabelKeys": ["pod-template-hash"],
        }]),
    );
    if let Some(r) = &spec.runtime_class_name {
        ps.insert("runtimeClassName".into(), json!(r));
    }
    if let Some(p) = &spec.priority_class_name {
        ps.insert("priorityClassName".into(), json!(p));
    }

    let mut dspec = json!({
        "selector": {"matchLabels": selector_labels(&name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "progressDeadlineSeconds": 600,
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": {CONFIG_HASH_ANNOTATION: settings_hash},
            },
            "spec": pod_spec,
        },
    });
    if let Some(r) = fixed_replicas(dep) {
        dspec["replicas"] = json!(r);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(&worker_name(&name), &ns, &labels, &owner),
        "spec": dspec,
    }))?)
}

/// Who may reach the workers (see `--gateway-namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicySettings {
    /// The gateway's namespace.
    pub gateway_namespace: String,
    /// Labels of the gateway's pods.
    pub gateway_labels: BTreeMap<String, String>,
    /// Namespaces allowed to scrape the workers.
    pub metrics_namespaces: Vec<String>,
}

/// The workers' NetworkPolicy: ingress to this deployment's worker pods only
/// from the gateway's pods (and scrapers), on the worker port; owned by the
/// deployment, so garbage-collected with it.
pub fn network_policy(
    dep: &EmbeddingDeployment,
    defaults: &WorkerDefaults,
    np: &NetworkPolicySettings,
) -> Result<NetworkPolicy, Error> {
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    let mut from = vec![json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": np.gateway_namespace}},
        "podSelector": {"matchLabels": np.gateway_labels},
    })];
    from.extend(np.metrics_namespaces.iter().map(
        |m| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": m}}}),
    ));
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(&worker_name(&name), &ns, &labels, &owner),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(&name)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": from,
                "ports": [{"port": defaults.port, "protocol": "TCP"}],
            }],
        },
    }))?)
}

/// The worker Service (the gateway finds workers through its EndpointSlices).
pub fn service(dep: &EmbeddingDeployment, defaults: &WorkerDefaults) -> Result<Service, Error> {
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(&worker_name(&name), &ns, &labels, &owner),
        "spec": {
            "selector": selector_labels(&name),
            "ports": [{"name": WORKER_PORT_NAME, "port": defaults.port, "targetPort": WORKER_PORT_NAME, "protocol": "TCP"}],
        },
    }))?)
}

/// The PodDisruptionBudget: voluntary evictions take at most one worker at a
/// time.
pub fn pdb(dep: &EmbeddingDeployment) -> Result<PodDisruptionBudget, Error> {
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(&worker_name(&name), &ns, &labels, &owner),
        "spec": {
            "selector": {"matchLabels": selector_labels(&name)},
            "maxUnavailable": 1,
        },
    }))?)
}

/// The HPA, when autoscaling is asked for: average of the workers'
/// `medembed_worker_utilization_percent` ((busy + queued) over capacity)
/// against the target; up at once, down after a minute of lower load.
pub fn hpa(dep: &EmbeddingDeployment) -> Result<Option<HorizontalPodAutoscaler>, Error> {
    let Some(a) = &dep.spec.autoscale else {
        return Ok(None);
    };
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    Ok(Some(serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(&worker_name(&name), &ns, &labels, &owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker_name(&name)},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": UTILIZATION_METRIC},
                    "target": {"type": "AverageValue", "averageValue": a.target_utilization_percent.to_string()},
                },
            }],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 60,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            },
        },
    }))?))
}

/// The generated key Secret of an endpoint in Key mode: two fresh 256-bit
/// keys (URL-safe base64). Created once; never logged.
pub fn key_secret(ep: &EmbeddingEndpoint, primary: &str, secondary: &str) -> Result<Secret, Error> {
    let (name, ns) = name_ns(ep)?;
    let owner = owner_of(ep)?;
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (ENDPOINT_LABEL.to_string(), name.clone()),
    ]);
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(&generated_key_secret_name(&name), &ns, &labels, &owner),
        "type": "Opaque",
        "stringData": {ENDPOINT_KEY_ENTRIES[0]: primary, ENDPOINT_KEY_ENTRIES[1]: secondary},
    }))?)
}

/// A `kubernetes.io/tls` Secret `name` in `ns` holding `pair` (and, with
/// `ca_pem`, the CA certificate as `ca.crt`), with `labels` and `owner`.
fn tls_secret(
    name: &str,
    ns: &str,
    pair: &KeyedCert,
    ca_pem: Option<&str>,
    labels: &BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
) -> Result<Secret, Error> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data = serde_json::Map::new();
    data.insert(TLS_CERT_ENTRY.into(), json!(b64(&pair.cert_pem)));
    data.insert(TLS_KEY_ENTRY.into(), json!(b64(&pair.key_pem)));
    if let Some(ca) = ca_pem {
        data.insert(CA_CERT_ENTRY.into(), json!(b64(ca)));
    }
    let mut metadata = json!({"name": name, "namespace": ns, "labels": labels});
    if let Some(o) = owner {
        metadata["ownerReferences"] = json!([o]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": data,
    }))?)
}

/// The workers' CA Secret the operator creates when none exists (no owner:
/// it outlives any deployment).
pub fn tls_secret_in(
    name: &str,
    ns: &str,
    ca: &KeyedCert,
    owner: Option<&OwnerReference>,
) -> Result<Secret, Error> {
    let labels = BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    )]);
    tls_secret(name, ns, ca, None, &labels, owner)
}

/// The serving certificate Secret of a deployment's workers (worker TLS):
/// owned by the deployment and labelled like its other children.
pub fn worker_tls_secret(
    dep: &EmbeddingDeployment,
    serving: &KeyedCert,
    ca_pem: &str,
) -> Result<Secret, Error> {
    let (name, ns) = name_ns(dep)?;
    let labels = child_labels(&name, &dep.spec.endpoint);
    let owner = owner_of(dep)?;
    tls_secret(
        &worker_tls_secret_name(&name),
        &ns,
        serving,
        Some(ca_pem),
        &labels,
        Some(&owner),
    )
}

/// A fresh 256-bit key, URL-safe base64 without padding.
pub fn generate_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use medembed_api::crd::EmbeddingDeploymentSpec;

    fn defaults() -> WorkerDefaults {
        WorkerDefaults {
            image: "medembed/worker:1".into(),
            fetch_image: "medembed/operator:1".into(),
            listen_host: "0.0.0.0".into(),
            port: 8080,
            tls: false,
        }
    }

    fn dep(spec: serde_json::Value) -> EmbeddingDeployment {
        let spec: EmbeddingDeploymentSpec = serde_json::from_value(spec).unwrap();
        let mut d = EmbeddingDeployment::new("blue", spec);
        d.metadata.namespace = Some("ns".into());
        d.metadata.uid = Some("uid-1".into());
        d
    }

    fn base() -> serde_json::Value {
        json!({"endpoint": "chest", "model": {"pvc": {"claimName": "models", "path": "/v1/"}}})
    }

    /// The pod template's settings hash (a change rolls the workers).
    fn config_hash(d: &Deployment) -> String {
        d.spec
            .clone()
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    fn container(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
        d.spec.clone().unwrap().template.spec.unwrap().containers[0].clone()
    }

    #[test]
    fn deployment_defaults() {
        let d = deployment(&dep(base()), &EndpointSettings::default(), &defaults()).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("blue-worker"));
        let owner = &d.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("EmbeddingDeployment", "uid-1", Some(true))
        );
        let spec = d.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let ru = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(serde_json::to_value(ru.max_unavailable).unwrap(), json!(0));
        assert_eq!(serde_json::to_value(ru.max_surge).unwrap(), json!(1));
        let c = container(&d);
        assert_eq!(c.image.as_deref(), Some("medembed/worker:1"));
        let env: BTreeMap<String, Option<String>> = c
            .env
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        assert_eq!(
            env["MEDEMBED_MODEL_DIR"].as_deref(),
            Some("/var/lib/medembed/model/v1")
        );
        assert_eq!(env["MEDEMBED_LISTEN"].as_deref(), Some("0.0.0.0:8080"));
        let r = c.readiness_probe.unwrap();
        assert_eq!(r.http_get.unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(
            (
                r.initial_delay_seconds,
                r.period_seconds,
                r.timeout_seconds,
                r.failure_threshold
            ),
            (Some(10), Some(10), Some(2), Some(30))
        );
        assert!(c.resources.unwrap().limits.unwrap_or_default().is_empty());
        let vols = d.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let model = vols.iter().find(|v| v.name == "model").unwrap();
        let pvc = model.persistent_volume_claim.clone().unwrap();
        assert_eq!(
            (pvc.claim_name.as_str(), pvc.read_only),
            ("models", Some(true))
        );
    }

    #[test]
    fn gpus_placement_and_overrides() {
        let mut s = base();
        s["resources"] = json!({"gpu": {"count": 2, "resourceName": "nvidia.com/mig-1g.10gb"}, "cpu": "4", "memory": "16Gi"});
        s["nodeSelector"] = json!({"pool": "gpu"});
        s["tolerations"] =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        s["runtimeClassName"] = json!("nvidia");
        s["priorityClassName"] = json!("inference");
        s["image"] = json!("registry.local/worker:2");
        s["env"] = json!([{"name": "EXTRA", "value": "1"}]);
        s["probes"] = json!({"readiness": {"periodSeconds": 3}});
        let d = deployment(&dep(s), &EndpointSettings::default(), &defaults()).unwrap();
        let ps = d.spec.clone().unwrap().template.spec.unwrap();
        assert_eq!(ps.node_selector.unwrap()["pool"], "gpu");
        assert_eq!(ps.tolerations.unwrap().len(), 1);
        assert_eq!(ps.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(ps.priority_class_name.as_deref(), Some("inference"));
        // Workers spread over nodes, softly, per revision.
        let spread = ps.topology_spread_constraints.unwrap();
        assert_eq!(
            spread
                .iter()
                .map(|t| t.topology_key.as_str())
                .collect::<Vec<_>>(),
            ["kubernetes.io/hostname"]
        );
        assert!(spread
            .iter()
            .all(|t| t.when_unsatisfiable == "ScheduleAnyway"
                && t.match_label_keys.as_deref() == Some(&["pod-template-hash".to_string()][..])));
        let c = container(&d);
        assert_eq!(c.image.as_deref(), Some("registry.local/worker:2"));
        let res = c.resources.clone().unwrap();
        assert_eq!(
            res.limits.as_ref().unwrap()["nvidia.com/mig-1g.10gb"].0,
            "2"
        );
        assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "16Gi");
        assert!(c.env.clone().unwrap().iter().any(|e| e.name == "EXTRA"));
        assert_eq!(c.readiness_probe.unwrap().period_seconds, Some(3));
    }

    #[test]
    fn url_source_fetches_in_an_init_container() {
        let mut s = base();
        s["model"] =
            json!({"url": {"url": "https://models.local/m.tar.gz", "sha256": "a".repeat(64)}});
        let d = deployment(&dep(s), &EndpointSettings::default(), &defaults()).unwrap();
        let ps = d.spec.unwrap().template.spec.unwrap();
        let init = &ps.init_containers.unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("medembed/operator:1"));
        let args = init.args.clone().unwrap();
        assert!(
            args.contains(&"a".repeat(64))
                && args.contains(&"https://models.local/m.tar.gz".to_string())
        );
        assert!(ps
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.name == "model" && v.empty_dir.is_some()));
    }

    #[test]
    fn image_source_is_an_image_volume() {
        let mut s = base();
        s["model"] = json!({"image": {"reference": "registry.local/models/mii@sha256:abc", "path": "model"}});
        let d = deployment(&dep(s), &EndpointSettings::default(), &defaults()).unwrap();
        let ps = d.spec.clone().unwrap().template.spec.unwrap();
        let v = ps
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "model")
            .unwrap();
        assert_eq!(
            v.image.unwrap().reference.as_deref(),
            Some("registry.local/models/mii@sha256:abc")
        );
        let env = container(&d).env.unwrap();
        assert!(env.iter().any(|e| e.name == "MEDEMBED_MODEL_DIR"
            && e.value.as_deref() == Some("/var/lib/medembed/model/model")));
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_hpa() {
        let mut s = base();
        s["autoscale"] =
            json!({"minReplicas": 2, "maxReplicas": 5, "targetUtilizationPercent": 60});
        let d = dep(s);
        let k = deployment(&d, &EndpointSettings::default(), &defaults()).unwrap();
        assert_eq!(k.spec.unwrap().replicas, None);
        let h = hpa(&d).unwrap().unwrap();
        let hs = h.spec;
        assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 5));
        assert_eq!(hs.scale_target_ref.name, "blue-worker");
        let m = &hs.metrics.unwrap()[0];
        let pods = m.pods.clone().unwrap();
        assert_eq!(pods.metric.name, UTILIZATION_METRIC);
        assert_eq!(pods.target.average_value.unwrap().0, "60");
        assert!(hpa(&dep(base())).unwrap().is_none());
    }

    #[test]
    fn settings_change_rolls_the_workers() {
        let d = dep(base());
        let a = deployment(&d, &EndpointSettings::default(), &defaults()).unwrap();
        let slower = EndpointSettings {
            request: RequestSettings {
                request_timeout_ms: 9000,
                ..Default::default()
            },
            ..Default::default()
        };
        let b = deployment(&d, &slower, &defaults()).unwrap();
        assert_ne!(config_hash(&a), config_hash(&b));
        let cm = config_map(&d, &slower).unwrap();
        assert_eq!(cm.data.unwrap()["MEDEMBED_REQUEST_TIMEOUT_MS"], "9000");
    }

    #[test]
    fn the_endpoints_response_format_reaches_the_workers() {
        let d = dep(base());
        let cm = config_map(&d, &EndpointSettings::default()).unwrap();
        assert_eq!(cm.data.unwrap()["MEDEMBED_RESPONSE_FORMAT"], "PerRow");
        let mut ep = EmbeddingEndpoint::new("chest", Default::default());
        ep.spec.response_format = ResponseFormat::Documented;
        let documented = EndpointSettings::of(Some(&ep));
        let cm = config_map(&d, &documented).unwrap();
        assert_eq!(cm.data.unwrap()["MEDEMBED_RESPONSE_FORMAT"], "Documented");
    }

    #[test]
    fn worker_tls_mounts_the_certificate_and_probes_over_https() {
        let d = dep(base());
        let plain = deployment(&d, &EndpointSettings::default(), &defaults()).unwrap();
        let c = container(&plain);
        let scheme = |p: Option<k8s_openapi::api::core::v1::Probe>| {
            p.unwrap().http_get.unwrap().scheme.unwrap()
        };
        assert_eq!(scheme(c.readiness_probe.clone()), "HTTP");
        assert!(!c.env.unwrap().iter().any(|e| e.name == env::TLS_CERT_FILE));

        let tls = WorkerDefaults {
            tls: true,
            ..defaults()
        };
        let k = deployment(&d, &EndpointSettings::default(), &tls).unwrap();
        let ps = k.spec.clone().unwrap().template.spec.unwrap();
        let vol = ps
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "tls")
            .unwrap();
        let secret = vol.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("blue-worker-tls"));
        assert_eq!(secret.default_mode, Some(0o440));
        let c = container(&k);
        let mount = c
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "tls")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (TLS_MOUNT, Some(true))
        );
        let env: BTreeMap<String, Option<String>> = c
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        assert_eq!(
            env[env::TLS_CERT_FILE].as_deref(),
            Some("/etc/medembed/tls/tls.crt")
        );
        assert_eq!(
            env[env::TLS_KEY_FILE].as_deref(),
            Some("/etc/medembed/tls/tls.key")
        );
        assert_eq!(scheme(c.readiness_probe.clone()), "HTTPS");
        assert_eq!(scheme(c.liveness_probe.clone()), "HTTPS");
        // Still read-only and unprivileged.
        let sc = c.security_context.unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        // The certificate is not part of the template: renewing it rolls nothing.
        assert_eq!(config_hash(&plain), config_hash(&k));
    }

    #[test]
    fn the_serving_secret_is_a_tls_secret_owned_by_the_deployment() {
        let d = dep(base());
        let now = std::time::SystemTime::now();
        let ca = medembed_api::pki::new_ca("ca", now, medembed_api::pki::CA_VALIDITY).unwrap();
        let names = crate::worker_tls::serving_names("blue", "ns");
        assert_eq!(
            names,
            ["blue-worker.ns.svc", "blue-worker.ns.svc.cluster.local"]
        );
        let leaf = medembed_api::pki::issue(&ca, &names, now, medembed_api::pki::SERVING_VALIDITY)
            .unwrap();
        let s = worker_tls_secret(&d, &leaf, &ca.cert_pem).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("blue-worker-tls"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            s.metadata.labels.clone().unwrap(),
            child_labels("blue", "chest")
        );
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let data = s.data.unwrap();
        assert_eq!(data["tls.crt"].0, leaf.cert_pem.as_bytes());
        assert_eq!(data["tls.key"].0, leaf.key_pem.as_bytes());
        assert_eq!(data["ca.crt"].0, ca.cert_pem.as_bytes());
        // The CA's own Secret carries no owner.
        let own = tls_secret_in("medembed-worker-ca", "medembed-system", &ca, None).unwrap();
        assert!(own.metadata.owner_references.is_none());
        assert!(!own.data.unwrap().contains_key("ca.crt"));
    }

    #[test]
    fn service_pdb_and_keys() {
        let d = dep(base());
        let s = service(&d, &defaults()).unwrap();
        assert_eq!(s.spec.unwrap().selector.unwrap(), selector_labels("blue"));
        let p = pdb(&d).unwrap();
        assert_eq!(
            serde_json::to_value(p.spec.unwrap().max_unavailable).unwrap(),
            json!(1)
        );
        let k1 = generate_key();
        assert_eq!(k1.len(), 43);
        assert_ne!(k1, generate_key());
        let mut ep = EmbeddingEndpoint::new("chest", Default::default());
        ep.metadata.namespace = Some("ns".into());
        ep.metadata.uid = Some("uid-2".into());
        let sec = key_secret(&ep, "p", "s").unwrap();
        assert_eq!(sec.metadata.name.as_deref(), Some("chest-keys"));
        assert_eq!(sec.string_data.unwrap()["secondaryKey"], "s");
    }
}
