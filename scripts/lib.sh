# Shared helpers for the repo's scripts. Source it; do not run it.
#
# Everything expensive (Python environments, ONNX Runtime, generated models) is
# cached outside the repository under $MEDEMBED_CACHE, keyed by a hash of its
# inputs, so a fresh clone reuses it and a change of inputs rebuilds it.

set -euo pipefail

MEDEMBED_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MEDEMBED_CACHE="${MEDEMBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/medembed}"
mkdir -p "$MEDEMBED_CACHE"

log() { printf '\033[1m[medembed]\033[0m %s\n' "$*" >&2; }

# hash_of FILE... : short content hash of the given files (their bytes, in order).
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# with_lock NAME CMD... : run CMD under an exclusive lock (parallel test runs
# and scripts may race to build the same cache entry).
with_lock() {
  local name="$1"; shift
  mkdir -p "$MEDEMBED_CACHE/locks"
  (
    flock 9
    "$@"
  ) 9>"$MEDEMBED_CACHE/locks/$name.lock"
}
