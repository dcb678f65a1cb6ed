//! Choose: which deployment answers, and whether a copy goes to the mirror.
//!
//! The client may pin a deployment with `azureml-model-deployment` (as with
//! the managed service); a name the endpoint does not have is a 404. Else
//! the endpoint's traffic weights decide at random; an endpoint without a
//! split sends everything to its only live deployment (the mirror is not
//! live), and with none or several it routes nowhere (503).
//!
//! Mirroring: an unpinned request is copied to the endpoint's mirror
//! deployment with the configured probability. The copy runs in the
//! background with its own time budget, never delays or changes the live
//! answer, and is skipped when too many copies are in flight already. Its
//! outcome is counted next to the live one's (`Mirror::live_outcome`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::proxy::Outgoing;
use crate::server::Gateway;
use crate::stages::forward;
use crate::table::{Deployment, Endpoint};
use crate::trace::TraceContext;

/// The deployment the client pinned, if any.
pub fn pinned(headers: &HeaderMap) -> Option<String> {
    headers
        .get(medembed_api::DEPLOYMENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The deployment that answers: the pinned one, else one drawn by weight.
pub fn deployment(
    endpoint: &Endpoint,
    pinned: Option<&str>,
) -> Result<Arc<Deployment>, GatewayError> {
    let name = match pinned {
        Some(name) => {
            return endpoint
                .deployments
                .get(name)
                .cloned()
                .ok_or(GatewayError::DeploymentNotFound)
        }
        None => live_deployment(endpoint, |total| rand::rng().random_range(0..total))?,
    };
    endpoint
        .deployments
        .get(name)
        .cloned()
        .ok_or(GatewayError::UnknownDeployment)
}

/// The live deployment's name; `roll(total)` draws a number below `total`.
fn live_deployment(
    endpoint: &Endpoint,
    roll: impl FnOnce(u32) -> u32,
) -> Result<&str, GatewayError> {
    let total: u32 = endpoint.traffic.iter().map(|(_, w)| *w).sum();
    if total == 0 {
        // No split: the only deployment taking live traffic, if there is one.
        let mut live = endpoint
            .deployments
            .keys()
            .filter(|d| endpoint.mirror.as_ref().is_none_or(|(m, _)| m != *d));
        return match (live.next(), live.next()) {
            (Some(one), None) => Ok(one.as_str()),
            _ => Err(GatewayError::NoTraffic),
        };
    }
    Ok(by_weight(&endpoint.traffic, roll(total)))
}

/// The deployment whose share of the weights holds `x` (below their sum).
fn by_weight(traffic: &[(String, u32)], mut x: u32) -> &str {
    for (d, w) in traffic {
        if x < *w {
            return d;
        }
        x -= w;
    }
    traffic.first().map_or("", |(d, _)| d)
}

/// Whether a request is mirrored at `percent`, given a roll in `0..100`.
fn sampled(percent: u32, roll: u32) -> bool {
    roll < percent
}

/// The live half of a mirrored request: send it the live outcome.
#[derive(Debug)]
pub struct Mirror(oneshot::Sender<(Option<StatusCode>, Duration)>);

impl Mirror {
    /// Reports the live call's status (`None`: no answer) and duration.
    pub fn live_outcome(self, status: Option<StatusCode>, took: Duration) {
        let _ = self.0.send((status, took));
    }
}

/// Starts a mirrored copy of `out` when the endpoint mirrors, the request
/// is not pinned, the dice say so and a mirror slot is free.
pub fn mirror(
    gw: &Arc<Gateway>,
    endpoint: &Arc<Endpoint>,
    out: &Outgoing,
    pinned: Option<&str>,
) -> Option<Mirror> {
    if pinned.is_some() {
        return None;
    }
    let (shadow_name, pct) = endpoint.mirror.as_ref()?;
    if !sampled(*pct, rand::rng().random_range(0..100)) {
        return None;
    }
    let shadow = endpoint.deployments.get(shadow_name)?.clone();
    let Ok(permit) = gw.mirror_slots.clone().try_acquire_owned() else {
        gw.metrics
            .mirror
            .with_label_values(&[&endpoint.id, shadow_name, "-", "skipped"])
            .inc();
        return None;
    };
    let (tx, rx) = oneshot::channel::<(Option<StatusCode>, Duration)>();
    let gw = gw.clone();
    let endpoint = endpoint.clone();
    let mut copy = out.clone();
    // The shadow gets the same budget, counted from now, and its own span.
    copy.deadline = Instant::now() + endpoint.timeout;
    copy.traceparent = TraceContext::from_header(Some(&out.traceparent)).header();
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let penalty = Duration::from_millis(gw.config.penalty_ms);
        let result =
            forward::call(&gw.http, &gw.metrics, &endpoint.id, &shadow, &copy, penalty).await;
        let shadow_status = match result {
            Ok(a) => {
                let status = a.response.status();
                // Read and discard the answer (keeps the connection reusable).
                let _ =
                    tokio::time::timeout_at(copy.deadline, a.response.into_body().collect()).await;
                status.as_str().to_string()
            }
            Err(_) => "error".to_string(),
        };
        let shadow_time = started.elapsed();
        let (live_status, live_time) = match rx.await {
            Ok((Some(s), t)) => (s.as_str().to_string(), Some(t)),
            Ok((None, t)) => ("error".to_string(), Some(t)),
            Err(_) => ("cancelled".to_string(), None),
        };
        let m = &gw.metrics;
        m.mirror
            .with_label_values(&[&endpoint.id, &shadow.name, &live_status, &shadow_status])
            .inc();
        m.mirror_duration
            .with_label_values(&[&endpoint.id, &shadow.name, "shadow"])
            .observe(shadow_time.as_secs_f64());
        if let Some(t) = live_time {
            m.mirror_duration
                .with_label_values(&[&endpoint.id, &shadow.name, "live"])
                .observe(t.as_secs_f64());
        }
    });
    Some(Mirror(tx))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use http::HeaderValue;

    use crate::stages::testing;

    fn split(traffic: &[(&str, u32)], mirror: Option<(&str, u32)>) -> Endpoint {
        let mut names: Vec<&str> = traffic.iter().map(|(d, _)| *d).collect();
        names.extend(mirror.map(|(m, _)| m));
        testing::endpoint("e", |e| {
            e.traffic = traffic.iter().map(|(d, w)| (d.to_string(), *w)).collect();
            e.mirror = mirror.map(|(m, p)| (m.to_string(), p));
            e.deployments = names
                .iter()
                .map(|n| (n.to_string(), testing::deployment(n, Vec::new())))
                .collect();
        })
    }

    #[test]
    fn weights_split_the_range_in_order() {
        let t: Vec<(String, u32)> = vec![("blue".into(), 90), ("green".into(), 10)];
        assert_eq!(by_weight(&t, 0), "blue");
        assert_eq!(by_weight(&t, 89), "blue");
        assert_eq!(by_weight(&t, 90), "green");
        assert_eq!(by_weight(&t, 99), "green");
        let e = split(&[("blue", 90), ("green", 10)], None);
        assert_eq!(live_deployment(&e, |_| 95).unwrap(), "green");
        assert_eq!(live_deployment(&e, |total| total - 1).unwrap(), "green");
    }

    #[test]
    fn weights_hold_over_many_draws() {
        let e = split(&[("blue", 75), ("green", 25)], None);
        let mut seen: HashMap<String, u32> = HashMap::new();
        for _ in 0..4000 {
            *seen
                .entry(deployment(&e, None).unwrap().name.clone())
                .or_default() += 1;
        }
        // Binomial(4000, 0.25): sd 27; accept within 5 sd.
        let green = f64::from(seen["green"]);
        assert!((green - 1000.0).abs() < 140.0, "green {green}");
    }

    #[test]
    fn the_pin_header_wins_and_must_name_a_deployment() {
        let e = split(&[("blue", 100)], Some(("shadow", 10)));
        assert_eq!(deployment(&e, Some("blue")).unwrap().name, "blue");
        // Even one taking no live traffic (the mirror).
        assert_eq!(deployment(&e, Some("shadow")).unwrap().name, "shadow");
        let err = deployment(&e, Some("nosuch")).unwrap_err();
        assert_eq!(err, GatewayError::DeploymentNotFound);
        assert_eq!(err.status(), 404);
        let mut h = HeaderMap::new();
        assert_eq!(pinned(&h), None);
        h.insert(
            medembed_api::DEPLOYMENT_HEADER,
            HeaderValue::from_static("green"),
        );
        assert_eq!(pinned(&h).as_deref(), Some("green"));
    }

    #[test]
    fn without_a_split_the_only_live_deployment_or_no_traffic() {
        // One deployment besides the mirror: it takes everything.
        let e = testing::endpoint("e", |x| {
            x.mirror = Some(("shadow".into(), 10));
            x.deployments = ["blue", "shadow"]
                .iter()
                .map(|n| (n.to_string(), testing::deployment(n, Vec::new())))
                .collect();
        });
        assert_eq!(deployment(&e, None).unwrap().name, "blue");
        // Two live ones and no split, or none at all: nowhere.
        let two = testing::endpoint("e", |x| {
            x.deployments = ["blue", "green"]
                .iter()
                .map(|n| (n.to_string(), testing::deployment(n, Vec::new())))
                .collect();
        });
        let err = deployment(&two, None).unwrap_err();
        assert_eq!(err, GatewayError::NoTraffic);
        assert_eq!(err.status(), 503);
        let none = testing::endpoint("e", |_| {});
        assert_eq!(
            deployment(&none, None).unwrap_err(),
            GatewayError::NoTraffic
        );
    }

    #[test]
    fn mirror_sampling() {
        assert!(!(0..100).any(|r| sampled(0, r)));
        assert!((0..100).all(|r| sampled(100, r)));
        assert_eq!((0..100).filter(|r| sampled(30, *r)).count(), 30);
    }

    #[tokio::test]
    async fn mirror_only_unpinned_sampled_and_with_a_free_slot() {
        let gw = testing::gateway();
        let out = testing::outgoing();
        let always = Arc::new(split(&[("blue", 100)], Some(("shadow", 100))));
        let never = Arc::new(split(&[("blue", 100)], Some(("shadow", 0))));
        let plain = Arc::new(split(&[("blue", 100)], None));
        assert!(mirror(&gw, &plain, &out, None).is_none());
        assert!(mirror(&gw, &never, &out, None).is_none());
        assert!(mirror(&gw, &always, &out, Some("blue")).is_none());
        // The shadow has no workers: the copy fails quietly, and the live
        // outcome is counted next to it.
        let m = mirror(&gw, &always, &out, None).unwrap();
        m.live_outcome(Some(StatusCode::OK), Duration::from_millis(5));
        // No free slot: skipped, and counted as such.
        let held = gw
            .mirror_slots
            .clone()
            .acquire_many_owned(gw.mirror_slots.available_permits() as u32)
            .await
            .unwrap();
        assert!(mirror(&gw, &always, &out, None).is_none());
        drop(held);
        let text = String::from_utf8(gw.metrics.render()).unwrap();
        assert!(text.contains("shadow_status=\"skipped\""), "{text}");
        let t = Instant::now();
        while !String::from_utf8(gw.metrics.render())
            .unwrap()
            .contains("live_status=\"200\"")
        {
            assert!(t.elapsed() < Duration::from_secs(5), "mirror not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = String::from_utf8(gw.metrics.render()).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("medembed_gateway_mirror_requests_total")
                    && l.contains("live_status=\"200\"")
                    && l.contains("shadow_status=\"error\"")),
            "{text}"
        );
    }
}
