//! The worker's integration tests, in one binary: the scoring API against the
//! TEST MODEL and the Python reference ([`api`]), the export of the real
//! architecture ([`arch_model`]), and attacks on a worker ([`hardening`]);
//! shared set-up in [`common`]. The architecture tests and the memory test
//! take [`common::exclusive`] for their whole run.

mod api;
mod arch_model;
mod common;
mod hardening;
