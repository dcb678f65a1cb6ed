//! The Helm chart, end to end, on a real control plane: lint, the committed
//! copies of the CRDs and RBAC, the rendered chart accepted by the API server
//! (server-side dry run), then `helm install`; the operator (two replicas,
//! leader election) creates workers from an EmbeddingDeployment (the TEST
//! MODEL from a volume: random weights, its embeddings mean nothing), the node
//! agent runs them, the gateway discovers them, and the API brief's exact
//! requests through the gateway with the endpoint's key get the same answer,
//! in the live service's shape, as the worker gives directly (over TLS: the
//! operator made the workers' CA and issued each deployment a serving
//! certificate for its Service's name, the workers mount it and serve HTTPS
//! only, the gateway verifies them with the CA certificate the operator
//! published, never its key); the endpoint's
//! documented shape applies at once through the gateway and reaches the
//! workers' settings. Blue/green under continuous load
//! (90/10, then 0/100, then the first deployment deleted) and a worker pod
//! deleted under load, each with zero failed requests; `helm uninstall`
//! leaves nothing of the release behind.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::core::TypeMeta;
use kube::discovery::Discovery;
use medembed_e2e::load::{under_load, Target};
use medembed_e2e::*;
use serde_json::{json, Value};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The chart's CRDs and the operator's rules are copies of `crds/` (generated
/// from the Rust types); they must not drift.
#[test]
fn chart_copies_match_the_generated_crds_and_rbac() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for f in [
        "embeddingendpoint.yaml",
        "embeddingdeployment.yaml",
        "embeddingclient.yaml",
    ] {
        assert_eq!(
            read(&repo.join("crds").join(f)),
            read(&repo.join("charts/medembed/crds").join(f)),
            "charts/medembed/crds/{f} differs from crds/{f}: copy it (cp crds/embedding*.yaml charts/medembed/crds/)"
        );
    }
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&read(&repo.join("crds/rbac.yaml")))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    let rules_of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .map(|d| d["rules"].clone())
            .unwrap()
    };
    let file = |name: &str| -> Value {
        serde_yaml::from_str(&read(&repo.join("charts/medembed/files").join(name))).unwrap()
    };
    assert_eq!(
        file("operator-rules.yaml"),
        rules_of("ClusterRole"),
        "charts/medembed/files/operator-rules.yaml differs from crds/rbac.yaml's ClusterRole"
    );
    assert_eq!(
        file("operator-leader-rules.yaml"),
        rules_of("Role"),
        "charts/medembed/files/operator-leader-rules.yaml differs from crds/rbac.yaml's Role"
    );
}

/// Every document of the rendered chart, applied server-side with
/// `dryRun=All`: the API server validates each against its schema (CRDs
/// installed first, as Helm does).
async fn server_side_dry_run(env: &Env, rendered: &str, force_ns: Option<&str>) -> usize {
    let discovery = Discovery::new(env.admin.clone())
        .run()
        .await
        .expect("discovery");
    let mut n = 0;
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if v.is_null() {
            continue;
        }
        let tm: TypeMeta = serde_json::from_value(v.clone()).expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&tm).expect("gvk");
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
        let name = v["metadata"]["name"].as_str().expect("name").to_string();
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = force_ns
                .or(v["metadata"]["namespace"].as_str())
                .unwrap_or(env.release_ns.name());
            Api::namespaced_with(env.admin.clone(), ns, &ar)
        } else {
            Api::all_with(env.admin.clone(), &ar)
        };
        let mut v = v;
        if let (Some(ns), true) = (force_ns, caps.scope == kube::discovery::Scope::Namespaced) {
            v["metadata"]["namespace"] = json!(ns);
        }
        let obj: DynamicObject = serde_json::from_value(v).expect("object");
        api.patch(
            &name,
            &PatchParams::apply("medembed-e2e").dry_run(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("server-side dry run of {} {name}: {e}", tm.kind));
        n += 1;
    }
    n
}

/// How many objects `api` lists with `lp`; None when the listing fails.
async fn count<K>(api: &Api<K>, lp: &ListParams) -> Option<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(lp).await.ok().map(|l| l.items.len())
}

/// The gateway's service account (the chart's RBAC): its credentials Secret
/// and nothing else of the kind. `key` is the endpoint's key in clear.
async fn gateway_reads_only_its_credentials(env: &Env, key: &str) {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
    let rel_ns = env.release_ns.name();
    let tenant = env.ns.name();
    let token = Api::<ServiceAccount>::namespaced(env.admin.clone(), rel_ns)
        .create_token_request(
            "medembed-gateway",
            &Default::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("a token of the gateway's service account")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let gw = env.cp.client_with_token(&token).unwrap();
    let creds = Api::<Secret>::namespaced(gw.clone(), rel_ns)
        .get("medembed-credentials")
        .await
        .expect("the gateway reads its credentials Secret");
    let doc = String::from_utf8(creds.data.unwrap()["credentials.json"].0.clone()).unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let primary = doc["endpoints"][format!("{tenant}/chest")]["keys"]["primary"]
        .as_str()
        .expect("the endpoint's key hash is published");
    assert_eq!(primary.len(), 64);
    assert!(
        !doc.to_string().contains(key),
        "a key in clear was published"
    );
    assert!(
        doc["clients"][format!("{tenant}/radiology")]["primary"].is_string(),
        "{doc}"
    );
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    };
    let lp = ListParams::default();
    let tenant_secrets = Api::<Secret>::namespaced(gw.clone(), tenant);
    forbidden(
        tenant_secrets.get("radiology-keys").await.map(drop),
        "a tenant's key Secret",
    );
    forbidden(
        tenant_secrets.list(&lp).await.map(drop),
        "listing a tenant's Secrets",
    );
    forbidden(
        Api::<Secret>::all(gw.clone()).list(&lp).await.map(drop),
        "listing every Secret",
    );
    forbidden(
        Api::<Secret>::namespaced(gw.clone(), rel_ns)
            .list(&lp)
            .await
            .map(drop),
        "listing the release namespace's Secrets",
    );
    forbidden(
        Api::<ConfigMap>::namespaced(gw.clone(), tenant)
            .list(&lp)
            .await
            .map(drop),
        "listing a tenant's ConfigMaps",
    );
}

/// Worker TLS as the operator set it up for deployment `dep`: its serving
/// Secret (a `kubernetes.io/tls` Secret, owned by the deployment, for its
/// Service's names, signed by the workers' CA), mounted by its worker pods
/// with HTTPS probes; the CA certificate published in the release namespace
/// without its key. Returns the CA certificate.
async fn check_worker_tls(env: &Env, dep: &str) -> String {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let cm = env
        .release_ns
        .api::<ConfigMap>()
        .get("medembed-worker-ca")
        .await
        .expect("the workers' CA ConfigMap in the release namespace");
    let data = cm.data.unwrap_or_default();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["ca.crt"],
        "the CA ConfigMap holds only ca.crt"
    );
    let ca_pem = data["ca.crt"].clone();
    assert!(
        ca_pem.contains("BEGIN CERTIFICATE") && !ca_pem.contains("PRIVATE KEY"),
        "the CA ConfigMap must hold the certificate only"
    );
    let ca_secret = env
        .release_ns
        .api::<Secret>()
        .get("medembed-worker-ca")
        .await
        .expect("the workers' CA Secret");
    assert_eq!(ca_secret.type_.as_deref(), Some("kubernetes.io/tls"));

    let s = env
        .ns
        .api::<Secret>()
        .get(&format!("{dep}-worker-tls"))
        .await
        .expect("the serving certificate's Secret");
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let owner = &s.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("EmbeddingDeployment", dep)
    );
    let entries = s.data.unwrap_or_default();
    let cert = String::from_utf8(entries["tls.crt"].0.clone()).unwrap();
    let info = medembed_api::pki::inspect(&cert).expect("a certificate");
    let host = format!("{dep}-worker.{}.svc", env.ns.name());
    assert_eq!(info.names, [host.clone(), format!("{host}.cluster.local")]);
    let life = info.not_after.duration_since(info.not_before).unwrap();
    assert!(life > Duration::from_secs(80 * 86400) && life < Duration::from_secs(100 * 86400));
    assert!(
        medembed_api::pki::signed_by(&cert, &ca_pem),
        "the serving certificate is not signed by the published CA"
    );

    let pods = env
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("medembed.io/deployment={dep}")))
        .await
        .unwrap();
    assert!(!pods.items.is_empty());
    for pod in pods.items {
        let spec = pod.spec.unwrap();
        let mounted = spec.volumes.unwrap_or_default().iter().any(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                == Some(format!("{dep}-worker-tls").as_str())
        });
        assert!(mounted, "a {dep} worker pod does not mount its certificate");
        let probe = spec.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(probe.http_get.unwrap().scheme.as_deref(), Some("HTTPS"));
    }
    ca_pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_serve_blue_green_and_uninstall() {
    let started = Instant::now();
    let env = setup("e2e").await;
    let p = paths();
    let chart = p.chart.to_string_lossy().into_owned();
    let kubeconfig = env.cp.kubeconfig().to_string_lossy().into_owned();
    let rel_ns = env.release_ns.name().to_string();

    // 1. Lint, then render and have the API server validate every object.
    let lint = helm(&env.cp, &["lint", &chart, "--strict"]).await;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let mut args: Vec<String> = vec![
        "install".into(),
        "medembed".into(),
        chart.clone(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
        "--namespace".into(),
        rel_ns.clone(),
    ];
    for v in local_values() {
        args.push("--set".into());
        args.push(v);
    }
    let mut template = args.clone();
    template[0] = "template".into();
    template.extend([
        "--include-crds".into(),
        "--kube-version".into(),
        "1.36.0".into(),
        // The optional parts whose APIs this cluster serves, validated too.
        "--set".into(),
        "serviceMonitor.enabled=false".into(),
        "--set".into(),
        "grafanaDashboard.enabled=true".into(),
        "--set".into(),
        "gateway.ingress.enabled=true".into(),
        "--set".into(),
        "gateway.ingress.hosts[0].host=embeddings.hospital.example".into(),
    ]);
    let template: Vec<&str> = template.iter().map(String::as_str).collect();
    let rendered = helm(&env.cp, &template).await;
    let dry = server_side_dry_run(&env, &rendered, None).await;
    eprintln!("server-side dry run accepted {dry} objects");
    assert!(dry >= 15, "only {dry} objects rendered");

    // 2. helm install (installs the CRDs from the chart's crds/).
    env.install(&[]).await;
    eprintln!("release up at {:?}", started.elapsed());

    // The examples are valid specs (the API server checks them against the
    // CRDs' schemas and CEL rules).
    let mut examples: Vec<_> = std::fs::read_dir(p.repo.join("examples"))
        .expect("examples/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    for ex in &examples {
        let n = server_side_dry_run(&env, &read(ex), Some(env.ns.name())).await;
        eprintln!("{}: {n} objects accepted", ex.display());
    }

    // 3. The user's specs: an endpoint (key mode), a deployment of the test
    //    model from a volume, and a client with its own key.
    let sample = env.apply_samples().await;
    let (url, key, client_key) = (sample.url.clone(), sample.key.clone(), CLIENT_KEY);
    let model_path = sample.model_path.clone();
    let endpoints = dynamic_api(&env, "EmbeddingEndpoint", "embeddingendpoints");
    let deployments = dynamic_api(&env, "EmbeddingDeployment", "embeddingdeployments");
    eprintln!("endpoint ready at {:?}", started.elapsed());

    // 4. The brief's requests through the gateway, with the endpoint's key:
    //    the live service's shape, a list with one object per row.
    let (status, via_gateway) = post(&url, Some(&key), BRIEF_IMAGE_AND_TEXT).await;
    assert_eq!(status, 200, "{via_gateway}");
    let rows = via_gateway
        .as_array()
        .expect("a list with one object per row");
    assert_eq!(rows.len(), 1, "{via_gateway}");
    let images = vectors(&rows[0]["image_features"]);
    let texts = vectors(&rows[0]["text_features"]);
    assert_eq!((images.len(), texts.len()), (1, 1));
    assert_eq!(images[0].len(), 1024);
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm(&images[0]) - 1.0).abs() < 1e-4);
    assert!((norm(&texts[0]) - 1.0).abs() < 1e-4);
    // The same request straight to a worker gives the same embeddings,
    // over TLS, verified as the gateway verifies it.
    let svc = env.ns.api::<Service>().get("blue-worker").await;
    assert!(svc.is_ok(), "the operator made the worker Service");
    let worker_ip = env
        .agent
        .processes(Some(env.ns.name()))
        .into_iter()
        .find(|p| p.pod.starts_with("blue-"))
        .expect("a blue worker process")
        .pod_ip;
    let ca_pem = check_worker_tls(&env, "blue").await;
    let server_name = format!("blue-worker.{}.svc", env.ns.name());
    let direct: Value = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(&server_name, format!("{worker_ip}:8080").parse().unwrap())
        .build()
        .unwrap()
        .post(format!("https://{server_name}:8080/score"))
        .header("content-type", "application/json")
        .body(BRIEF_IMAGE_AND_TEXT)
        .send()
        .await
        .expect("HTTPS to the worker")
        .json()
        .await
        .unwrap();
    // Plain HTTP to the worker gets no answer.
    let plain = reqwest::get(format!("http://{worker_ip}:8080/readyz")).await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "a worker answered plain HTTP"
    );
    assert_eq!(
        direct, via_gateway,
        "the gateway changed the worker's answer"
    );
    // Auth: no key 401, a wrong key 401, the client's own key 200.
    assert_eq!(post(&url, None, BRIEF_TEXT_ONLY).await.0, 401);
    assert_eq!(post(&url, Some("not-a-key"), BRIEF_TEXT_ONLY).await.0, 401);
    eventually(
        &env,
        "the client's key works",
        Duration::from_secs(30),
        || async { post(&url, Some(client_key), BRIEF_TEXT_ONLY).await.0 == 200 },
    )
    .await;

    // 4a. Least privilege: with the gateway's own service-account token,
    //     the credentials Secret the operator publishes (hashes, not keys)
    //     is readable, and no other Secret or ConfigMap: not the tenant's key
    //     Secrets, not a list of its own namespace's Secrets.
    gateway_reads_only_its_credentials(&env, &key).await;

    // 4b. The documented shape, for clients written against the
    //     documentation: set on the endpoint, it applies through the gateway
    //     at once, and the operator passes it on to the workers (a rolling
    //     update); then back to the default, the live shape.
    let documented = json!({
        "image_features": rows[0]["image_features"],
        "text_features": rows[0]["text_features"],
        "scaling_factor": rows[0]["scaling_factor"],
    });
    for (format, want) in [("Documented", &documented), ("PerRow", &via_gateway)] {
        let mut spec = key_endpoint(&[("blue", 100)]);
        spec["responseFormat"] = json!(format);
        apply_endpoint(&env, spec).await;
        eventually(
            &env,
            &format!("the {format} shape through the gateway"),
            Duration::from_secs(30),
            || async { post(&url, Some(&key), BRIEF_IMAGE_AND_TEXT).await.1 == *want },
        )
        .await;
        eventually(
            &env,
            &format!("the workers run with {format}"),
            Duration::from_secs(180),
            || async {
                let setting = env
                    .ns
                    .api::<k8s_openapi::api::core::v1::ConfigMap>()
                    .get("blue-worker-config")
                    .await
                    .ok()
                    .and_then(|c| c.data)
                    .and_then(|d| d.get("MEDEMBED_RESPONSE_FORMAT").cloned());
                // As `kubectl rollout status`: the new template observed
                // and every worker on it and ready.
                let rolled = env
                    .ns
                    .api::<Deployment>()
                    .get("blue-worker")
                    .await
                    .is_ok_and(|d| {
                        let st = d.status.unwrap_or_default();
                        st.observed_generation == d.metadata.generation
                            && st.updated_replicas == Some(2)
                            && st.ready_replicas == Some(2)
                            && st.replicas == Some(2)
                    });
                setting.as_deref() == Some(format) && rolled
            },
        )
        .await;
    }

    // 5. Blue/green under continuous load: green at 10 %, then 100 %, then
    //    blue deleted. Zero failed requests throughout.
    under_load(
        Target::Url(url.clone()),
        &key,
        "green deployed, 90/10",
        || async {
            apply(
                &deployments,
                "green",
                "EmbeddingDeployment",
                deployment_spec(&env, &model_path),
            )
            .await;
            eventually(&env, "green ready", Duration::from_secs(180), || {
                ready_replicas(&deployments, "green", 2)
            })
            .await;
            split(&env, "traffic 90/10", &[("blue", 90), ("green", 10)]).await;
        },
    )
    .await;
    let answered = under_load(Target::Url(url.clone()), &key, "traffic 0/100", || async {
        split(&env, "traffic 0/100", &[("blue", 0), ("green", 100)]).await;
        // Give the gateway time to switch before blue goes away.
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    assert!(!answered.is_empty());
    under_load(Target::Url(url.clone()), &key, "blue deleted", || async {
        deployments
            .delete("blue", &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            &env,
            "blue's workers gone",
            Duration::from_secs(120),
            || async {
                !env.agent
                    .processes(Some(env.ns.name()))
                    .iter()
                    .any(|p| p.pod.starts_with("blue-"))
            },
        )
        .await;
        apply_endpoint(&env, key_endpoint(&[("green", 100)])).await;
    })
    .await;

    // 6. A worker pod deleted under load (SIGTERM, drain): zero failed.
    under_load(
        Target::Url(url.clone()),
        &key,
        "a worker pod deleted",
        || async {
            let pods = env
                .ns
                .api::<Pod>()
                .list(&ListParams::default().labels("medembed.io/deployment=green"))
                .await
                .unwrap();
            let victim = pods.items[0].metadata.name.clone().unwrap();
            env.ns
                .api::<Pod>()
                .delete(&victim, &DeleteParams::default())
                .await
                .unwrap();
            eventually(
                &env,
                "green back to 2 ready",
                Duration::from_secs(120),
                || ready_replicas(&deployments, "green", 2),
            )
            .await;
        },
    )
    .await;

    // 7. Uninstall: the user's objects first (their children are garbage
    //    collected), then the release; nothing of it is left.
    for name in ["green"] {
        let _ = deployments.delete(name, &DeleteParams::default()).await;
    }
    let _ = endpoints.delete("chest", &DeleteParams::default()).await;
    helm(
        &env.cp,
        &[
            "uninstall",
            "medembed",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            &rel_ns,
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await;
    eventually(
        &env,
        "nothing of the release left",
        Duration::from_secs(60),
        || async {
            let sel = ListParams::default().labels("app.kubernetes.io/part-of=medembed");
            let all = ListParams::default();
            let left = [
                count(&env.release_ns.api::<Deployment>(), &sel).await,
                count(&env.release_ns.api::<Service>(), &sel).await,
                count(&env.release_ns.api::<Pod>(), &all).await,
                count(&env.ns.api::<Deployment>(), &all).await,
            ];
            left == [Some(0); 4]
        },
    )
    .await;
    let cluster_roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(env.admin.clone());
    let left = cluster_roles
        .list(&ListParams::default().labels("app.kubernetes.io/part-of=medembed"))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "cluster roles left behind");
    eprintln!("end to end in {:?}", started.elapsed());
    env.teardown().await;
}
