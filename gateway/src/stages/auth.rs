//! Auth: who is calling, and what follows from it for the rest of the path.
//!
//! [`crate::auth`] verifies the key or token and finds the client (401 when
//! it cannot, 403 when the client may not call the endpoint). This stage
//! turns that into a [`Caller`]: the name that goes into labels and audit
//! lines, the quota in force (the client's own, else the endpoint's default
//! for its clients, else none), whether refusals are enforced or only
//! counted (dry run), and the key under which the client's quota state is
//! kept.

use http::{header, HeaderMap};

use crate::auth::{self, JwksCache, Principal};
use crate::error::GatewayError;
use crate::table::{ClientQuota, Endpoint, Table};

/// The authenticated caller of one request, as the later stages need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The client's name for labels and audit lines (`anonymous` on an
    /// unauthenticated endpoint). Never a credential.
    pub id: String,
    /// The quota in force.
    pub quota: ClientQuota,
    /// Count quota refusals without enforcing them.
    pub dry_run: bool,
    /// Where the client's quota state is kept: the client's own quota is
    /// shared by all its endpoints; an endpoint's default quota is per
    /// endpoint.
    pub quota_key: String,
}

/// Authenticates the request's `Authorization` header for `endpoint`.
/// `dry_run_all` is the gateway-wide dry-run switch.
pub async fn caller(
    jwks: &JwksCache,
    table: &Table,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    dry_run_all: bool,
) -> Result<Caller, GatewayError> {
    let principal = auth::authenticate(table, endpoint, headers.get(header::AUTHORIZATION), jwks)
        .await
        .map_err(GatewayError::Auth)?;
    Ok(Caller::of(&principal, endpoint, dry_run_all))
}

impl Caller {
    /// What an authenticated principal means on `endpoint`.
    pub fn of(principal: &Principal, endpoint: &Endpoint, dry_run_all: bool) -> Self {
        let client = principal.client.as_ref();
        Caller {
            id: principal.id().to_string(),
            quota: client
                .and_then(|c| c.quota.clone())
                .or_else(|| endpoint.default_quota.clone())
                .unwrap_or_default(),
            dry_run: dry_run_all || client.is_some_and(|c| c.dry_run),
            quota_key: match client {
                Some(c) if c.quota.is_some() => c.id.clone(),
                Some(c) => format!("{}@{}", c.id, endpoint.id),
                None => format!("anonymous@{}", endpoint.id),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::time::Duration;

    use http::HeaderValue;

    use crate::auth::AuthError;
    use crate::stages::testing;
    use crate::table::AuthMode;

    const KEY: &str = "k-stage-auth-0123456789";

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    fn quota(rpm: u64) -> ClientQuota {
        ClientQuota {
            requests_per_minute: Some(rpm),
            ..Default::default()
        }
    }

    fn setup() -> (Table, JwksCache) {
        let chest = testing::endpoint("chest", |e| e.default_quota = Some(quota(5)));
        let brain = testing::endpoint("brain", |_| {});
        let open = testing::endpoint("open", |e| e.auth = AuthMode::Unauthenticated);
        let own = testing::client("own", "own-key-0123456789", &["chest"], Some(quota(9)));
        let mut shared = testing::client("shared", KEY, &["chest", "brain"], None);
        shared.dry_run = true;
        let table = Table::new(vec![chest, brain, open], vec![own, shared]);
        let jwks = JwksCache::new(Duration::from_secs(1), None).unwrap();
        (table, jwks)
    }

    async fn call(
        t: &Table,
        j: &JwksCache,
        ep: &str,
        h: &HeaderMap,
    ) -> Result<Caller, GatewayError> {
        let e = t.endpoints.iter().find(|e| e.id == ep).unwrap();
        caller(j, t, e, h, false).await
    }

    #[tokio::test]
    async fn key_outcomes_become_gateway_errors() {
        let (t, j) = setup();
        let e = call(&t, &j, "chest", &HeaderMap::new()).await.unwrap_err();
        assert_eq!(e, GatewayError::Auth(AuthError::Missing));
        assert_eq!(e.status(), 401);
        let e = call(&t, &j, "chest", &bearer("not-a-key"))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::Auth(AuthError::BadKey));
        assert_eq!(e.reason(), "invalid_key");
        // A known client not allowed on the endpoint.
        let e = call(&t, &j, "brain", &bearer("own-key-0123456789"))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::Auth(AuthError::Forbidden));
        assert_eq!(e.status(), 403);
        // The key never appears in the error.
        assert!(!format!("{e:?} {e}").contains("own-key"));
    }

    #[tokio::test]
    async fn the_callers_quota_dry_run_and_quota_key() {
        let (t, j) = setup();
        // The client's own quota, shared across its endpoints.
        let c = call(&t, &j, "chest", &bearer("own-key-0123456789"))
            .await
            .unwrap();
        assert_eq!(c.id, "own");
        assert_eq!(c.quota, quota(9));
        assert_eq!(c.quota_key, "own");
        assert!(!c.dry_run);
        // No quota of its own: the endpoint's default, kept per endpoint.
        let c = call(&t, &j, "chest", &bearer(KEY)).await.unwrap();
        assert_eq!(c.quota, quota(5));
        assert_eq!(c.quota_key, "shared@chest");
        assert!(c.dry_run);
        // Neither: no limits.
        let c = call(&t, &j, "brain", &bearer(KEY)).await.unwrap();
        assert_eq!(c.quota, ClientQuota::default());
        assert_eq!(c.quota_key, "shared@brain");
        // Unauthenticated endpoint: anonymous, whatever is sent.
        let c = call(&t, &j, "open", &bearer("anything")).await.unwrap();
        assert_eq!(c.id, "anonymous");
        assert_eq!(c.quota_key, "anonymous@open");
        // The gateway-wide switch.
        let e = t.endpoints.iter().find(|e| e.id == "chest").unwrap();
        let c = caller(&j, &t, e, &bearer("own-key-0123456789"), true)
            .await
            .unwrap();
        assert!(c.dry_run);
    }
}
