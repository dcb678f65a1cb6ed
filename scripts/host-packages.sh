#!/usr/bin/env bash
# Installs (once; idempotent) Debian packages on this host. Without
# arguments, those the tests use: redis-server, for the gateway's
# shared-quota tests against a real Redis (scripts/test.sh runs it first; run
# it by hand to prepare a machine). With arguments, those packages
# (the benchmarks: nginx-light, wrk).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

packages=("$@")
[ ${#packages[@]} -eq 0 ] && packages=(redis-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

log "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
