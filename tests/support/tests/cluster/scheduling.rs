//! GPU scheduling: the fake node advertises `nvidia.com/gpu: 2`; a pod asking
//! for 1 runs on it, a pod asking for 8 stays Pending with the scheduler's
//! reason.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use medembed_testsupport::wait;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

fn gpu_pod(env: &crate::common::Env, name: &str, gpus: u32) -> Pod {
    let mut spec = env.pod_spec(&[]);
    spec["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": gpus.to_string()}});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_requests_are_scheduled_by_capacity() {
    let limit = Duration::from_secs(120);
    let what = "gpu_requests_are_scheduled_by_capacity";
    crate::common::run("gpu", what, limit, async |env| {
        let pods = env.ns.api::<Pod>();
        let pp = PostParams::default();
        pods.create(&pp, &gpu_pod(env, "one-gpu", 1))
            .await
            .expect("one-gpu pod");
        pods.create(&pp, &gpu_pod(env, "eight-gpus", 8))
            .await
            .expect("eight-gpus pod");

        let node = wait::until(
            "one-gpu pod running",
            LIMIT,
            Duration::from_millis(200),
            || async {
                let p = pods.get("one-gpu").await?;
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                Ok::<_, kube::Error>(running.then(|| p.spec.and_then(|s| s.node_name)).flatten())
            },
        )
        .await
        .expect("one-gpu pod runs");
        assert_eq!(vec![node], env.agent.node_names());

        let (reason, message) = wait::until(
            "eight-gpus pod unschedulable",
            LIMIT,
            Duration::from_millis(200),
            || async {
                let p = pods.get("eight-gpus").await?;
                let cond = p
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False");
                Ok::<_, kube::Error>(
                    cond.map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default())),
                )
            },
        )
        .await
        .expect("scheduler reports");
        assert_eq!(reason, "Unschedulable");
        assert!(
            message.contains("Insufficient nvidia.com/gpu"),
            "scheduler message: {message}"
        );
        let p = pods.get("eight-gpus").await.expect("get");
        assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
        assert!(p.spec.and_then(|s| s.node_name).is_none());
        assert_eq!(env.agent.processes(Some(env.ns.name())).len(), 1);
    })
    .await;
}
