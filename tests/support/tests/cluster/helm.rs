//! Helm (built from its Go module next to the control plane) installs a chart
//! into the local cluster, with RBAC on.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use medembed_testsupport::{command, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_a_chart() {
    let started = std::time::Instant::now();
    let env = crate::common::setup("helm").await;
    let chart = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(chart.path().join("templates")).expect("templates dir");
    std::fs::write(
        chart.path().join("Chart.yaml"),
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\n",
    )
    .expect("Chart.yaml");
    std::fs::write(chart.path().join("values.yaml"), "greeting: hello\n").expect("values");
    std::fs::write(
        chart.path().join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .expect("template");
    let helm = env.cp.helm().await.expect("helm binary");
    let kubeconfig = env.cp.kubeconfig().display().to_string();
    let chart_dir = chart.path().display().to_string();
    let lint = command::output(&helm, &["lint", &chart_dir]).await;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let install = [
        "install",
        "demo",
        chart_dir.as_str(),
        "--kubeconfig",
        kubeconfig.as_str(),
        "--namespace",
        env.ns.name(),
        "--set",
        "greeting=hi",
        "--wait",
        "--timeout",
        "30s",
    ];
    wait::within(
        "helm install",
        Duration::from_secs(60),
        command::output(&helm, &install),
    )
    .await
    .expect("helm install in time");
    let cm = env
        .ns
        .api::<ConfigMap>()
        .get("demo-cm")
        .await
        .expect("configmap from chart");
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hi")
    );
    env.teardown().await;
    eprintln!("helm_installs_a_chart took {:?}", started.elapsed());
}
