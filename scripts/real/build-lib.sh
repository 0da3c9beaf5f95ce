# shellcheck shell=bash
# shellcheck disable=SC2154  # cache_root and the row arrays are the caller's
# What scripts/real-clusters.sh build and scripts/engines.sh build share: sourced by both.
# Callers set cache_root and keep built_rows ("binary version path"), time_rows ("component
# seconds result") and failed (component names).

# fmt_duration SECONDS: 75 -> 1m15s.
fmt_duration() {
  local s="$1"
  if ((s >= 60)); then
    printf '%dm%02ds' $((s / 60)) $((s % 60))
  else
    printf '%ds' "${s}"
  fi
}

# gorun ARGS...: the go command, niced.
gorun() {
  nice -n 19 go "$@"
}

# module_json MODULE@VERSION FIELD: downloads a module (from a throwaway directory, outside any
# go.mod); prints FIELD (Dir, GoMod) of `go mod download -json`, or fails with the proxy's error.
module_json() {
  local scratch out
  scratch="$(mktemp -d)"
  out="$(cd "${scratch}" && GOFLAGS=-mod=mod gorun mod download -json "$1")" || true
  rm -rf "${scratch}"
  python3 -c '
import json, sys
d = json.loads(sys.argv[1] or "{}")
if d.get(sys.argv[3]) and not d.get("Error"):
    print(d[sys.argv[3]])
else:
    sys.exit("go mod download %s: %s" % (sys.argv[2], d.get("Error", "no " + sys.argv[3])))
' "${out}" "$1" "$2"
}

# build_lock WHAT: one build at a time per cache (real-clusters.sh and engines.sh share Go's
# caches and the machine); says it waits for WHAT when another holds the lock.
build_lock() {
  mkdir -p "${cache_root}"
  exec 9>"${cache_root}/.lock"
  if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    echo "waiting for another ${1} on ${cache_root}" >&2
    flock 9
  fi
}

# build_summary STARTED WIDTH: the table of what was built and how long each part took (since
# SECONDS was STARTED), names padded to WIDTH; fails naming what did not build.
build_summary() {
  local started="$1" width="$2" row name secs result
  if ((${#time_rows[@]} > 0)); then
    echo
    printf "%-${width}s %-10s %s\n" BINARY VERSION PATH
    for row in "${built_rows[@]}"; do
      # shellcheck disable=SC2086
      printf "%-${width}s %-10s %s\n" ${row}
    done
    echo
    printf "%-$((width + 8))s %-8s %s\n" COMPONENT RESULT TIME
    for row in "${time_rows[@]}"; do
      read -r name secs result <<<"${row}"
      printf "%-$((width + 8))s %-8s %s\n" "${name}" "${result}" "$(fmt_duration "${secs}")"
    done
    printf "%-$((width + 8))s %-8s %s\n" total "" "$(fmt_duration $((SECONDS - started)))"
    echo "cache: $(du -sh "${cache_root}" | cut -f1) in ${cache_root}"
  fi
  if ((${#failed[@]} > 0)); then
    echo "error: failed to build: ${failed[*]} (see the messages above)" >&2
    exit 1
  fi
}
