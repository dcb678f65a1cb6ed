//! The operator's integration tests, in one binary: the committed CRDs and
//! RBAC ([`crds`]), refusals and failure conditions ([`failures`]), leader
//! election ([`leader`]), a deployment's life ([`lifecycle`]), tenant
//! isolation ([`tenancy`]), worker TLS ([`worker_tls`]) and the
//! ignored benchmark ([`bench`]); shared set-up in [`common`]. Tests that
//! start a control plane take [`common::exclusive`] for their whole run.

mod bench;
mod common;
mod crds;
mod failures;
mod leader;
mod lifecycle;
mod tenancy;
mod worker_tls;
