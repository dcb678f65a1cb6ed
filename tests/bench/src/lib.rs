//! Pieces the benchmark binaries share: deterministic test images and request
//! bodies (`images`), a closed-loop HTTP load generator and answer checks
//! (`load`), and server processes with what `/proc` says about them (`procs`).
//!
//! They live in a library so that `bench-worker` and `soak` use the same
//! images, the same answer checks and the same `/proc` readings.

pub mod images;
pub mod load;
pub mod procs;
