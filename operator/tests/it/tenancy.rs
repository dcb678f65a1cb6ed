//! Tenant isolation, as attacks on the real control plane: an endpoint in
//! another namespace claiming an older endpoint's host name is refused
//! (`HostConflict`, with an Event) and recovers when the owner goes; a host
//! outside the namespace's allow-list is `HostNotAllowed`; a planted key
//! Secret is `SecretConflict`, neither adopted nor overwritten; a copied key
//! hash is `DuplicateKey` on the newer client; the worker pods
//! pass the `restricted` Pod Security profile; the workers admit only the
//! gateway (NetworkPolicy).

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use medembed_api::crd::{find_condition, Condition, EmbeddingClient, EmbeddingEndpoint};
use medembed_operator::config::parse_allowed_hosts;
use medembed_operator::OperatorConfig;
use medembed_testsupport::wait;
use serde_json::json;

use crate::common::{create, LIMIT, STEP};

/// The `Ready` condition of a resource with status conditions.
trait Ready: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug {
    fn ready(&self) -> Option<Condition>;
}

impl Ready for EmbeddingEndpoint {
    fn ready(&self) -> Option<Condition> {
        let s = self.status.as_ref()?;
        find_condition(&s.conditions, "Ready").cloned()
    }
}

impl Ready for EmbeddingClient {
    fn ready(&self) -> Option<Condition> {
        let s = self.status.as_ref()?;
        find_condition(&s.conditions, "Ready").cloned()
    }
}

/// Waits until `name`'s `Ready` condition is False with `reason` (or, with
/// `not`, has any other reason).
async fn until_reason<K: Ready>(api: &Api<K>, name: &str, reason: &str, not: bool) {
    let what = format!(
        "{name} Ready reason {}{reason}",
        if not { "not " } else { "" }
    );
    wait::until(&what, LIMIT, STEP, || async {
        let hit = api
            .get(name)
            .await?
            .ready()
            .is_some_and(|c| (c.reason == reason) != not && (not || !c.is_true()));
        Ok::<_, kube::Error>(hit.then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        let ready = futures::executor::block_on(api.get(name))
            .ok()
            .and_then(|o| o.ready());
        panic!("{e}\nReady: {ready:?}")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_claimed_across_namespaces() {
    let _heavy = crate::common::exclusive().await;
    let c = crate::common::cluster("op-owner").await;
    let op_client = crate::common::operator_client(&c.cp, &c.admin, &c.op_ns).await;
    // The thief's namespace sorts first: under "first namespace wins" it
    // would have taken the host.
    let thief_ns = c.cp.namespace("aaa-thief").await.expect("namespace");
    let mut config = OperatorConfig::for_tests();
    config.lease_namespace = c.op_ns.clone();
    config.identity = Some("op-tenancy".into());
    config.lease_duration_seconds = 4;
    config.lease_renew_seconds = 1;
    config.allowed_hosts = parse_allowed_hosts(&format!(
        "{}=*.thief.example,chest.example.org",
        thief_ns.name()
    ))
    .expect("allow-list");
    let op = medembed_operator::start(config, op_client)
        .await
        .expect("operator starts");
    let owner = c.ns.api::<EmbeddingEndpoint>();
    let thief = thief_ns.api::<EmbeddingEndpoint>();
    let spec = |hosts: &[&str]| json!({"auth": {"mode": "Unauthenticated"}, "hosts": hosts});

    create(&owner, "chest", spec(&["chest.example.org"])).await;
    // creationTimestamp has one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(&thief, "chest", spec(&["chest.example.org"])).await;
    create(&thief, "own", spec(&["own.thief.example"])).await;
    create(&thief, "elsewhere", spec(&["lab.example.org"])).await;

    until_reason(&thief, "chest", "HostConflict", false).await;
    until_reason(&owner, "chest", "HostConflict", true).await;
    until_reason(&thief, "own", "HostConflict", true).await;
    until_reason(&thief, "own", "HostNotAllowed", true).await;
    until_reason(&thief, "elsewhere", "HostNotAllowed", false).await;

    // The refusal is an Event on the newer endpoint.
    wait::until("host conflict event", LIMIT, STEP, || async {
        let l = thief_ns.api::<Event>().list(&ListParams::default()).await?;
        let hit = l.items.iter().any(|e| {
            e.involved_object.kind.as_deref() == Some("EmbeddingEndpoint")
                && e.involved_object.name.as_deref() == Some("chest")
                && e.reason.as_deref() == Some("HostConflict")
        });
        Ok::<_, kube::Error>(hit.then_some(()))
    })
    .await
    .expect("an event for the host conflict");

    // A key Secret planted under the generated name before the endpoint
    // exists is neither adopted nor overwritten.
    let secrets = thief_ns.api::<k8s_openapi::api::core::v1::Secret>();
    let planted: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "keyed-keys"},
        "stringData": {"primaryKey": "known-to-the-planter"},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &planted)
        .await
        .expect("plant the Secret");
    create(&thief, "keyed", json!({"auth": {"mode": "Key"}})).await;
    until_reason(&thief, "keyed", "SecretConflict", false).await;
    let after = secrets.get("keyed-keys").await.expect("secret");
    assert!(after.owner_references().is_empty(), "adopted");
    let data = after.data.expect("data");
    assert_eq!(data.len(), 1, "rewritten");
    assert_eq!(data["primaryKey"].0, b"known-to-the-planter");
    // Its own Secret, once the planted one is gone, is generated and owned.
    secrets
        .delete("keyed-keys", &DeleteParams::default())
        .await
        .expect("delete");
    until_reason(&thief, "keyed", "SecretConflict", true).await;
    let own = secrets.get("keyed-keys").await.expect("generated secret");
    let uid = thief.get("keyed").await.expect("endpoint").metadata.uid;
    assert!(own
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref()));

    // A newer client copying an older client's key hash (in any namespace)
    // does not get it.
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for (ns_api, secrets_api) in [
        (
            c.ns.api::<EmbeddingClient>(),
            c.ns.api::<k8s_openapi::api::core::v1::Secret>(),
        ),
        (thief_ns.api::<EmbeddingClient>(), secrets.clone()),
    ] {
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "reader-hashes"},
            "stringData": {"primary-sha256": hash},
        }))
        .expect("secret");
        secrets_api
            .create(&Default::default(), &s)
            .await
            .expect("hash Secret");
        create(
            &ns_api,
            "reader",
            json!({"endpoints": ["chest"], "keys": {"secretName": "reader-hashes"}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    until_reason(
        &thief_ns.api::<EmbeddingClient>(),
        "reader",
        "DuplicateKey",
        false,
    )
    .await;
    until_reason(
        &c.ns.api::<EmbeddingClient>(),
        "reader",
        "DuplicateKey",
        true,
    )
    .await;

    // The owner goes: the host is the other's now.
    owner
        .delete("chest", &DeleteParams::default())
        .await
        .expect("delete");
    until_reason(&thief, "chest", "HostConflict", true).await;
    op.shutdown().await.expect("operator stops");
}

/// The workers' pods, built by the operator for each model source (with
/// worker TLS: its Secret volume and HTTPS probes), pass the
/// `restricted` Pod Security profile enforced by the real API server (a
/// server-side dry run); the same pod without its security context is
/// refused, which shows the profile is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_pods_pass_the_restricted_profile() {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Patch, PatchParams, PostParams};
    use medembed_api::crd::{EmbeddingDeployment, EmbeddingDeploymentSpec};
    use medembed_operator::resources::{self, EndpointSettings, WorkerDefaults};

    let _heavy = crate::common::exclusive().await;
    let c = crate::common::cluster("op-restricted").await;
    let ns = c.ns.name().to_string();
    Api::<Namespace>::all(c.admin.clone())
        .patch(
            &ns,
            &PatchParams::apply("medembed-tests"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }},
            })),
        )
        .await
        .expect("label the namespace");
    let defaults = WorkerDefaults {
        image: "medembed/worker:test".into(),
        fetch_image: "medembed/operator:test".into(),
        listen_host: "0.0.0.0".into(),
        port: 8080,
        tls: true,
    };
    let pods = Api::<Pod>::namespaced(c.admin.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for (i, model) in [
        json!({"pvc": {"claimName": "models", "path": "v1"}}),
        json!({"url": {"url": "https://models.example/m.tar.gz", "sha256": "0".repeat(64)}}),
    ]
    .into_iter()
    .enumerate()
    {
        let spec: EmbeddingDeploymentSpec =
            serde_json::from_value(json!({"endpoint": "chest", "model": model})).expect("spec");
        let mut dep = EmbeddingDeployment::new("blue", spec);
        dep.metadata.namespace = Some(ns.clone());
        dep.metadata.uid = Some("0c7e1f6a-0000-4000-8000-000000000001".into());
        let d = resources::deployment(&dep, &EndpointSettings::default(), &defaults)
            .expect("deployment");
        let template = d.spec.expect("spec").template;
        let pod = |spec| Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("worker-{i}")),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        };
        let spec = template.spec.clone().expect("pod spec");
        pods.create(&dry, &pod(spec.clone()))
            .await
            .unwrap_or_else(|e| {
                panic!("model source {i}: the restricted profile refused the worker pod: {e}")
            });
        // Control: without the security contexts the same pod is refused.
        let mut bare = spec;
        bare.security_context = None;
        for ctr in bare
            .containers
            .iter_mut()
            .chain(bare.init_containers.iter_mut().flatten())
        {
            ctr.security_context = None;
        }
        match pods.create(&dry, &pod(bare)).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("model source {i}: a bare pod was not refused: {other:?}"),
        }
    }
}

/// With the gateway's namespace known, each deployment's workers get a
/// NetworkPolicy admitting only the gateway's pods (and scrapers), owned by
/// the deployment and garbage-collected with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_admit_only_the_gateway() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use medembed_api::crd::EmbeddingDeployment;

    let _heavy = crate::common::exclusive().await;
    let c = crate::common::cluster("op-netpol").await;
    let op_client = crate::common::operator_client(&c.cp, &c.admin, &c.op_ns).await;
    let mut config = OperatorConfig::for_tests();
    config.lease_namespace = c.op_ns.clone();
    config.identity = Some("op-netpol".into());
    config.lease_duration_seconds = 4;
    config.lease_renew_seconds = 1;
    config.gateway_namespace = Some("medembed-gw".into());
    config.gateway_pod_labels =
        "app.kubernetes.io/name=medembed-gateway,app.kubernetes.io/instance=m".into();
    config.metrics_namespaces = "monitoring".into();
    let op = medembed_operator::start(config, op_client)
        .await
        .expect("operator starts");
    let ns = c.ns.name().to_string();
    let models = tempfile::tempdir().expect("tempdir");
    medembed_testsupport::repo::host_path_claim(&c.admin, &ns, "models", models.path())
        .await
        .expect("claim");
    create(
        &c.ns.api::<EmbeddingEndpoint>(),
        "chest",
        json!({"auth": {"mode": "Unauthenticated"}}),
    )
    .await;
    let deps = c.ns.api::<EmbeddingDeployment>();
    create(
        &deps,
        "blue",
        json!({"endpoint": "chest", "model": {"pvc": {"claimName": "models"}}}),
    )
    .await;
    let uid = deps.get("blue").await.expect("get").metadata.uid;
    let nps = c.ns.api::<NetworkPolicy>();
    let np = wait::until("the workers' NetworkPolicy", LIMIT, STEP, || async {
        nps.get_opt("blue-worker").await
    })
    .await
    .expect("NetworkPolicy created");
    let owner = &np.metadata.owner_references.clone().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid), owner.controller),
        ("EmbeddingDeployment", uid.as_ref(), Some(true))
    );
    let v = serde_json::to_value(np.spec.expect("spec")).expect("json");
    assert_eq!(v["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        v["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "medembed-worker", "app.kubernetes.io/instance": "blue"})
    );
    assert_eq!(
        v["ingress"],
        json!([{
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "medembed-gw"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "medembed-gateway", "app.kubernetes.io/instance": "m"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            ],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }])
    );
    deps.delete("blue", &DeleteParams::default())
        .await
        .expect("delete");
    wait::until("the NetworkPolicy collected", LIMIT, STEP, || async {
        Ok::<_, kube::Error>(nps.get_opt("blue-worker").await?.is_none().then_some(()))
    })
    .await
    .expect("garbage-collected with its deployment");
    op.shutdown().await.expect("operator stops");
}
