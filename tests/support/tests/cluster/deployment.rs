//! A Deployment becomes local processes on pod IPs; its EndpointSlice lists
//! them; scaling, pod deletion and Deployment deletion behave as on a cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{alive, get, is_ready, pod_ip};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use medembed_testsupport::wait;
use serde_json::json;

const STEP: Duration = Duration::from_millis(200);
const LIMIT: Duration = Duration::from_secs(60);

/// Waits until exactly `n` processes run in the namespace and each answers on
/// its pod IP with its own pod name; returns (pod name, pod IP, pid).
async fn serving(env: &crate::common::Env, n: usize) -> Vec<(String, std::net::Ipv4Addr, u32)> {
    let r = wait::until(&format!("{n} pods serving"), LIMIT, STEP, || async {
        let procs = env.agent.processes(Some(env.ns.name()));
        if procs.len() != n {
            return Ok::<_, String>(None);
        }
        for p in &procs {
            match get(p.pod_ip, "/").await {
                Some(r) if r.status == 200 && r.body.contains(&format!("pod={} ", p.pod)) => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(
            procs
                .iter()
                .map(|p| (p.pod.clone(), p.pod_ip, p.pid))
                .collect(),
        ))
    })
    .await;
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}\nprocesses: {:?}\n{}",
            env.agent.processes(None),
            env.ns.describe().await
        ),
    }
}

/// Waits until the service's EndpointSlices list exactly `ips` as ready.
async fn endpoints_ready(env: &crate::common::Env, ips: &BTreeSet<String>) {
    let slices = env.ns.api::<EndpointSlice>();
    let pods = env.ns.api::<Pod>();
    let r = wait::until(
        "EndpointSlice lists the pods as ready",
        LIMIT,
        STEP,
        || async {
            let lp = ListParams::default().labels("kubernetes.io/service-name=web");
            let mut ready = BTreeSet::new();
            for s in slices.list(&lp).await.map_err(|e| e.to_string())?.items {
                for ep in s.endpoints.into_iter().flatten() {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                        ready.extend(ep.addresses);
                    }
                }
            }
            // The pods' own view agrees: Ready with these IPs.
            let lp = ListParams::default().labels("app=web");
            let pod_ips: BTreeSet<String> = pods
                .list(&lp)
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| pod_ip(p).map(|ip| ip.to_string()))
                .collect();
            if ready == *ips && pod_ips == *ips {
                Ok(Some(()))
            } else {
                Err(format!(
                    "slices list {ready:?} as ready, Ready pods have {pod_ips:?}, want {ips:?}"
                ))
            }
        },
    )
    .await;
    if let Err(e) = r {
        let slices = slices
            .list(&ListParams::default())
            .await
            .map(|l| serde_json::to_string(&l.items).unwrap_or_default());
        panic!("{e}\nslices: {slices:?}\n{}", env.ns.describe().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_lifecycle() {
    let limit = Duration::from_secs(240);
    crate::common::run("deploy", "deployment_lifecycle", limit, async |env| {
        let started = std::time::Instant::now();
        let ns = env.ns.name();
        let services = env.ns.api::<Service>();
        let svc = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .expect("service json");
        services.create(&PostParams::default(), &svc).await.expect("create service");

        let deployments = env.ns.api::<Deployment>();
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": env.pod_spec(&[])},
            },
        }))
        .expect("deployment json");
        deployments.create(&PostParams::default(), &dep).await.expect("create deployment");

        // Two processes, each on its own loopback pod IP.
        let two = serving(env, 2).await;
        let ips: BTreeSet<String> = two.iter().map(|(_, ip, _)| ip.to_string()).collect();
        assert_eq!(ips.len(), 2, "distinct pod IPs: {two:?}");
        endpoints_ready(env, &ips).await;
        eprintln!("2 replicas serving and in the EndpointSlice {:?} after the set-up", started.elapsed());

        // Scale to 3.
        let patch = json!({"spec": {"replicas": 3}});
        deployments
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("scale");
        let three = serving(env, 3).await;
        let ips: BTreeSet<String> = three.iter().map(|(_, ip, _)| ip.to_string()).collect();
        endpoints_ready(env, &ips).await;

        // Delete one pod: its process stops and a replacement starts.
        let (victim, victim_ip, victim_pid) = three[0].clone();
        env.ns
            .api::<Pod>()
            .delete(&victim, &DeleteParams::default())
            .await
            .expect("delete pod");
        let replaced = wait::until("pod replaced", LIMIT, STEP, || async {
            let now = serving(env, 3).await;
            let ok = !alive(victim_pid) && now.iter().all(|(name, _, _)| *name != victim);
            Ok::<_, String>(ok.then_some(now))
        })
        .await
        .expect("replacement");
        assert!(get(victim_ip, "/").await.is_none(), "deleted pod's IP still answers");
        let ips: BTreeSet<String> = replaced.iter().map(|(_, ip, _)| ip.to_string()).collect();
        endpoints_ready(env, &ips).await;

        // Delete the Deployment: every process stops, every pod goes away.
        deployments
            .delete("web", &DeleteParams::background())
            .await
            .expect("delete deployment");
        let pids: Vec<u32> = replaced.iter().map(|(_, _, pid)| *pid).collect();
        let pods = env.ns.api::<Pod>();
        wait::until("all processes and pods gone", LIMIT, STEP, || async {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            let done = env.agent.processes(Some(ns)).is_empty() && pids.iter().all(|p| !alive(*p)) && left == 0;
            Ok::<_, String>(done.then_some(()))
        })
        .await
        .expect("everything stopped");
    })
    .await;
}
