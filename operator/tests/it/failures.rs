//! What goes wrong, and how it shows: invalid specs are refused by the API
//! server with the CEL rule's message; a deployment asking for more GPUs than
//! any node has is `InsufficientGPU`; a model that cannot load is
//! `ModelLoadFailed`; a worker that keeps exiting is `CrashLoop`; a missing
//! claim is `ModelSourceInvalid`. All against the real control plane, the
//! operator under its generated RBAC role, here watching one namespace only
//! (`--namespace`, the ClusterRole bound by a RoleBinding in that namespace):
//! a deployment in another namespace is left alone. Clients whose key Secret
//! or endpoints are missing or wrong say so in their `Ready` condition.

use std::time::{Duration, Instant};

use crate::common::{create, until_deployment, LIMIT, STEP};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use medembed_api::crd::{find_condition, EmbeddingClient, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_testsupport::wait;
use serde_json::{json, Value};

async fn refused<K>(api: &kube::Api<K>, name: &str, spec: Value, message: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("object");
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {
            panic!("{name} was accepted; expected the API server to refuse it with {message:?}")
        }
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{name}: {s:?}");
            assert!(
                s.message.contains(message),
                "{name}: expected {message:?} in {:?}",
                s.message
            );
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

async fn until_reason(
    deps: &kube::Api<EmbeddingDeployment>,
    name: &str,
    reason: &str,
) -> EmbeddingDeployment {
    let what = format!("{name} Degraded with {reason}");
    until_deployment(deps, name, &what, |_, st| {
        let deg = find_condition(&st.conditions, "Degraded")
            .is_some_and(|c| c.is_true() && c.reason == reason);
        let not_ready = find_condition(&st.conditions, "Ready")
            .is_some_and(|c| !c.is_true() && c.reason == reason);
        deg && not_ready
    })
    .await
    .unwrap_or_else(|e| {
        let st = futures::executor::block_on(deps.get(name))
            .ok()
            .and_then(|d| d.status);
        panic!("{e}\nstatus: {st:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_specs_and_failing_workers() {
    let _heavy = crate::common::exclusive().await;
    let started = Instant::now();
    let env = crate::common::setup("op-fail", &[("gpu-0", 2)]).await;
    let op = env.start_namespaced_operator("op-a").await;
    let result = wait::within("failures", Duration::from_secs(400), async {
        env.model_claim("models").await;
        let eps = env.ns.api::<EmbeddingEndpoint>();
        let deps = env.ns.api::<EmbeddingDeployment>();

        // Refused by the API server, with the rule's message.
        for (name, spec, message) in [
            (
                "bad-sum",
                json!({"traffic": {"a": 60, "b": 30}}),
                "traffic weights must sum to 100",
            ),
            (
                "bad-mirror",
                json!({"traffic": {"a": 100}, "mirrorTraffic": {"deployment": "a", "percent": 10}}),
                "the mirror deployment must take no live traffic",
            ),
            (
                "bad-mirror-pct",
                json!({"traffic": {"a": 100}, "mirrorTraffic": {"deployment": "b", "percent": 60}}),
                "should be less than or equal to 50",
            ),
            (
                "bad-host",
                json!({"hosts": ["Chest_Example"], "auth": {"mode": "Unauthenticated"}}),
                "each host must be a lowercase DNS name",
            ),
            (
                "bad-token",
                json!({"auth": {"mode": "Token"}}),
                "auth.token is required in Token mode",
            ),
        ] {
            refused(&eps, name, spec, message).await;
        }
        let base = env.deployment_spec("ep", "models", "v1");
        let tar = "https://models.example/m.tar";
        for (name, patch, message) in [
            (
                "bad-sources",
                json!({"model": {"url": {"url": tar, "sha256": "0".repeat(64)}}}),
                "exactly one model source",
            ),
            (
                "bad-nosource",
                json!({"model": {"pvc": null}}),
                "exactly one model source",
            ),
            (
                "bad-sha",
                json!({"model": {"pvc": null, "url": {"url": tar, "sha256": "XYZ"}}}),
                "sha256 must be 64 lowercase hex digits",
            ),
            (
                "bad-scale",
                json!({"instanceCount": null, "autoscale": {"minReplicas": 3, "maxReplicas": 2}}),
                "minReplicas must not exceed",
            ),
            (
                "bad-both",
                json!({"autoscale": {"minReplicas": 1, "maxReplicas": 2}}),
                "set either instanceCount or autoscale",
            ),
        ] {
            refused(&deps, name, merged(&base, patch), message).await;
        }
        // Outside the watched namespace: never touched.
        let other = env.cp.namespace("op-other").await.expect("namespace");
        create(
            &other.api::<EmbeddingDeployment>(),
            "elsewhere",
            env.deployment_spec("ep", "models", "v1"),
        )
        .await;

        // A valid endpoint (no weights given) is accepted.
        create(&eps, "ep", json!({"auth": {"mode": "Unauthenticated"}})).await;

        // More GPUs than any node has: InsufficientGPU, no pod runs.
        let greedy = json!({"resources": {"gpu": {"count": 4}}});
        create(&deps, "greedy", merged(&base, greedy)).await;
        // The model directory holds no model: the worker exits with code 3.
        create(
            &deps,
            "nomodel",
            env.deployment_spec("ep", "models", "empty"),
        )
        .await;
        // A worker that exits at once, again and again.
        let crasher = json!({"image": crate::common::CRASH_IMAGE});
        create(&deps, "crasher", merged(&base, crasher)).await;
        // A claim that does not exist.
        create(&deps, "noclaim", env.deployment_spec("ep", "missing", "v1")).await;

        let g = until_reason(&deps, "greedy", "InsufficientGPU").await;
        let msg = find_condition(&g.status.expect("status").conditions, "Degraded")
            .expect("degraded")
            .message
            .clone();
        assert!(msg.contains("nvidia.com/gpu"), "{msg}");
        let n = until_reason(&deps, "nomodel", "ModelLoadFailed").await;
        eprintln!(
            "ModelLoadFailed: {}",
            find_condition(&n.status.expect("status").conditions, "Degraded")
                .expect("degraded")
                .message
        );
        until_reason(&deps, "crasher", "CrashLoop").await;
        until_reason(&deps, "noclaim", "ModelSourceInvalid").await;

        // Transitions are Kubernetes Events on the deployments.
        let evs = wait::until("warning events", LIMIT, STEP, || async {
            let l = env.ns.api::<Event>().list(&ListParams::default()).await?;
            let reasons: Vec<String> = l
                .items
                .iter()
                .filter(|e| e.involved_object.kind.as_deref() == Some("EmbeddingDeployment"))
                .filter_map(|e| e.reason.clone())
                .collect();
            let all = ["InsufficientGPU", "ModelLoadFailed", "CrashLoop"]
                .iter()
                .all(|r| reasons.iter().any(|x| x == r));
            Ok::<_, kube::Error>(all.then_some(reasons))
        })
        .await
        .expect("events");
        eprintln!("events: {evs:?}");

        // The endpoint tells which deployments are not ready.
        let e = wait::until("endpoint status", LIMIT, STEP, || async {
            let e = eps.get("ep").await?;
            let n = e.status.as_ref().map_or(0, |s| s.deployments.len());
            Ok::<_, kube::Error>((n == 4).then_some(e))
        })
        .await
        .expect("endpoint lists its deployments");
        let st = e.status.expect("status");
        assert!(st.deployments.iter().all(|d| !d.ready));
        assert!(st.key_secret_name.is_none());
        let uri = st.scoring_uri.expect("scoring uri");
        assert!(
            uri.ends_with(&format!("/endpoints/{}/ep/score", env.ns.name())),
            "{uri}"
        );

        clients_report_what_keeps_them_from_calling(&env).await;

        let metrics = op.metrics_text();
        assert!(
            metrics.contains("medembed_operator_reconcile_duration_seconds"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("reason=\"forbidden\""),
            "the namespace-scoped operator hit RBAC refusals:\n{metrics}"
        );
        let elsewhere = other
            .api::<EmbeddingDeployment>()
            .get("elsewhere")
            .await
            .expect("get");
        assert!(elsewhere.status.is_none(), "{:?}", elsewhere.status);
        assert!(other
            .api::<k8s_openapi::api::apps::v1::Deployment>()
            .get_opt("elsewhere-worker")
            .await
            .expect("get")
            .is_none());
    })
    .await;
    op.shutdown().await.expect("operator stops");
    env.finish(result, "invalid_specs_and_failing_workers", started)
        .await;
}

/// `base` with the JSON merge patch `patch` applied (RFC 7386: a null
/// removes the field).
fn merged(base: &Value, patch: Value) -> Value {
    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }
    let mut out = base.clone();
    merge(&mut out, patch);
    out
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH2: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

async fn until_client(
    api: &kube::Api<EmbeddingClient>,
    name: &str,
    ready: bool,
    reason: &str,
) -> String {
    wait::until(
        &format!("client {name} Ready={ready} ({reason})"),
        LIMIT,
        STEP,
        || async {
            let c = api.get(name).await?;
            let st = c.status.unwrap_or_default();
            let hit = find_condition(&st.conditions, "Ready")
                .filter(|c| c.is_true() == ready && c.reason == reason)
                .map(|c| c.message.clone());
            Ok::<_, kube::Error>(hit.filter(|_| st.observed_generation == c.metadata.generation))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn secret(api: &kube::Api<Secret>, name: &str, entries: Value) {
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": entries}))
            .expect("secret");
    api.create(&PostParams::default(), &s)
        .await
        .expect("create secret");
}

/// Tenants declared with kubectl learn from `kubectl get embeddingclients`
/// what is wrong with them, and the status follows fixes.
async fn clients_report_what_keeps_them_from_calling(env: &crate::common::Env) {
    let clients = env.ns.api::<EmbeddingClient>();
    let secrets = env.ns.api::<Secret>();
    let eps = env.ns.api::<EmbeddingEndpoint>();
    create(
        &eps,
        "tok",
        json!({"auth": {"mode": "Token", "token": {"issuer": "https://idp.example", "audiences": ["m"], "jwksConfigMap": "idp"}}}),
    )
    .await;
    secret(&secrets, "good-keys", json!({"primary-sha256": HASH})).await;
    secret(
        &secrets,
        "bad-keys",
        json!({"primary-sha256": "hunter2-in-clear"}),
    )
    .await;

    for (name, spec) in [
        (
            "good",
            json!({"endpoints": ["ep"], "keys": {"secretName": "good-keys"}}),
        ),
        (
            "late",
            json!({"endpoints": ["ep"], "keys": {"secretName": "late-keys"}}),
        ),
        (
            "bad",
            json!({"endpoints": ["ep"], "keys": {"secretName": "bad-keys"}}),
        ),
        (
            "lost",
            json!({"endpoints": ["ep", "later"], "token": {"subject": "pacs"}}),
        ),
        (
            "mismatch",
            json!({"endpoints": ["tok"], "keys": {"secretName": "good-keys"}}),
        ),
    ] {
        create(&clients, name, spec).await;
    }

    let m = until_client(&clients, "good", true, "Valid").await;
    assert!(m.contains("ep"), "{m}");
    until_client(&clients, "late", false, "KeySecretNotFound").await;
    let m = until_client(&clients, "bad", false, "KeySecretInvalid").await;
    assert!(
        !m.contains("hunter2"),
        "a Secret's content in a status: {m}"
    );
    let m = until_client(&clients, "lost", false, "EndpointNotFound").await;
    assert!(m.contains("later"), "{m}");
    let m = until_client(&clients, "mismatch", false, "NoUsableCredentials").await;
    assert!(m.contains("Token mode"), "{m}");

    // Fixes are followed: the Secret appears (not watched: rechecked), the
    // endpoint appears (watched).
    // (Its own key: a hash another client holds would be `DuplicateKey`.)
    secret(&secrets, "late-keys", json!({"primary-sha256": HASH2})).await;
    create(&eps, "later", json!({"auth": {"mode": "Unauthenticated"}})).await;
    until_client(&clients, "late", true, "Valid").await;
    until_client(&clients, "lost", true, "Valid").await;

    // The transition to not ready is an Event on the client.
    wait::until("client events", LIMIT, STEP, || async {
        let l = env.ns.api::<Event>().list(&ListParams::default()).await?;
        let hit = l.items.iter().any(|e| {
            e.involved_object.kind.as_deref() == Some("EmbeddingClient")
                && e.reason.as_deref() == Some("KeySecretInvalid")
        });
        Ok::<_, kube::Error>(hit.then_some(()))
    })
    .await
    .expect("an event for the invalid key Secret");
}
