#!/usr/bin/env bash
# Benchmarks `meshup install` as the number of clusters grows, one cluster at a time
# (--jobs 1) and with the default fan-out.
#
#   scripts/bench.sh [clusters]  the real helm and kubectl of .tools/helm4 (scripts/fetch-tools.sh)
#                                against in-memory API servers (target/release/testcluster,
#                                --latency-ms 20), local charts tests/fixtures/charts; N = 2, 5, 10.
#
# Everything runs in a temporary directory that is removed at exit, with every process it
# started stopped. Nothing but 127.0.0.1 is contacted: the test clusters listen on 127.0.0.1,
# and the charts are local.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-clusters}"
case "${mode}" in
  clusters) ;;
  -h | --help)
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "error: unknown mode \`${mode}\`; use \`clusters\`" >&2
    exit 2
    ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/meshup-bench.XXXXXX")"
started_pids=()
cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    kill -TERM "${pid}" 2>/dev/null || true
  done
  for pid in "${started_pids[@]}"; do
    wait "${pid}" 2>/dev/null || true
  done
  rm -rf "${work}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Never send anything through a proxy (Go skips one for loopback anyway).
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export CI=1

now() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    echo "${EPOCHREALTIME/,/.}"
  else
    date +%s.%N
  fi
}

# read_cpu: sets `cpu_total` to the user+system seconds of every finished child of this shell
# so far (meshup and, through it, every helm and kubectl). It must not run in a subshell (no
# `$(read_cpu)`): a subshell's children are not this shell's.
read_cpu() {
  times >"${work}/times"
  cpu_total="$(awk 'NR == 2 {
    total = 0
    for (i = 1; i <= 2; i++) { split($i, p, "m"); total += p[1] * 60 + p[2] }
    printf "%.2f", total
  }' "${work}/times")"
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

build() {
  echo "building meshup $* (release)..." >&2
  (cd "${repo_root}" && cargo build --release --locked --quiet "$@") >&2
}

meshup="${repo_root}/target/release/meshup"
charts="${repo_root}/tests/fixtures/charts"

# mesh_file PATH N TRUST CONTEXT_PREFIX
mesh_file() {
  local path="$1" n="$2" trust="$3" prefix="$4" i
  {
    echo "meshID: bench"
    echo "network: network1"
    echo "istio:"
    echo "  charts: ${charts}"
    echo "trust:"
    echo "  mode: ${trust}"
    echo "clusters:"
    for ((i = 1; i <= n; i++)); do
      echo "  - name: cluster${i}"
      echo "    context: ${prefix}${i}"
    done
  } >"${path}"
}

# --- clusters mode -------------------------------------------------------------------------------

# run_clusters N JOBS TRUST: starts N test clusters, installs, stops them; sets `result` to
# "SECONDS PROCESSES". Not run in a subshell, so that the EXIT trap knows the clusters' pid.
run_clusters() {
  local n="$1" jobs="$2" trust="$3"
  local dir="${work}/clusters-${trust}-${n}-${jobs}"
  mkdir -p "${dir}/home" "${dir}/tmp"
  mkfifo "${dir}/stdin"
  "${repo_root}/target/release/testcluster" --clusters "${n}" --latency-ms 20 \
    --kubeconfig "${dir}/kubeconfig" <"${dir}/stdin" >"${dir}/testcluster.out" 2>"${dir}/testcluster.err" &
  local tc_pid=$!
  started_pids+=("${tc_pid}")
  # Holding the fifo open keeps the clusters up; closing it stops them.
  local tc_stdin
  exec {tc_stdin}>"${dir}/stdin"
  local waited=0
  until grep -qx ready "${dir}/testcluster.out" 2>/dev/null; do
    if ! kill -0 "${tc_pid}" 2>/dev/null || ((waited >= 300)); then
      echo "error: testcluster did not print \`ready\`:" >&2
      cat "${dir}/testcluster.err" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  mesh_file "${dir}/mesh.yaml" "${n}" "${trust}" cluster
  local args=(install -f "${dir}/mesh.yaml" --kubeconfig "${dir}/kubeconfig"
    --helm "${wrappers}/helm" --kubectl "${wrappers}/kubectl")
  [[ "${jobs}" == default ]] || args+=(--jobs "${jobs}")
  local start end ok=1
  start="$(now)"
  (cd "${dir}" && env -u KUBECONFIG -u HELM_KUBECONTEXT -u HELM_NAMESPACE \
    HOME="${dir}/home" TMPDIR="${dir}/tmp" \
    XDG_CACHE_HOME="${dir}/home/.cache" XDG_CONFIG_HOME="${dir}/home/.config" \
    XDG_DATA_HOME="${dir}/home/.local/share" COUNT_FILE="${dir}/processes" \
    "${meshup}" "${args[@]}" >"${dir}/out.log" 2>&1) || ok=0
  end="$(now)"
  exec {tc_stdin}>&-
  wait "${tc_pid}" 2>/dev/null || true
  if ((!ok)); then
    echo "error: meshup ${args[*]} failed (N=${n}, jobs=${jobs}):" >&2
    tail -30 "${dir}/out.log" >&2
    exit 1
  fi
  result="$(calc "${end} - ${start}") $(wc -l <"${dir}/processes" | tr -d ' ')"
}

bench_clusters() {
  local tools="${repo_root}/.tools/helm4" bin
  for bin in helm kubectl; do
    if [[ ! -x "${tools}/${bin}" ]]; then
      echo "error: ${tools}/${bin} is missing; run scripts/fetch-tools.sh first" >&2
      exit 1
    fi
  done
  build --bin meshup
  build -p meshup-testcluster --bin testcluster
  # Counting wrappers: one line per process, then the real tool.
  wrappers="${work}/bin"
  mkdir -p "${wrappers}"
  for bin in helm kubectl; do
    printf '#!/usr/bin/env bash\necho %s >>"${COUNT_FILE:?}"\nexec %q "$@"\n' \
      "${bin}" "${tools}/${bin}" >"${wrappers}/${bin}"
    chmod +x "${wrappers}/${bin}"
  done
  local trust n one all
  for trust in ${BENCH_TRUST:-none}; do
    echo
    echo "real helm $("${tools}/helm" version --template '{{.Version}}') and kubectl against testcluster (20 ms latency), trust mode \`${trust}\`"
    printf '%4s  %12s  %12s  %7s  %9s  %11s\n' N "jobs=1 (s)" "default (s)" ratio processes "processes/N"
    for n in 2 5 10; do
      run_clusters "${n}" 1 "${trust}"
      one="${result}"
      run_clusters "${n}" default "${trust}"
      all="${result}"
      printf '%4s  %12s  %12s  %7s  %9s  %11s\n' "${n}" "${one% *}" "${all% *}" \
        "$(calc "${one% *} / ${all% *}")x" "${all#* }" "$(calc "${all#* } / ${n}")"
    done
  done
}

case "${mode}" in
  clusters) bench_clusters ;;
esac
