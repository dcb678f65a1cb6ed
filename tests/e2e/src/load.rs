//! Steady load through the gateway while something happens to the system:
//! the end-to-end tests' and chaos cases' measure of "no request failed".
//!
//! [`Load`] runs `clients` closed loops, each posting the API brief's
//! image-and-text request, and **checks every answer**: status 200 and the
//! live service's shape (one object per row with one 1024-d image vector, one
//! 1024-d text vector and a scaling factor). Anything else, a transport error
//! included, is a failure, kept with its status and (clipped) body.
//!
//! The load reaches the gateway as a Service's clients do ([`Target`]):
//! either one pod's address, or the Service's ready endpoints, read from its
//! EndpointSlices every 200 ms as kube-proxy does and used in turn, so that a
//! rolled or lost gateway replica is followed the way real clients follow it.
//! When the API server cannot be read, the last endpoints are kept (as
//! kube-proxy keeps its rules).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;

use crate::BRIEF_IMAGE_AND_TEXT;

/// Where the load is sent.
pub enum Target {
    /// One URL (e.g. a gateway pod's scoring URL).
    Url(String),
    /// A Service's ready endpoints, as kube-proxy would balance them:
    /// `http://<endpoint>:<port><path>`.
    Service {
        /// EndpointSlices of the Service's namespace.
        slices: Box<Api<EndpointSlice>>,
        /// The Service's name.
        service: String,
        /// The pods' port.
        port: u16,
        /// The request path (e.g. `/endpoints/<ns>/<name>/score`).
        path: String,
    },
}

/// What one answer was.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The `azureml-model-deployment` header: the deployment that served it.
    pub deployment: Option<String>,
    /// The address the request went to.
    pub to: String,
    /// When it was answered, from the start of the load.
    pub at: Duration,
}

/// Continuous, checked load; see the module's doc.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<Vec<Answer>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Checks an answer to [`BRIEF_IMAGE_AND_TEXT`]: the live shape, one row.
pub fn check_brief_answer(v: &Value) -> Result<(), String> {
    let rows = v.as_array().ok_or("the answer is not a list of rows")?;
    if rows.len() != 1 {
        return Err(format!("{} rows for a one-row request", rows.len()));
    }
    for field in ["image_features", "text_features"] {
        let vs = rows[0][field]
            .as_array()
            .ok_or_else(|| format!("no {field}"))?;
        let ok = vs.len() == 1
            && vs[0].as_array().is_some_and(|x| {
                x.len() == 1024 && x.iter().all(|f| f.as_f64().is_some_and(f64::is_finite))
            });
        if !ok {
            return Err(format!("{field} is not one finite 1024-d vector"));
        }
    }
    if !rows[0]["scaling_factor"].is_number() {
        return Err("no scaling_factor".into());
    }
    Ok(())
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Follows a Service's ready endpoints (kube-proxy's view).
fn follow(
    slices: Api<EndpointSlice>,
    service: String,
    stop: Arc<AtomicBool>,
) -> (Arc<RwLock<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let ready = Arc::new(RwLock::new(Vec::new()));
    let out = ready.clone();
    let task = tokio::spawn(async move {
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
        while !stop.load(Ordering::Relaxed) {
            if let Ok(list) = slices.list(&lp).await {
                let mut ips: Vec<String> = list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                ips.sort();
                ips.dedup();
                *ready.write().unwrap_or_else(|e| e.into_inner()) = ips;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (out, task)
}

impl Load {
    /// Starts `clients` loops against `target` with `key` as the bearer key.
    pub fn start(target: Target, key: String, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut tasks = Vec::new();
        let pick: Arc<dyn Fn() -> Option<String> + Send + Sync> = match target {
            Target::Url(url) => Arc::new(move || Some(url.clone())),
            Target::Service {
                slices,
                service,
                port,
                path,
            } => {
                let (ready, task) = follow(*slices, service, stop.clone());
                tasks.push(task);
                let next = AtomicUsize::new(0);
                Arc::new(move || {
                    let ips = ready.read().unwrap_or_else(|e| e.into_inner());
                    if ips.is_empty() {
                        return None;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed) % ips.len();
                    Some(format!("http://{}:{port}{path}", ips[i]))
                })
            }
        };
        let began = Instant::now();
        for _ in 0..clients {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            let (http, key, pick) = (http.clone(), key.clone(), pick.clone());
            tasks.push(tokio::spawn(async move {
                // The first endpoints take a moment to be read.
                let mut waited = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(url) = pick() else {
                        waited += 1;
                        if waited > 50 {
                            failures
                                .lock()
                                .unwrap()
                                .push("no ready endpoint for the Service".into());
                            waited = 0;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(BRIEF_IMAGE_AND_TEXT)
                        .send()
                        .await;
                    let outcome = match r {
                        Ok(resp) if resp.status() == 200 => {
                            let deployment = resp
                                .headers()
                                .get("azureml-model-deployment")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            match resp.json::<Value>().await {
                                Ok(v) => check_brief_answer(&v).map(|()| deployment),
                                Err(e) => Err(format!("200 with an unreadable body: {e}")),
                            }
                        }
                        Ok(resp) => {
                            let s = resp.status();
                            let body = resp.text().await.unwrap_or_default();
                            Err(format!("{s}: {}", clip(&body)))
                        }
                        Err(e) => Err(format!("transport: {e}")),
                    };
                    match outcome {
                        Ok(deployment) => ok.lock().unwrap().push(Answer {
                            deployment,
                            to: url,
                            at: began.elapsed(),
                        }),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?} {url}: {e}", began.elapsed())),
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Answers so far.
    pub fn ok_count(&self) -> usize {
        self.ok.lock().unwrap().len()
    }

    /// Failures so far.
    pub fn failure_count(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    /// Waits until `n` more answers than now arrived (or `limit` passed).
    pub async fn more(&self, n: usize, limit: Duration) {
        let target = self.ok_count() + n;
        let t = Instant::now();
        while self.ok_count() < target && t.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the load; returns (answers, failures).
    pub async fn finish(self) -> (Vec<Answer>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let ok = std::mem::take(&mut *self.ok.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (ok, failures)
    }
}

/// Stops `load` and asserts that nothing failed; prints and returns the
/// answers. `what` names the case in messages.
pub async fn assert_no_failures(load: Load, what: &str) -> Vec<Answer> {
    let (ok, failures) = load.finish().await;
    eprintln!(
        "{what}: {} requests answered and checked, {} failed",
        ok.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failures.len(),
        failures.len() + ok.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(!ok.is_empty(), "{what}: no request was answered");
    ok
}

/// Runs `step` while a 4-client load goes to `target`, with 10 answers
/// before and 20 after it; asserts zero failed requests.
pub async fn under_load<F, Fut>(target: Target, key: &str, what: &str, step: F) -> Vec<Answer>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let load = Load::start(target, key.to_string(), 4);
    load.more(10, Duration::from_secs(60)).await;
    step().await;
    load.more(20, Duration::from_secs(60)).await;
    assert_no_failures(load, what).await
}
