//! Two operator replicas: only the Lease holder reconciles; when the leader
//! dies (no release) the other takes over after the Lease expires, and an
//! operator restarted in the middle of changes loses none of them.

use std::time::{Duration, Instant};

use crate::common::{create, LIMIT, STEP};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use medembed_api::crd::{find_condition, EmbeddingDeployment, EmbeddingEndpoint};
use medembed_operator::RunningOperator;
use medembed_testsupport::metrics::metric;
use medembed_testsupport::{http, wait};
use serde_json::json;

fn reconciles(op: &RunningOperator) -> f64 {
    metric(
        &op.metrics_text(),
        "medembed_operator_reconciles_total",
        &[],
    )
}

/// GET `path` from the operator's own listener.
async fn get(op: &RunningOperator, path: &str) -> std::io::Result<http::Response> {
    http::get(op.local_addr(), path, Duration::from_secs(2)).await
}

async fn all_ready(deps: &kube::Api<EmbeddingDeployment>, names: &[&str], replicas: i32) {
    wait::until(&format!("{names:?} ready"), LIMIT, STEP, || async {
        for n in names {
            let d = deps.get(n).await?;
            let st = d.status.clone().unwrap_or_default();
            let ok = find_condition(&st.conditions, "Ready").is_some_and(|c| c.is_true())
                && st.ready_replicas == replicas
                && st.observed_generation == d.metadata.generation;
            if !ok {
                return Ok::<_, kube::Error>(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .expect("deployments ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_reconciles_and_restarts_lose_nothing() {
    let _heavy = crate::common::exclusive().await;
    let started = Instant::now();
    let env = crate::common::setup("op-lead", &[("gpu-0", 8)]).await;
    let result = wait::within("leader election", Duration::from_secs(400), async {
        env.model_claim("models").await;
        let a = env.start_operator("op-a").await;
        wait::until("op-a leads", LIMIT, STEP, || async {
            Ok::<_, String>(a.is_leader().then_some(()))
        })
        .await
        .expect("op-a leads");
        let b = env.start_operator("op-b").await;
        let ready_b = format!("http://{}/readyz", b.local_addr());
        wait::until("op-b ready as a standby", LIMIT, STEP, || async {
            let r = get(&b, "/readyz").await;
            Ok::<_, String>(r.ok().filter(|r| r.status == 200).map(|_| ()))
        })
        .await
        .unwrap_or_else(|e| panic!("{ready_b}: {e}"));

        // The process endpoints: alive, ready (as a standby too), metrics.
        for op in [&a, &b] {
            let h = get(op, "/healthz").await.expect("GET /healthz");
            assert_eq!(h.status, 200);
            let m = get(op, "/metrics").await.expect("GET /metrics");
            assert_eq!(m.status, 200);
            assert!(m.body.contains("medembed_operator_leader"), "{}", m.body);
        }
        let lm = get(&a, "/metrics").await.expect("GET /metrics");
        assert!(
            lm.body.contains("medembed_operator_leader 1"),
            "{}",
            lm.body
        );

        let eps = env.ns.api::<EmbeddingEndpoint>();
        let deps = env.ns.api::<EmbeddingDeployment>();
        create(&eps, "ep", json!({"auth": {"mode": "Unauthenticated"}})).await;
        for n in ["d1", "d2", "d3"] {
            create(&deps, n, env.deployment_spec("ep", "models", "v1")).await;
        }
        all_ready(&deps, &["d1", "d2", "d3"], 1).await;
        assert!(a.is_leader() && !b.is_leader());
        assert!(reconciles(&a) > 0.0);
        assert_eq!(reconciles(&b), 0.0, "the standby reconciled");

        // The leader dies in the middle of changes (no Lease release).
        for n in ["d4", "d5"] {
            create(&deps, n, env.deployment_spec("ep", "models", "v1")).await;
        }
        let patch = json!({"spec": {"instanceCount": 2}});
        deps.patch("d1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("scale d1");
        a.kill();
        let t = Instant::now();
        wait::until("op-b takes over", LIMIT, STEP, || async {
            Ok::<_, String>(b.is_leader().then_some(()))
        })
        .await
        .expect("op-b leads");
        eprintln!(
            "op-b took over {:?} after op-a died (lease 4 s)",
            t.elapsed()
        );
        all_ready(&deps, &["d2", "d3", "d4", "d5"], 1).await;
        all_ready(&deps, &["d1"], 2).await;
        assert!(reconciles(&b) > 0.0);

        // A clean restart: op-b stops (releasing the Lease), changes land
        // while no operator runs, op-c starts and applies them.
        b.shutdown().await.expect("op-b stops");
        deps.patch(
            "d2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"runtime": {"maxBatchSize": 4}}})),
        )
        .await
        .expect("change d2");
        let c = env.start_operator("op-c").await;
        wait::until("d2's ConfigMap updated", LIMIT, STEP, || async {
            let cm = env
                .ns
                .api::<k8s_openapi::api::core::v1::ConfigMap>()
                .get("d2-worker-config")
                .await?;
            let v = cm
                .data
                .unwrap_or_default()
                .get("MEDEMBED_MAX_BATCH_IMAGES")
                .cloned();
            Ok::<_, kube::Error>((v.as_deref() == Some("4")).then_some(()))
        })
        .await
        .expect("op-c applied the change");
        all_ready(&deps, &["d2"], 1).await;
        for n in ["d1", "d2", "d3", "d4", "d5"] {
            assert!(env
                .ns
                .api::<Deployment>()
                .get_opt(&format!("{n}-worker"))
                .await
                .expect("get")
                .is_some());
        }
        c.shutdown().await.expect("op-c stops");
    })
    .await;
    let what = "only_the_leader_reconciles_and_restarts_lose_nothing";
    env.finish(result, what, started).await;
}
