//! The test support's control plane and node agent against a real API
//! server, in one test binary: Deployments become local processes with
//! EndpointSlices ([`deployment`]), Helm installs charts ([`helm`]),
//! readiness and restarts ([`probes`]), RBAC, mounted ConfigMaps/Secrets and
//! service-account kubeconfigs ([`rbac`]), GPU scheduling ([`scheduling`]).

mod common;
mod deployment;
mod helm;
mod probes;
mod rbac;
mod scheduling;
