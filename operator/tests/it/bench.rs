//! Benchmark (ignored by default; run with
//! `cargo test -p medembed-operator --release --test it bench:: -- --ignored --nocapture`):
//! apply 200 EmbeddingDeployments against the real control plane and measure
//! the seconds until every child exists and every status is written, and the
//! operator process's memory and CPU. The operator runs as its own process
//! (the `medembed-operator` binary) under its generated RBAC role, so the
//! figures are its alone. No nodes are registered: the pods stay Pending, the
//! operator reports them Unschedulable, as on a cluster without capacity.
//!
//! Baseline: the floor any controller has on this API server, a client that
//! creates the same 200 EmbeddingDeployments and server-side applies the same
//! 800 children itself (built by the operator's own pure builders, without
//! owner references), 16 requests at a time, in a namespace of its own, before
//! the operator starts. The operator watches only the benchmark's namespace
//! (`--namespace`) so the baseline's objects are not reconciled.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};
use medembed_api::crd::{EmbeddingDeployment, EmbeddingEndpoint};
use medembed_operator::resources;
use medembed_testsupport::metrics::metric;
use medembed_testsupport::{wait, ControlPlane, TestNamespace};
use serde_json::json;

const COUNT: usize = 200;
const CONCURRENCY: usize = 16;
/// How long the operator may take, and how often it is looked at meanwhile.
const LIMIT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(250);

fn bench_spec(i: usize) -> serde_json::Value {
    json!({
        "endpoint": "bench",
        "model": {"pvc": {"claimName": "models", "path": format!("m{i}")}},
        "resources": {"gpu": {"count": 1}},
    })
}

/// Server-side applies `obj` in `ns`, without its owner references.
async fn ssa<K>(ns: &TestNamespace, mut obj: K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    obj.meta_mut().owner_references = None;
    let name = obj.meta().name.clone().expect("name");
    ns.api::<K>()
        .patch(
            &name,
            &PatchParams::apply("medembed-bench-baseline").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// The baseline: the same creates and applies from one client, no operator.
async fn baseline(cp: &ControlPlane) -> Duration {
    let ns = cp.namespace("bench-base").await.expect("namespace");
    let deps = ns.api::<EmbeddingDeployment>();
    let defaults = resources::WorkerDefaults {
        image: "medembed/worker:bench".into(),
        fetch_image: "medembed/operator:bench".into(),
        listen_host: "0.0.0.0".into(),
        port: 8080,
        tls: false,
    };
    let request = resources::EndpointSettings::default();
    let (ns, defaults, request) = (&ns, &defaults, &request);
    let t0 = Instant::now();
    futures::stream::iter(0..COUNT)
        .for_each_concurrent(CONCURRENCY, |i| {
            let deps = deps.clone();
            async move {
                let name = format!("d{i:03}");
                crate::common::create(&deps, &name, bench_spec(i)).await;
                let mut d = deps.get(&name).await.expect("get");
                d.metadata.namespace = Some(ns.name().to_string());
                ssa(ns, resources::config_map(&d, request).expect("cm")).await;
                ssa(
                    ns,
                    resources::deployment(&d, request, defaults).expect("deployment"),
                )
                .await;
                ssa(ns, resources::service(&d, defaults).expect("svc")).await;
                ssa(ns, resources::pdb(&d).expect("pdb")).await;
            }
        })
        .await;
    t0.elapsed()
}

fn proc_stat(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ')'.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (kb("VmRSS:"), kb("VmHWM:"), ticks as f64 / 100.0)
}

async fn count<K>(api: &kube::Api<K>) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=medembed-operator"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly"]
async fn apply_200_deployments() {
    let _heavy = crate::common::exclusive().await;
    let crate::common::Cluster {
        ns,
        op_ns,
        admin,
        cp,
    } = crate::common::cluster("bench").await;
    let token = crate::common::operator_token(&admin, &op_ns).await;
    let base = baseline(&cp).await;

    // A kubeconfig for the operator's service account.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut kc = Kubeconfig::read_from(cp.kubeconfig()).expect("kubeconfig");
    let mut named: NamedAuthInfo = kc.auth_infos[0].clone();
    named.auth_info = Some(AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    });
    kc.auth_infos = vec![named];
    let kc_path = dir.path().join("kubeconfig");
    std::fs::write(&kc_path, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_medembed-operator"))
        .env("KUBECONFIG", &kc_path)
        .env("MEDEMBED_LOG", "warn")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lease-namespace",
            &op_ns,
            "--identity",
            "bench",
            "--namespace",
            ns.name(),
        ])
        .args([
            "--log-format",
            "text",
            "--lease-duration-seconds",
            "15",
            "--concurrency",
            CONCURRENCY.to_string().as_str(),
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("operator process");
    let pid = child.id().expect("pid");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait::until(
        "operator ready",
        Duration::from_secs(60),
        crate::common::STEP,
        || async {
            let r = medembed_testsupport::http::get(addr, "/readyz", Duration::from_secs(2)).await;
            Ok::<_, String>(r.ok().filter(|r| r.status == 200).map(|_| ()))
        },
    )
    .await
    .expect("operator ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _, idle_cpu) = proc_stat(pid);

    let eps = ns.api::<EmbeddingEndpoint>();
    let deps = ns.api::<EmbeddingDeployment>();
    crate::common::create(&eps, "bench", json!({"auth": {"mode": "Unauthenticated"}})).await;
    let t0 = Instant::now();
    futures::stream::iter(0..COUNT)
        .for_each_concurrent(CONCURRENCY, |i| {
            let deps = deps.clone();
            async move {
                crate::common::create(&deps, &format!("d{i:03}"), bench_spec(i)).await;
            }
        })
        .await;
    let applied = t0.elapsed();
    let peak = std::sync::atomic::AtomicU64::new(0);
    let children = wait::until("every child exists", LIMIT, POLL, || async {
        peak.fetch_max(proc_stat(pid).0, std::sync::atomic::Ordering::Relaxed);
        let n = [
            count(&ns.api::<Deployment>()).await,
            count(&ns.api::<Service>()).await,
            count(&ns.api::<ConfigMap>()).await,
            count(&ns.api::<PodDisruptionBudget>()).await,
        ];
        Ok::<_, String>(n.iter().all(|c| *c == COUNT).then(|| t0.elapsed()))
    })
    .await
    .expect("children");
    let statuses = wait::until("every status written", LIMIT, POLL, || async {
        peak.fetch_max(proc_stat(pid).0, std::sync::atomic::Ordering::Relaxed);
        let l = deps
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let done = l
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| s.observed_generation.is_some())
            })
            .count();
        Ok::<_, String>((done == COUNT).then(|| t0.elapsed()))
    })
    .await
    .expect("statuses");
    let (rss, hwm, cpu) = proc_stat(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (settled_rss, _, settled_cpu) = proc_stat(pid);
    let metrics = medembed_testsupport::http::get(addr, "/metrics", Duration::from_secs(2))
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    let reconciles = metric(&metrics, "medembed_operator_reconciles_total", &[]);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("== operator benchmark: {COUNT} EmbeddingDeployments ==");
    println!(
        "machine: {} CPUs ({cpu_model}), load average at the end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.trim()
    );
    println!(
        "create calls for {COUNT} deployments took     {:>8.2} s",
        applied.as_secs_f64()
    );
    println!(
        "every child exists (4 x {COUNT} objects) after {:>8.2} s",
        children.as_secs_f64()
    );
    println!(
        "every status written after                {:>8.2} s",
        statuses.as_secs_f64()
    );
    println!(
        "baseline: one client creating {COUNT} and applying 4 x {COUNT} itself: {:>8.2} s (operator / baseline: {:.2}x until every child exists)",
        base.as_secs_f64(),
        children.as_secs_f64() / base.as_secs_f64()
    );
    println!("operator RSS: idle {:.1} MiB, peak sampled {:.1} MiB, high-water {:.1} MiB, settled {:.1} MiB",
        idle_rss as f64 / 1024.0, peak.load(std::sync::atomic::Ordering::Relaxed).max(rss) as f64 / 1024.0, hwm as f64 / 1024.0, settled_rss as f64 / 1024.0);
    println!("operator CPU: {:.2} s until all statuses written ({:.2} s idle before), {:.2} s in the 10 s after",
        cpu - idle_cpu, idle_cpu, settled_cpu - cpu);
    println!("reconciles: {reconciles}");
    let _ = child.kill().await;
}
