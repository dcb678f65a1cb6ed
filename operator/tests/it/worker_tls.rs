//! Worker TLS against the real control plane (`--worker-tls`): the operator
//! creates the workers' CA when none exists and publishes its certificate
//! (never its key); a deployment's serving certificate is issued for its
//! Service's names and mounted by its workers, whose HTTPS readiness probes
//! pass; when the CA Secret is replaced by its owner, the new certificate is
//! published and the serving certificate re-issued under it, without
//! rolling the workers.

use std::time::{Duration, Instant, SystemTime};

use crate::common::{create, LIMIT, STEP};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use medembed_api::crd::{find_condition, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_api::pki;
use medembed_testsupport::wait;
use serde_json::json;

fn entry(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().expect("data")[key].0.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_tls_ca_created_published_and_rotated() {
    let _heavy = crate::common::exclusive().await;
    let started = Instant::now();
    let env = crate::common::setup("op-tls", &[("gpu-0", 2)]).await;
    let mut config = env.op_config("op-a");
    config.worker_tls = true;
    config.worker_ca_secret = "worker-ca".into();
    config.worker_ca_configmap = "worker-ca".into();
    config.worker_ca_configmap_namespace = Some(env.op_ns.clone());
    config.worker_ca_refresh_seconds = 1;
    let op = medembed_operator::start(config, env.op_client.clone())
        .await
        .expect("operator starts");
    let result = wait::within("worker TLS", Duration::from_secs(300), async {
        env.model_claim("models").await;
        let eps = env.ns.api::<EmbeddingEndpoint>();
        let deps = env.ns.api::<EmbeddingDeployment>();
        create(
            &eps,
            "chest",
            json!({"auth": {"mode": "Key"}, "traffic": {"blue": 100}}),
        )
        .await;
        create(&deps, "blue", env.deployment_spec("chest", "models", "v1")).await;

        // The CA: created, its certificate (only) published.
        let op_secrets = Api::<Secret>::namespaced(env.admin.clone(), &env.op_ns);
        let ca = wait::until("the CA Secret", LIMIT, STEP, || async {
            op_secrets.get_opt("worker-ca").await
        })
        .await
        .expect("CA secret");
        assert_eq!(ca.type_.as_deref(), Some("kubernetes.io/tls"));
        let ca_pem = entry(&ca, "tls.crt");
        let cms = Api::<ConfigMap>::namespaced(env.admin.clone(), &env.op_ns);
        let published = |want: String| {
            let cms = cms.clone();
            async move {
                let cm = cms.get_opt("worker-ca").await?;
                Ok::<_, kube::Error>(
                    cm.and_then(|c| c.data)
                        .filter(|d| d.get("ca.crt") == Some(&want)),
                )
            }
        };
        let data = wait::until("the CA published", LIMIT, STEP, || {
            published(ca_pem.clone())
        })
        .await
        .expect("CA ConfigMap");
        assert_eq!(data.len(), 1);
        assert!(!data["ca.crt"].contains("PRIVATE KEY"));

        // The serving certificate, for the Service's names, by that CA.
        let secrets = env.ns.api::<Secret>();
        let issued_by = |ca: String| {
            let secrets = secrets.clone();
            async move {
                let s = secrets.get_opt("blue-worker-tls").await?;
                Ok::<_, kube::Error>(s.filter(|s| pki::signed_by(&entry(s, "tls.crt"), &ca)))
            }
        };
        let serving = wait::until("the serving certificate", LIMIT, STEP, || {
            issued_by(ca_pem.clone())
        })
        .await
        .expect("serving secret");
        let info = pki::inspect(&entry(&serving, "tls.crt")).expect("certificate");
        let host = format!("blue-worker.{}.svc", env.ns.name());
        assert_eq!(info.names, [host.clone(), format!("{host}.cluster.local")]);
        assert_eq!(serving.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            serving.metadata.owner_references.expect("owner")[0].name,
            "blue"
        );

        // The worker serves HTTPS with it: its readiness probe (HTTPS, as
        // the kubelet's) passes and the deployment is Ready.
        crate::common::until_deployment(&deps, "blue", "blue Ready over HTTPS", |d, st| {
            st.ready_replicas == 1
                && find_condition(&st.conditions, "Ready").is_some_and(|c| c.is_true())
                && d.metadata.generation == st.observed_generation
        })
        .await
        .expect("ready");
        let pods = env.ns.api::<Pod>();
        let uids = || async {
            let mut u: Vec<String> = pods
                .list(&ListParams::default().labels("medembed.io/deployment=blue"))
                .await
                .expect("pods")
                .items
                .into_iter()
                .filter_map(|p| p.metadata.uid)
                .collect();
            u.sort();
            u
        };
        let before = uids().await;

        // The owner replaces the CA (e.g. from the hospital's PKI).
        let next = pki::new_ca("hospital PKI", SystemTime::now(), pki::CA_VALIDITY).expect("CA");
        op_secrets
            .delete("worker-ca", &DeleteParams::default())
            .await
            .expect("delete CA");
        let replaced: Secret = serde_json::from_value(json!({
            "metadata": {"name": "worker-ca"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": next.cert_pem, "tls.key": next.key_pem},
        }))
        .expect("secret");
        op_secrets
            .create(&PostParams::default(), &replaced)
            .await
            .expect("create CA");
        wait::until("the new CA published", LIMIT, STEP, || {
            published(next.cert_pem.clone())
        })
        .await
        .expect("new CA published");
        wait::until("re-issued under the new CA", LIMIT, STEP, || {
            issued_by(next.cert_pem.clone())
        })
        .await
        .expect("re-issued");
        // Nothing rolled: the workers reload the files themselves.
        assert_eq!(uids().await, before);
    })
    .await;
    op.shutdown().await.expect("operator stops");
    env.finish(result, "worker TLS", started).await;
}
