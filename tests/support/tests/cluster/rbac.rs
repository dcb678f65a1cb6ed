//! RBAC is enforced: a service account without rights gets 403; after a Role
//! and RoleBinding grant it `list pods`, it may list pods (and still not
//! secrets). Also: a pod's mounted ConfigMap/Secret, env from references, and
//! the service-account kubeconfig the agent writes.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::Api;
use medembed_testsupport::wait;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_enforced() {
    let limit = Duration::from_secs(120);
    crate::common::run("rbac", "rbac_is_enforced", limit, async |env| {
        let ns = env.ns.name().to_string();
        let pp = PostParams::default();
        let sas = env.ns.api::<ServiceAccount>();
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "nobody"}})).expect("sa");
        sas.create(&pp, &sa).await.expect("create sa");
        let tr = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
            ..Default::default()
        };
        let token = sas
            .create_token_request("nobody", &pp, &tr)
            .await
            .expect("token request")
            .status
            .and_then(|s| s.token)
            .expect("token");
        let as_sa = env.cp.client_with_token(&token).expect("client");
        let pods_as_sa: Api<Pod> = Api::namespaced(as_sa.clone(), &ns);
        let err = pods_as_sa.list(&ListParams::default()).await.expect_err("must be forbidden");
        assert_eq!(status_code(&err), Some(403), "{err}");

        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        }))
        .expect("role");
        env.ns.api::<Role>().create(&pp, &role).await.expect("role");
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns}],
        }))
        .expect("rolebinding");
        env.ns.api::<RoleBinding>().create(&pp, &rb).await.expect("rolebinding");
        wait::until("granted list pods", LIMIT, Duration::from_millis(200), || async {
            pods_as_sa.list(&ListParams::default()).await.map(|_| Some(()))
        })
        .await
        .expect("list allowed after binding");
        let secrets_as_sa: Api<Secret> = Api::namespaced(as_sa, &ns);
        let err = secrets_as_sa.list(&ListParams::default()).await.expect_err("secrets stay forbidden");
        assert_eq!(status_code(&err), Some(403));

        // A pod with config: mounted ConfigMap and Secret, env from both, a
        // fieldRef, and a mount path in an argument-like env value.
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg"}, "data": {"greeting": "hello", "app.yaml": "a: 1\n"},
        }))
        .expect("cm");
        env.ns.api::<ConfigMap>().create(&pp, &cm).await.expect("cm");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "sec"}, "stringData": {"key": "s3cret"},
        }))
        .expect("secret");
        env.ns.api::<Secret>().create(&pp, &secret).await.expect("secret");
        let mut spec = env.pod_spec(&[("CONFIG_FILE", "/etc/app/app.yaml")]);
        spec["serviceAccountName"] = json!("nobody");
        spec["volumes"] = json!([
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "secret", "secret": {"secretName": "sec"}},
        ]);
        let c = &mut spec["containers"][0];
        c["volumeMounts"] = json!([
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "secret", "mountPath": "/etc/secret", "readOnly": true},
        ]);
        c["env"].as_array_mut().expect("env").extend([
            json!({"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}}),
            json!({"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "key"}}}),
            json!({"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        ]);
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "configured"}, "spec": spec})).expect("pod");
        let pods = env.ns.api::<Pod>();
        pods.create(&pp, &pod).await.expect("pod");
        let ip = wait::until("configured pod ready", LIMIT, Duration::from_millis(200), || async {
            let p = pods.get("configured").await?;
            Ok::<_, kube::Error>(crate::common::pod_ip(&p).filter(|_| crate::common::is_ready(&p)))
        })
        .await
        .expect("configured pod ready");
        let env_of = |k: &'static str| async move { crate::common::get(ip, &format!("/env/{k}")).await.map(|r| r.body) };
        assert_eq!(env_of("GREETING").await.as_deref(), Some("hello"));
        assert_eq!(env_of("API_KEY").await.as_deref(), Some("s3cret"));
        assert_eq!(env_of("MY_NS").await.as_deref(), Some(ns.as_str()));
        let config_file = env_of("CONFIG_FILE").await.expect("CONFIG_FILE");
        assert!(config_file.ends_with("/volumes/config/app.yaml"), "rewritten: {config_file}");
        let body = crate::common::get(ip, &format!("/file{config_file}")).await.map(|r| r.body);
        assert_eq!(body.as_deref(), Some("a: 1\n"));
        let kubeconfig = env_of("KUBECONFIG").await.expect("KUBECONFIG is set for the service account");
        assert!(std::path::Path::new(&kubeconfig).exists());
    })
    .await;
}
