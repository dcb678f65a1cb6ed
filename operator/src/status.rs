//! Status that tells the truth: pure functions turning what the cluster shows
//! (the worker Deployment's status and the workers' pods) into the
//! `EmbeddingDeployment`'s conditions, and the deployments into the
//! `EmbeddingEndpoint`'s.
//!
//! Conditions follow `metav1.Condition`: `Ready` (enough workers on the
//! current spec have a loaded, warmed-up model), `Progressing` (a rollout or
//! scale-up is under way) and `Degraded` (something is failing, with a reason:
//! `ModelSourceInvalid`, `InsufficientGPU`, `Unschedulable`, `ModelLoadFailed`,
//! `OutOfMemory`, `CrashLoop`, `ImagePullFailed`, `RolloutStuck`).
//! `OutOfMemory` stays for [`OOM_RECENT`] after a worker was killed for
//! exceeding its memory limit, even once it is back: a limit that is too
//! small for the traffic is worth seeing before the next kill. A condition's
//! `lastTransitionTime` only moves when its status changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use medembed_api::crd::{find_condition, Condition};

use crate::resources::EXIT_MODEL_LOAD;

/// A failure seen in the workers, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message (no patient data: only Kubernetes' own messages
    /// and the worker's termination message, which carries none).
    pub message: String,
}

/// The longest message kept in a condition.
const MAX_MESSAGE: usize = 512;

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// How long a worker killed for its memory (`OOMKilled`) keeps the
/// deployment `Degraded` with reason `OutOfMemory`.
pub const OOM_RECENT_SECONDS: i64 = 600;

/// What is wrong with the workers' pods, if anything, at `now`.
/// `gpu_resource` is the extended resource the workers request (for
/// `InsufficientGPU`).
pub fn pod_failure(pods: &[Pod], gpu_resource: Option<&str>, now: Timestamp) -> Option<Failure> {
    let mut found: Vec<Failure> = Vec::new();
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(st) = &p.status else { continue };
        for c in st.conditions.iter().flatten() {
            if c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
            {
                let msg = c.message.clone().unwrap_or_default();
                let gpu_short =
                    gpu_resource.is_some_and(|r| msg.contains(&format!("Insufficient {r}")));
                found.push(Failure {
                    reason: if gpu_short {
                        "InsufficientGPU"
                    } else {
                        "Unschedulable"
                    },
                    message: clip(&msg),
                });
            }
        }
        for cs in st.container_statuses.iter().flatten() {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let terminated = cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
            let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
            let oom = [
                cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
                cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
            ]
            .into_iter()
            .flatten()
            .find(|t| t.reason.as_deref() == Some("OOMKilled"));
            if let Some(t) = oom {
                let recent = t
                    .finished_at
                    .as_ref()
                    .is_none_or(|f| now.as_second() - f.0.as_second() < OOM_RECENT_SECONDS);
                if recent || !cs.ready {
                    found.push(Failure {
                        reason: "OutOfMemory",
                        message: clip(&format!(
                            "container {} was killed for exceeding its memory limit \
                             (restarted {} times): raise spec.resources.memory, or lower \
                             runtime.maxBatchSize",
                            cs.name, cs.restart_count
                        )),
                    });
                    continue;
                }
            }
            if let Some(t) = terminated {
                if t.exit_code == EXIT_MODEL_LOAD && (cs.restart_count > 0 || !cs.ready) {
                    let msg = t.message.clone().unwrap_or_else(|| {
                        format!("the worker exited with code {EXIT_MODEL_LOAD} (model load failed)")
                    });
                    found.push(Failure {
                        reason: "ModelLoadFailed",
                        message: clip(&msg),
                    });
                    continue;
                }
            }
            match waiting_reason {
                "CrashLoopBackOff" => found.push(Failure {
                    reason: "CrashLoop",
                    message: clip(&format!(
                        "container {} restarted {} times: {}",
                        cs.name,
                        cs.restart_count,
                        waiting.and_then(|w| w.message.clone()).unwrap_or_default()
                    )),
                }),
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => found.push(Failure {
                    reason: "ImagePullFailed",
                    message: clip(&waiting.and_then(|w| w.message.clone()).unwrap_or_default()),
                }),
                "CreateContainerConfigError" => found.push(Failure {
                    reason: "ConfigError",
                    message: clip(&waiting.and_then(|w| w.message.clone()).unwrap_or_default()),
                }),
                _ => {}
            }
        }
        for cs in st.init_container_statuses.iter().flatten() {
            let failed = cs
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| cs.state.as_ref().and_then(|s| s.terminated.as_ref()))
                .filter(|t| t.exit_code != 0);
            if let Some(t) = failed {
                found.push(Failure {
                    reason: "ModelSourceInvalid",
                    message: clip(&format!(
                        "fetching the model failed: {}",
                        t.message.clone().unwrap_or_default()
                    )),
                });
            }
        }
    }
    let rank = |r: &str| match r {
        "ModelSourceInvalid" => 0,
        "ModelLoadFailed" => 1,
        "OutOfMemory" => 2,
        "InsufficientGPU" => 3,
        "Unschedulable" => 4,
        "ImagePullFailed" => 5,
        "ConfigError" => 6,
        _ => 7,
    };
    found.sort_by_key(|f| rank(f.reason));
    found.into_iter().next()
}

/// Replica counts of the worker Deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Wanted.
    pub desired: i32,
    /// Ready (any revision).
    pub ready: i32,
    /// On the current pod template.
    pub updated: i32,
    /// All pods of every revision.
    pub total: i32,
}

/// Replica counts of a Deployment (zero when it does not exist yet).
pub fn replicas(d: Option<&Deployment>) -> Replicas {
    let Some(d) = d else {
        return Replicas::default();
    };
    let st = d.status.clone().unwrap_or_default();
    let fresh = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    Replicas {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: st.ready_replicas.unwrap_or(0),
        updated: if fresh {
            st.updated_replicas.unwrap_or(0)
        } else {
            0
        },
        total: st.replicas.unwrap_or(0),
    }
}

/// A condition with `status` True/False.
pub fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// The deployment's three conditions from its replicas and failures.
/// `spec_problem` is a failure found before any pod exists (e.g. a missing
/// PersistentVolumeClaim).
pub fn deployment_conditions(
    r: Replicas,
    failure: Option<Failure>,
    spec_problem: Option<Failure>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let failure = spec_problem.or(failure);
    let rolled_out = r.updated >= r.desired && r.ready >= r.desired && r.total <= r.desired;
    // Ready counts workers of any revision: during a rollout the old ones
    // serve until the new ones are ready (Progressing says so).
    let ready = r.desired > 0 && r.ready >= r.desired;
    let ready_c = if ready {
        cond(
            "Ready",
            true,
            "WorkersReady",
            format!("{}/{} workers ready", r.ready, r.desired),
            generation,
        )
    } else if r.desired == 0 {
        cond(
            "Ready",
            false,
            "ScaledToZero",
            "no workers are wanted",
            generation,
        )
    } else if let Some(f) = &failure {
        cond("Ready", false, f.reason, f.message.clone(), generation)
    } else {
        cond(
            "Ready",
            false,
            "WorkersNotReady",
            format!(
                "{}/{} workers ready (model loading or warming up)",
                r.ready, r.desired
            ),
            generation,
        )
    };
    let progressing = !rolled_out && r.desired > 0 && failure.is_none();
    let prog_c = if progressing {
        cond(
            "Progressing",
            true,
            if r.updated < r.desired {
                "RollingUpdate"
            } else {
                "WaitingForWorkers"
            },
            format!(
                "{} of {} workers updated, {} ready",
                r.updated, r.desired, r.ready
            ),
            generation,
        )
    } else if let Some(f) = &failure {
        cond(
            "Progressing",
            false,
            f.reason,
            f.message.clone(),
            generation,
        )
    } else {
        cond(
            "Progressing",
            false,
            "RolloutComplete",
            "all workers are on the current spec",
            generation,
        )
    };
    let deg_c = match &failure {
        Some(f) => cond("Degraded", true, f.reason, f.message.clone(), generation),
        None => cond("Degraded", false, "AsExpected", "", generation),
    };
    vec![ready_c, prog_c, deg_c]
}

/// Carries `lastTransitionTime` over from `old` where a condition's status did
/// not change; stamps `now` where it did.
pub fn merge_transitions(new: &mut [Condition], old: &[Condition], now: &str) {
    for c in new.iter_mut() {
        match find_condition(old, &c.type_) {
            Some(o) if o.status == c.status => {
                c.last_transition_time = o
                    .last_transition_time
                    .clone()
                    .or_else(|| Some(now.to_string()))
            }
            _ => c.last_transition_time = Some(now.to_string()),
        }
    }
}

/// Whether the conditions differ in anything but their timestamps.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Condition> {
    new.iter()
        .filter(|c| {
            find_condition(old, &c.type_)
                .is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn insufficient_gpu_and_unschedulable() {
        let p = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}),
        );
        let f = pod_failure(
            std::slice::from_ref(&p),
            Some("nvidia.com/gpu"),
            Timestamp::now(),
        )
        .unwrap();
        assert_eq!(f.reason, "InsufficientGPU");
        assert_eq!(
            pod_failure(&[p], None, Timestamp::now()).unwrap().reason,
            "Unschedulable"
        );
    }

    #[test]
    fn model_load_failure_beats_crash_loop() {
        let p = pod(
            json!({"containerStatuses": [{"name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
            "lastState": {"terminated": {"exitCode": 3, "message": "model: no image.onnx"}}}]}),
        );
        let f = pod_failure(&[p], None, Timestamp::now()).unwrap();
        assert_eq!(
            (f.reason, f.message.as_str()),
            ("ModelLoadFailed", "model: no image.onnx")
        );
        let p = pod(
            json!({"containerStatuses": [{"name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1}}}]}),
        );
        assert_eq!(
            pod_failure(&[p], None, Timestamp::now()).unwrap().reason,
            "CrashLoop"
        );
        assert!(pod_failure(&[pod(json!({"phase": "Running"}))], None, Timestamp::now()).is_none());
    }

    #[test]
    fn out_of_memory_beats_crash_loop_and_fades_once_back() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let oom = |finished: &str, ready: bool, waiting: bool| {
            let mut c = json!({
                "name": "worker", "ready": ready, "restartCount": 3, "image": "w", "imageID": "",
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": finished}},
                "state": {"running": {}},
            });
            if waiting {
                c["state"] =
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}});
            }
            pod(json!({"containerStatuses": [c]}))
        };
        let f = pod_failure(&[oom("2026-12-03T11:59:00Z", false, true)], None, now).unwrap();
        assert_eq!(f.reason, "OutOfMemory");
        assert!(f.message.contains("memory limit") && f.message.contains("3 times"));
        // Back and ready: still shown for ten minutes, then not.
        let back = oom("2026-12-03T11:55:00Z", true, false);
        assert_eq!(
            pod_failure(std::slice::from_ref(&back), None, now)
                .unwrap()
                .reason,
            "OutOfMemory"
        );
        let long_ago = oom("2026-12-03T11:40:00Z", true, false);
        assert!(pod_failure(&[long_ago], None, now).is_none());
        // Not ready after an old kill: still the reason.
        let stuck = oom("2026-12-03T11:40:00Z", false, true);
        assert_eq!(
            pod_failure(&[stuck], None, now).unwrap().reason,
            "OutOfMemory"
        );
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        find_condition(cs, t).unwrap()
    }

    #[test]
    fn conditions() {
        let r = Replicas {
            desired: 2,
            ready: 2,
            updated: 2,
            total: 2,
        };
        let cs = deployment_conditions(r, None, None, Some(3));
        assert!(
            get(&cs, "Ready").is_true()
                && !get(&cs, "Progressing").is_true()
                && !get(&cs, "Degraded").is_true()
        );
        assert_eq!(get(&cs, "Ready").observed_generation, Some(3));
        // Mid-rollout: old workers still serve.
        let r = Replicas {
            desired: 2,
            ready: 2,
            updated: 1,
            total: 3,
        };
        let cs = deployment_conditions(r, None, None, None);
        assert!(get(&cs, "Ready").is_true() && get(&cs, "Progressing").is_true());
        assert_eq!(get(&cs, "Progressing").reason, "RollingUpdate");
        // Nothing ready, a failure: not ready with that reason, degraded.
        let f = Failure {
            reason: "InsufficientGPU",
            message: "m".into(),
        };
        let r = Replicas {
            desired: 1,
            ready: 0,
            updated: 1,
            total: 1,
        };
        let cs = deployment_conditions(r, Some(f), None, None);
        assert_eq!(get(&cs, "Ready").reason, "InsufficientGPU");
        assert!(!get(&cs, "Ready").is_true() && get(&cs, "Degraded").is_true());
        let cs = deployment_conditions(Replicas::default(), None, None, None);
        assert_eq!(get(&cs, "Ready").reason, "ScaledToZero");
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let r = Replicas {
            desired: 1,
            ready: 1,
            updated: 1,
            total: 1,
        };
        let mut old = deployment_conditions(r, None, None, None);
        merge_transitions(&mut old, &[], "t0");
        let mut new = deployment_conditions(r, None, None, None);
        merge_transitions(&mut new, &old, "t1");
        assert!(new
            .iter()
            .all(|c| c.last_transition_time.as_deref() == Some("t0")));
        assert!(transitions(&old, &new).is_empty());
        let mut down = deployment_conditions(Replicas { ready: 0, ..r }, None, None, None);
        merge_transitions(&mut down, &new, "t2");
        assert_eq!(
            get(&down, "Ready").last_transition_time.as_deref(),
            Some("t2")
        );
        assert_eq!(
            transitions(&new, &down)
                .iter()
                .map(|c| c.type_.as_str())
                .collect::<Vec<_>>(),
            ["Ready", "Progressing"]
        );
    }
}
