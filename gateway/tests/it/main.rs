//! The gateway's integration tests, in one binary: auth ([`auth`]), the
//! front door's limits (slow headers, budgets, memory under attack:
//! [`front`]), the
//! managed endpoint's published clients ([`clients`]), discovery from a real
//! control plane ([`kubernetes`]), quotas ([`quota`]) and the Redis-backed
//! shared quota ([`shared_quota`]), routing, balancing and resilience
//! ([`routing`]), TLS ([`tls`]), real worker processes ([`workers`]) and
//! TLS from the gateway to them ([`worker_tls`]);
//! shared set-up in [`common`]. Tests that start a control plane or worker
//! processes take [`common::exclusive`] for their whole run.

mod auth;
mod clients;
mod common;
mod front;
mod kubernetes;
mod quota;
mod routing;
mod shared_quota;
mod tls;
mod worker_tls;
mod workers;
