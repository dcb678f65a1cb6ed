//! Leader election on a `coordination.k8s.io/v1` Lease, so that two or more
//! replicas are safe: only the holder reconciles.
//!
//! The algorithm is client-go's `leaderelection`: a replica takes the Lease
//! when it is absent, already its own, or not renewed for
//! `leaseDurationSeconds`; every write carries the `resourceVersion` it read,
//! so of two replicas racing for an expired Lease exactly one wins (the other
//! gets 409 Conflict). The holder renews every `renew` period and steps down
//! (stops its controllers) when it cannot renew before the Lease would
//! expire, which is before any other replica may take it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// One replica's view of the Lease.
#[derive(Clone, derive_more::Debug)]
pub struct LeaderElector {
    #[debug(skip)]
    api: Api<Lease>,
    #[debug("{name:?}")]
    name: String,
    identity: String,
    #[debug(skip)]
    duration: Duration,
}

/// Whether a lease held by someone else has expired at `now`.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() - renew.0.as_second() > secs
}

impl LeaderElector {
    /// An elector for Lease `namespace/name` as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Tries once to take or renew the Lease; `Ok(true)` when this replica
    /// holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let pp = PostParams::default();
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&pp, &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                if !mine && !expired(&spec, now) && spec.holder_identity.is_some() {
                    return Ok(false);
                }
                let mut new = spec.clone();
                if !mine {
                    new.acquire_time = Some(MicroTime(now));
                    new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                new.holder_identity = Some(self.identity.clone());
                new.lease_duration_seconds = Some(secs);
                new.renew_time = Some(MicroTime(now));
                lease.spec = Some(new);
                // `replace` sends the resourceVersion read above: a concurrent
                // writer makes this fail with 409 instead of both winning.
                match self.api.replace(&self.name, &pp, &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the Lease up (on clean shutdown), so another replica takes over
    /// at once instead of after the Lease expires.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                lease.spec = Some(LeaseSpec {
                    holder_identity: None,
                    renew_time: None,
                    acquire_time: None,
                    ..spec
                });
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}
