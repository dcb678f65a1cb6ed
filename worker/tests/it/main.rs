//! The worker's integration tests, in one binary: the scoring API against the
//! TEST MODEL and the Python reference ([`api`]), and the export of the real
//! architecture ([`arch_model`]); shared set-up in [`common`]. The
//! architecture tests take [`common::exclusive`] for their whole run.

mod api;
mod arch_model;
mod common;
