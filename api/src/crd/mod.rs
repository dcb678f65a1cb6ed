//! The Kubernetes custom resources of medembed, group `medembed.io`, version
//! `v1alpha1` (feature `k8s`):
//!
//! - [`EmbeddingEndpoint`]: a stable scoring URL with its auth mode, the
//!   traffic split across its deployments, mirrored traffic, request limits and
//!   the default quota of its clients (the managed service's "online
//!   endpoint");
//! - [`EmbeddingDeployment`]: one model served by a set of GPU workers behind
//!   an endpoint (the managed service's "deployment");
//! - [`EmbeddingClient`]: a tenant of the gateway: the endpoints it may call,
//!   how it authenticates, and its quota.
//!
//! [`credentials`] is the document the operator publishes for the gateway
//! (key hashes and key sets, so the gateway reads no tenant Secret).
//!
//! The types are the single source of the CRD YAML (`medembed-operator
//! crdgen`): doc comments become the schema's descriptions, which is what
//! `kubectl explain` shows, and the CEL rules (`x-kubernetes-validations`) make
//! the API server refuse inconsistent specs before any controller sees them.

// `#[kube(printcolumn(type_ = "string", ...), printcolumn(type_ = "string", ...))]`
// repeats the same key in different columns, which clippy takes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod client;
mod common;
pub mod credentials;
mod deployment;
mod endpoint;

pub use client::*;
pub use common::*;
pub use deployment::*;
pub use endpoint::*;

/// The API group of medembed's resources.
pub const GROUP: &str = "medembed.io";
/// The API version of medembed's resources.
pub const VERSION: &str = "v1alpha1";

/// An API for namespaced resources of kind `K` in `namespace`, or in every
/// namespace when `None` (the operator's and the gateway's watch scope).
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}
