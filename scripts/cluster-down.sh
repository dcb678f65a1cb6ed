#!/usr/bin/env bash
# Stops a control plane started by scripts/cluster-up.sh and removes its state
# directory (kept with --keep, e.g. to read logs/). Only the processes recorded
# in DIR/pids are signalled, in stages: watchdog, scheduler and
# controller-manager, then kube-apiserver, then etcd; each gets SIGTERM and, 5 s
# later, SIGKILL (a graceful stop takes ~1-2 s in all). --fast sends SIGKILL at
# once.
#
#   scripts/cluster-down.sh [--keep] [--fast] [DIR]   # DIR defaults to $MEDEMBED_CLUSTER_DIR
set -euo pipefail
keep=0 fast=0
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --fast) fast=1; shift ;;
    *) break ;;
  esac
done
dir="${1:-${MEDEMBED_CLUSTER_DIR:-}}"
[ -n "$dir" ] && [ -d "$dir" ] || { echo "usage: $0 [--keep] [--fast] DIR (no such state dir: '$dir')" >&2; exit 2; }

# Alive and not a zombie (reparented processes may wait a while to be reaped).
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
pid_of() { awk -v n="$1" '$1==n{print $2}' "$pids_file"; }
stop_stage() { # stop_stage NAME...: signal them together, wait, escalate
  local pids=() name pid
  for name in "$@"; do
    pid="$(pid_of "$name")"
    [ -n "$pid" ] && [ "$pid" != "$$" ] && running "$pid" || continue
    if [ "$fast" = 1 ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
    pids+=("$pid")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local left
  for _ in $(seq 50); do
    left=()
    for pid in "${pids[@]}"; do running "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

if [ -f "$dir/pids" ]; then
  pids_file="$dir/pids.stopping"
  mv "$dir/pids" "$pids_file" # tells the watchdog to stand down
  stop_stage watchdog kube-scheduler kube-controller-manager
  stop_stage kube-apiserver
  stop_stage etcd
  rm -f "$pids_file"
fi
[ "$keep" = 1 ] || rm -rf "$dir"
