//! Bounded waiting: every wait in tests has a timeout and a description, so a
//! stuck test fails with a message instead of hanging.

use std::future::Future;
use std::time::Duration;

use crate::{Error, Result};

/// Polls `check` every `every` until it returns `Some`, or fails after `limit`.
/// Errors from `check` are treated as "not yet" (the last one is reported).
pub async fn until<T, E, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e.to_string()),
        }
        if tokio::time::Instant::now() >= deadline {
            let what = match last_err {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_string(),
            };
            return Err(Error::Timeout { what, after: limit });
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `fut` with a time bound.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout {
            what: what.to_string(),
            after: limit,
        })
}
