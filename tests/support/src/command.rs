//! Running a program to its end from async tests (killed if the test drops
//! the future, e.g. on a timeout).

use std::ffi::OsStr;
use std::path::Path;

/// Runs `program` with `args` and returns its standard output; fails with
/// its standard error when it exits unsuccessfully.
pub async fn output(program: &Path, args: &[impl AsRef<OsStr> + std::fmt::Debug]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
