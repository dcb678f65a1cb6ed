//! Readiness and restarts: a pod failing its readiness probe is not Ready and
//! not a ready endpoint; a pod whose program exits is restarted with back-off
//! and its restart count rises.

use std::time::Duration;

use crate::common::{get, is_ready, pod_ip};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use medembed_testsupport::wait;
use serde_json::json;

const STEP: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(60);

fn pod(env: &crate::common::Env, name: &str, vars: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": env.pod_spec(vars),
    }))
    .expect("pod json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_restarts() {
    let limit = Duration::from_secs(180);
    crate::common::run("probes", "readiness_and_restarts", limit, async |env| {
        let pods = env.ns.api::<Pod>();
        let pp = PostParams::default();
        let svc = serde_json::from_value(json!({
            "metadata": {"name": "unready"},
            "spec": {"selector": {"app": "unready"}, "ports": [{"port": 80, "targetPort": "http"}]},
        }))
        .expect("service json");
        env.ns
            .api::<Service>()
            .create(&pp, &svc)
            .await
            .expect("service");
        pods.create(&pp, &pod(env, "unready", &[("FAIL_READINESS", "1")]))
            .await
            .expect("unready pod");
        pods.create(&pp, &pod(env, "crasher", &[("EXIT_AFTER_MS", "300")]))
            .await
            .expect("crasher pod");

        // The unready pod runs and answers, but its probe fails: not Ready, and
        // its EndpointSlice entry says ready=false.
        let ip =
            wait::until("unready pod running", LIMIT, STEP, || async {
                let p = pods.get("unready").await?;
                Ok::<_, kube::Error>(pod_ip(&p).filter(|_| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                }))
            })
            .await
            .expect("unready pod runs");
        assert_eq!(get(ip, "/healthz").await.map(|r| r.status), Some(503));
        let slices = env.ns.api::<EndpointSlice>();
        wait::until("endpoint listed as not ready", LIMIT, STEP, || async {
            let lp = ListParams::default().labels("kubernetes.io/service-name=unready");
            let eps: Vec<_> = slices
                .list(&lp)
                .await?
                .items
                .into_iter()
                .flat_map(|s| s.endpoints.unwrap_or_default())
                .collect();
            let listed_not_ready = eps.iter().any(|e| {
                e.addresses.contains(&ip.to_string())
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)
            });
            Ok::<_, kube::Error>(listed_not_ready.then_some(()))
        })
        .await
        .expect("EndpointSlice shows the pod as not ready");
        // Several probe periods later it is still not Ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let p = pods.get("unready").await.expect("get unready");
        assert!(
            !is_ready(&p),
            "a pod failing its readiness probe must not be Ready"
        );
        let cs = &p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()[0];
        assert!(!cs.ready, "container must not be ready");
        assert_eq!(cs.restart_count, 0, "readiness failures do not restart");

        // The crasher exits (status 3) every 300 ms: CrashLoopBackOff, then
        // restarts with a rising count.
        let mut saw_backoff = false;
        let mut counts: Vec<i32> = Vec::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "crasher not restarted 3 times in {LIMIT:?}: {counts:?}"
            );
            let p = pods.get("crasher").await.expect("get crasher");
            let cs = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            if let Some(c) = cs.first() {
                let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
                saw_backoff |=
                    waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff");
                if counts.last() != Some(&c.restart_count) {
                    counts.push(c.restart_count);
                }
                let exit = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code);
                if c.restart_count >= 3 && exit == Some(3) {
                    break;
                }
            }
            tokio::time::sleep(STEP).await;
        }
        assert!(
            saw_backoff,
            "the crasher was never seen in CrashLoopBackOff"
        );
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "restart count only rises: {counts:?}"
        );
    })
    .await;
}
