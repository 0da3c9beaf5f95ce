#!/usr/bin/env bash
# Benchmarks `meshup install` with the real helm 4 and kubectl (.tools/helm4, from
# scripts/fetch-tools.sh) against in-memory API servers (target/release/testcluster) with
# latency per request.
#
#   scripts/bench.sh [clusters]  N = 1, 2, 5, 10 (BENCH_SIZES), one cluster at a time
#                                (--jobs 1) and with the default fan-out; helm and kubectl
#                                processes per cluster. Targets: N=10 with default jobs within
#                                1.5x of one cluster's chain (half of N=2 with --jobs 1), and
#                                at least 4x faster than N=10 with --jobs 1.
#   scripts/bench.sh charts      a chart repository served over HTTP on 127.0.0.1 (python3):
#                                index reads and chart downloads of a cold and a warm install
#                                of 3 clusters. Target: 1 index read and 1 download per chart
#                                cold, none warm.
#   scripts/bench.sh memory      N = 50 (BENCH_MEMORY_N): wall time and peak memory (summed
#                                RSS of meshup and every helm and kubectl it runs at once) with
#                                the default --jobs (16) and with --jobs all.
#   scripts/bench.sh pods        status, verify and doctor of a 2-cluster mesh before and after
#                                5,000 application pods (40 with sidecars) go into each
#                                cluster: wall time, helm/kubectl processes, peak memory.
#                                Target: at most 1.5x each.
#   scripts/bench.sh rotation    `link --rotate` of a 2-cluster mesh with each istiod's log at
#                                its start and grown by 100 MB (BENCH_LOG_MB): time, and the
#                                bytes the baseline's `kubectl logs` reads.
#   scripts/bench.sh scale       N = 10, 50, 100 (BENCH_SCALE): install, link, status, verify,
#                                doctor at the default --jobs: time, processes, peak memory.
#                                Targets: processes per cluster the same at every N, time per
#                                cluster at the largest N within 1.5x of the smallest, peak
#                                memory under 2 GB.
#   scripts/bench.sh export      `meshup export` of a 100-cluster mesh (BENCH_EXPORT_N), two
#                                networks: Flux per cluster, Flux in a hub, Argo CD; files,
#                                bytes and time (no cluster, no helm or kubectl involved).
#   scripts/bench.sh all         clusters, charts and memory.
#
# Peak memory is the summed RSS of meshup and every helm and kubectl it runs, sampled from
# /proc every 50 ms (`/usr/bin/time -v` is no substitute: its maximum RSS is that of the
# largest single process, not of those running at once).
#
# BENCH_LATENCY_MS sets the latency per request (default 20). Everything runs in a temporary
# directory that is removed at exit, with every process it started stopped. Nothing but
# 127.0.0.1 is contacted.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-clusters}"
case "${mode}" in
  clusters | charts | memory | pods | rotation | scale | export | all) ;;
  -h | --help)
    sed -n '2,44p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "error: unknown mode \`${mode}\`; use clusters, charts, memory, pods, rotation, scale, export or all" >&2
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

# Never send anything through a proxy.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export CI=1
latency_ms="${BENCH_LATENCY_MS:-20}"
tools="${repo_root}/.tools/helm4"
# BENCH_MESHUP: another meshup binary to time (e.g. an older build), against the same servers.
meshup="${BENCH_MESHUP:-${repo_root}/target/release/meshup}"
# Istio's own charts, stamped (scripts/istio-charts.sh), of the first build scripts/pins.env pins.
# shellcheck source=pins.env
source "${repo_root}/scripts/pins.env"
istio_version="${ISTIO_BUILDS%%=*}"
charts="${repo_root}/.tools/istio/${istio_version}"

now() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    echo "${EPOCHREALTIME/,/.}"
  else
    date +%s.%N
  fi
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

build() {
  echo "building meshup and testcluster (release)..." >&2
  (cd "${repo_root}" && cargo build --release --locked --quiet --bin meshup \
    && cargo build --release --locked --quiet -p meshup-testcluster --bin testcluster) >&2
}

setup() {
  local bin
  for bin in helm kubectl; do
    if [[ ! -x "${tools}/${bin}" ]]; then
      echo "error: ${tools}/${bin} is missing; run scripts/fetch-tools.sh first" >&2
      exit 1
    fi
  done
  if [[ ! -f "${charts}/istiod/Chart.yaml" ]]; then
    echo "error: Istio's charts are missing from ${charts}; run scripts/istio-charts.sh first" >&2
    exit 1
  fi
  build
  # Counting wrappers: one line per process, then the real tool.
  wrappers="${work}/bin"
  mkdir -p "${wrappers}"
  for bin in helm kubectl; do
    printf '#!/usr/bin/env bash\necho %s >>"${COUNT_FILE:?}"\nexec %q "$@"\n' \
      "${bin}" "${tools}/${bin}" >"${wrappers}/${bin}"
    chmod +x "${wrappers}/${bin}"
  done
}

# mesh_file PATH N CHARTS [VERSION]
mesh_file() {
  local path="$1" n="$2" source="$3" version="${4:-}" i
  {
    echo "meshID: bench"
    echo "network: network1"
    echo "istio:"
    echo "  charts: ${source}"
    [[ -n "${version}" ]] && echo "  version: ${version}"
    echo "trust:"
    echo "  mode: none"
    echo "clusters:"
    for ((i = 1; i <= n; i++)); do
      echo "  - name: cluster${i}"
      echo "    context: cluster${i}"
    done
  } >"${path}"
}

# start_clusters DIR N: starts N test clusters, writes DIR/kubeconfig; sets `tc_pid`,
# `tc_stdin` (closing it stops them).
start_clusters() {
  local dir="$1" n="$2"
  mkfifo "${dir}/stdin"
  "${repo_root}/target/release/testcluster" --clusters "${n}" --latency-ms "${latency_ms}" \
    --kubeconfig "${dir}/kubeconfig" <"${dir}/stdin" >"${dir}/testcluster.out" 2>"${dir}/testcluster.err" &
  tc_pid=$!
  started_pids+=("${tc_pid}")
  exec {tc_stdin}>"${dir}/stdin"
  local waited=0
  until grep -qx ready "${dir}/testcluster.out" 2>/dev/null; do
    if ! kill -0 "${tc_pid}" 2>/dev/null || ((waited >= 600)); then
      echo "error: testcluster did not print \`ready\`:" >&2
      cat "${dir}/testcluster.err" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

stop_clusters() {
  exec {tc_stdin}>&-
  wait "${tc_pid}" 2>/dev/null || true
}

# run_meshup DIR ARGS...: runs meshup with the counting wrappers; sets `seconds`.
run_meshup() {
  local dir="$1"
  shift
  mkdir -p "${dir}/home" "${dir}/tmp"
  local start end ok=1
  start="$(now)"
  (cd "${dir}" && env -u KUBECONFIG -u HELM_KUBECONTEXT -u HELM_NAMESPACE \
    HOME="${dir}/home" TMPDIR="${dir}/tmp" \
    XDG_CACHE_HOME="${dir}/home/.cache" XDG_CONFIG_HOME="${dir}/home/.config" \
    XDG_DATA_HOME="${dir}/home/.local/share" COUNT_FILE="${dir}/processes" \
    "${meshup}" "$@" --kubeconfig "${dir}/kubeconfig" \
    --helm "${wrappers}/helm" --kubectl "${wrappers}/kubectl" >"${dir}/out.log" 2>&1) || ok=0
  end="$(now)"
  if ((!ok)); then
    echo "error: meshup $* failed:" >&2
    tail -30 "${dir}/out.log" >&2
    exit 1
  fi
  seconds="$(calc "${end} - ${start}")"
}

# --- clusters: scaling ---------------------------------------------------------------------------

# install_once N JOBS: sets `result` to "SECONDS PROCESSES".
install_once() {
  local n="$1" jobs="$2"
  local dir="${work}/scale-${n}-${jobs}"
  mkdir -p "${dir}"
  start_clusters "${dir}" "${n}"
  mesh_file "${dir}/mesh.yaml" "${n}" "${charts}"
  local args=(install -f "${dir}/mesh.yaml")
  [[ "${jobs}" == default ]] || args+=(--jobs "${jobs}")
  run_meshup "${dir}" "${args[@]}"
  stop_clusters
  result="${seconds} $(wc -l <"${dir}/processes" | tr -d ' ')"
}

bench_clusters() {
  echo
  echo "install, real helm $("${tools}/helm" version --template '{{.Version}}') and kubectl, ${latency_ms} ms per request, trust none"
  printf '%4s  %12s  %12s  %7s  %9s  %11s\n' N "jobs=1 (s)" "default (s)" ratio processes "processes/N"
  local n one all chain="" at10="" serial10="" status=0
  for n in ${BENCH_SIZES:-1 2 5 10}; do
    if [[ "${n}" == 1 ]]; then
      install_once 1 default
      one="${result}" all="${result}"
    else
      install_once "${n}" 1
      one="${result}"
      install_once "${n}" default
      all="${result}"
    fi
    # One cluster's chain (namespace -> base -> istiod -> remote secret -> link) is half of a
    # two-cluster mesh run one cluster at a time.
    [[ "${n}" == 2 ]] && chain="$(calc "${one% *} / 2")"
    [[ "${n}" == 10 ]] && at10="${all% *}" && serial10="${one% *}"
    printf '%4s  %12s  %12s  %7s  %9s  %11s\n' "${n}" "${one% *}" "${all% *}" \
      "$(calc "${one% *} / ${all% *}")x" "${all#* }" "$(calc "${all#* } / ${n}")"
  done
  if [[ -n "${chain}" && -n "${at10}" ]]; then
    local limit
    limit="$(calc "1.5 * ${chain}")"
    if awk "BEGIN { exit !(${at10} <= ${limit}) }"; then
      echo "PASS  N=10 with default jobs: ${at10} s <= 1.5 x one chain (${chain} s) = ${limit} s"
    else
      echo "FAIL  N=10 with default jobs: ${at10} s > 1.5 x one chain (${chain} s) = ${limit} s"
      status=1
    fi
  fi
  if [[ -n "${serial10}" && -n "${at10}" ]]; then
    if awk "BEGIN { exit !(${serial10} >= 4 * ${at10}) }"; then
      echo "PASS  N=10: --jobs 1 ${serial10} s >= 4 x default jobs (${at10} s)"
    else
      echo "FAIL  N=10: --jobs 1 ${serial10} s < 4 x default jobs (${at10} s)"
      status=1
    fi
  fi
  return "${status}"
}

# --- charts: index reads and downloads -----------------------------------------------------------

bench_charts() {
  local dir="${work}/charts" repo port status=0
  mkdir -p "${dir}/repo"
  "${tools}/helm" package "${charts}/base" "${charts}/istiod" --destination "${dir}/repo" >/dev/null
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  repo="http://127.0.0.1:${port}"
  "${tools}/helm" repo index "${dir}/repo" --url "${repo}"
  (cd "${dir}/repo" && exec python3 -m http.server "${port}" --bind 127.0.0.1) >/dev/null 2>"${dir}/http.log" &
  started_pids+=("$!")
  sleep 1
  start_clusters "${dir}" 3
  mesh_file "${dir}/mesh.yaml" 3 "${repo}" "${istio_version}"
  echo
  echo "charts from ${repo} (2 charts), 3 clusters"
  printf '%-6s  %11s  %9s  %8s\n' install "index reads" downloads "time (s)"
  local round reads gets
  for round in cold warm; do
    : >"${dir}/http.log"
    run_meshup "${dir}" install -f "${dir}/mesh.yaml"
    reads="$(grep -c 'GET /index.yaml' "${dir}/http.log" || true)"
    gets="$(grep -c 'GET /[^ ]*\.tgz' "${dir}/http.log" || true)"
    printf '%-6s  %11s  %9s  %8s\n' "${round}" "${reads}" "${gets}" "${seconds}"
    if [[ "${round}" == cold && ( "${reads}" != 1 || "${gets}" != 2 ) ]] ||
      [[ "${round}" == warm && ( "${reads}" != 0 || "${gets}" != 0 ) ]]; then
      status=1
    fi
  done
  stop_clusters
  if ((status)); then
    echo "FAIL  expected 1 index read and 1 download per chart cold, none warm"
  else
    echo "PASS  1 index read and 1 download per chart cold, none warm"
  fi
  return "${status}"
}

# --- memory: peak at N=50 ------------------------------------------------------------------------

# peak_rss PID: prints the highest summed RSS (MB) of PID and its descendants until it ends.
peak_rss() {
  python3 - "$1" <<'PY'
import os, sys, time
root = int(sys.argv[1])
peak = 0
def children():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(pid))
        except (OSError, ValueError, IndexError):
            pass
    return kids
while os.path.exists(f"/proc/{root}"):
    kids, total, todo = children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    peak = max(peak, total)
    time.sleep(0.05)
print(f"{peak / 1024:.0f}")
PY
}

bench_memory() {
  local n="${BENCH_MEMORY_N:-50}" jobs dir
  echo
  echo "install of ${n} clusters, ${latency_ms} ms per request: peak memory of meshup and its helm/kubectl"
  printf '%-9s  %8s  %14s\n' jobs "time (s)" "peak RSS (MB)"
  for jobs in default all; do
    dir="${work}/memory-${jobs}"
    mkdir -p "${dir}/home" "${dir}/tmp"
    start_clusters "${dir}" "${n}"
    mesh_file "${dir}/mesh.yaml" "${n}" "${charts}"
    local args=(install -f "${dir}/mesh.yaml" --kubeconfig "${dir}/kubeconfig"
      --helm "${wrappers}/helm" --kubectl "${wrappers}/kubectl")
    [[ "${jobs}" == default ]] || args+=(--jobs all)
    local start end pid peak
    start="$(now)"
    (cd "${dir}" && env -u KUBECONFIG HOME="${dir}/home" TMPDIR="${dir}/tmp" \
      XDG_CACHE_HOME="${dir}/home/.cache" COUNT_FILE="${dir}/processes" \
      "${meshup}" "${args[@]}" >"${dir}/out.log" 2>&1) &
    pid=$!
    peak="$(peak_rss "${pid}")"
    if ! wait "${pid}"; then
      echo "error: meshup failed (jobs ${jobs}):" >&2
      tail -30 "${dir}/out.log" >&2
      exit 1
    fi
    end="$(now)"
    stop_clusters
    printf '%-9s  %8s  %14s\n' "${jobs}" "$(calc "${end} - ${start}")" "${peak}"
  done
}

# --- measured runs: time, processes, peak memory ------------------------------------------------

# measure DIR ARGS...: runs meshup like run_meshup, sampling the memory of it and its children;
# sets `seconds`, `peak` (MB) and `procs` (helm and kubectl processes). A failing meshup is
# reported (its exit code in `code`), not fatal: verify and doctor may exit 1.
measure() {
  local dir="$1"
  shift
  mkdir -p "${dir}/home" "${dir}/tmp"
  : >"${dir}/processes"
  local start end pid
  start="$(now)"
  (cd "${dir}" && env -u KUBECONFIG -u HELM_KUBECONTEXT -u HELM_NAMESPACE \
    HOME="${dir}/home" TMPDIR="${dir}/tmp" \
    XDG_CACHE_HOME="${dir}/home/.cache" XDG_CONFIG_HOME="${dir}/home/.config" \
    XDG_DATA_HOME="${dir}/home/.local/share" COUNT_FILE="${dir}/processes" \
    "${meshup}" "$@" --kubeconfig "${dir}/kubeconfig" \
    --helm "${wrappers}/helm" --kubectl "${wrappers}/kubectl" >"${dir}/out.log" 2>&1) &
  pid=$!
  peak="$(peak_rss "${pid}")"
  code=0
  wait "${pid}" || code=$?
  end="$(now)"
  seconds="$(calc "${end} - ${start}")"
  procs="$(wc -l <"${dir}/processes" | tr -d ' ')"
}

# tc_command DIR LINE: sends a command to the running test clusters, waits for its answer.
tc_command() {
  local dir="$1" line="$2" waited=0
  echo "${line}" >&"${tc_stdin}"
  until grep -qx "done ${line}" "${dir}/testcluster.out"; do
    if grep -q '^error:' "${dir}/testcluster.out" || ((waited >= 6000)); then
      echo "error: testcluster did not do \`${line}\`:" >&2
      cat "${dir}/testcluster.out" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# --- pods: status, verify, doctor with 5,000 application pods ----------------------------------

bench_pods() {
  local dir="${work}/pods" total="${BENCH_PODS:-5000}" sidecars="${BENCH_SIDECARS:-40}" status=0
  mkdir -p "${dir}"
  start_clusters "${dir}" 2
  mesh_file "${dir}/mesh.yaml" 2 "${charts}"
  run_meshup "${dir}" install -f "${dir}/mesh.yaml"
  echo
  echo "2 clusters, ${latency_ms} ms per request: without and with ${total} application pods (${sidecars} with sidecars) in each"
  printf '%-8s  %-8s  %8s  %9s  %9s\n' command pods "time (s)" processes "peak (MB)"
  local cmd round
  declare -A before
  for round in 0 "${total}"; do
    [[ "${round}" == 0 ]] || tc_command "${dir}" "pods ${total} ${sidecars}"
    for cmd in status verify doctor; do
      measure "${dir}" "${cmd}" -f "${dir}/mesh.yaml"
      printf '%-8s  %-8s  %8s  %9s  %9s\n' "${cmd}" "${round}" "${seconds}" "${procs}" "${peak}"
      if [[ "${round}" == 0 ]]; then
        before[${cmd}]="${seconds} ${peak}"
      else
        local t0="${before[${cmd}]% *}" m0="${before[${cmd}]#* }"
        if ! awk "BEGIN { exit !(${seconds} <= 1.5 * ${t0} && ${peak} <= 1.5 * ${m0}) }"; then
          echo "FAIL  ${cmd}: ${seconds} s / ${peak} MB against ${t0} s / ${m0} MB without the pods (limit 1.5x)"
          status=1
        fi
      fi
    done
  done
  measure "${dir}" status -f "${dir}/mesh.yaml"
  echo "status counts proxies: $(grep -oE 'default:[0-9]+' "${dir}/out.log" | tr '\n' ' ')"
  stop_clusters
  ((status)) || echo "PASS  status, verify and doctor within 1.5x in time and memory with ${total} pods"
  return "${status}"
}

# --- export: the hand-off of a large mesh -------------------------------------------------------

bench_export() {
  local n="${BENCH_EXPORT_N:-100}" mesh="${work}/export-mesh.yaml" i layout format out t0 t1
  {
    printf 'meshID: mesh1\nistio:\n  version: 1.30.0\n  charts: https://charts.example.com/istio\n'
    printf 'trust:\n  dir: %s\nclusters:\n' "${work}/certs"
    for ((i = 1; i <= n; i++)); do
      printf '  - name: cluster%d\n    context: cluster%d\n    apiServer: https://10.0.%d.%d:6443\n' \
        "${i}" "${i}" "$((i / 250))" "$((i % 250 + 1))"
      printf '    network: net%d\n    eastWestGateway:\n      address: 10.1.%d.%d\n' \
        "$((i % 2 + 1))" "$((i / 250))" "$((i % 250 + 1))"
    done
  } >"${mesh}"
  echo "| format | layout | files | bytes | time (s) |"
  echo "| --- | --- | --- | --- | --- |"
  for format in flux argocd; do
    for layout in every hub; do
      [[ "${format}" == argocd && "${layout}" == hub ]] && continue
      out="${work}/export-${format}-${layout}"
      t0="$(now)"
      "${meshup}" export -f "${mesh}" --format "${format}" --layout "${layout}" --out "${out}" \
        --repo-url https://git.example.com/mesh.git >/dev/null
      t1="$(now)"
      echo "| ${format} | ${layout} | $(find "${out}" -type f | wc -l) | $(du -sb "${out}" | cut -f1) | $(calc "${t1} - ${t0}") |"
    done
  done
}

# --- rotation: the baseline on a long istiod log ------------------------------------------------

bench_rotation() {
  local dir="${work}/rotation" mb="${BENCH_LOG_MB:-100}" round pod
  mkdir -p "${dir}"
  start_clusters "${dir}" 2
  mesh_file "${dir}/mesh.yaml" 2 "${charts}"
  run_meshup "${dir}" install -f "${dir}/mesh.yaml"
  echo
  echo "link --rotate of 2 clusters, ${latency_ms} ms per request: istiod's log at start and grown by ${mb} MB"
  printf '%-10s  %8s  %16s  %20s  %18s\n' "log" "time (s)" "whole log (MB)" "baseline read (B)" "baseline read (s)"
  for round in start "+${mb} MB"; do
    [[ "${round}" == start ]] || tc_command "${dir}" "istiod-log ${mb}"
    pod="$("${tools}/kubectl" --kubeconfig "${dir}/kubeconfig" --context cluster2 -n istio-system \
      get pods -l app=istiod -o name | head -1)"
    local whole since t0 t1
    whole="$("${tools}/kubectl" --kubeconfig "${dir}/kubeconfig" --context cluster2 -n istio-system \
      logs "${pod}" -c discovery | wc -c)"
    # What the baseline asks for: the lines of the last BASELINE_WINDOW (src/rotate.rs).
    t0="$(now)"
    since="$("${tools}/kubectl" --kubeconfig "${dir}/kubeconfig" --context cluster2 -n istio-system \
      logs "${pod}" -c discovery --since=15s | wc -c)"
    t1="$(now)"
    measure "${dir}" link --rotate -f "${dir}/mesh.yaml"
    if ((code)); then
      echo "error: link --rotate failed:" >&2
      tail -30 "${dir}/out.log" >&2
      exit 1
    fi
    printf '%-10s  %8s  %16s  %20s  %18s\n' "${round}" "${seconds}" \
      "$(calc "${whole} / 1048576")" "${since}" "$(calc "${t1} - ${t0}")"
  done
  stop_clusters
}

# --- scale: N = 10, 50, 100 ----------------------------------------------------------------------

bench_scale() {
  local n cmd dir status=0 first="" last="" t1 p1 tn pn mn
  echo
  echo "default --jobs, ${latency_ms} ms per request, trust none: time, helm/kubectl processes (per cluster), peak memory"
  printf '%4s  %-8s  %8s  %9s  %10s  %11s  %9s\n' N command "time (s)" "s/cluster" processes "per cluster" "peak (MB)"
  declare -A per
  for n in ${BENCH_SCALE:-10 50 100}; do
    dir="${work}/scale-${n}"
    mkdir -p "${dir}"
    start_clusters "${dir}" "${n}"
    mesh_file "${dir}/mesh.yaml" "${n}" "${charts}"
    for cmd in install link status verify doctor; do
      measure "${dir}" "${cmd}" -f "${dir}/mesh.yaml"
      if ((code)) && [[ "${cmd}" != doctor ]]; then
        echo "error: meshup ${cmd} failed at N=${n}:" >&2
        tail -30 "${dir}/out.log" >&2
        exit 1
      fi
      printf '%4s  %-8s  %8s  %9s  %10s  %11s  %9s\n' "${n}" "${cmd}${code/#0/}" "${seconds}" \
        "$(calc "${seconds} / ${n}")" "${procs}" "$(calc "${procs} / ${n}")" "${peak}"
      per["${n} ${cmd}"]="$(calc "${seconds} / ${n}") $(calc "${procs} / ${n}") ${peak}"
    done
    stop_clusters
    [[ -n "${first}" ]] || first="${n}"
    last="${n}"
  done
  for cmd in install link status verify doctor; do
    read -r t1 p1 _ <<<"${per["${first} ${cmd}"]}"
    read -r tn pn mn <<<"${per["${last} ${cmd}"]}"
    if awk "BEGIN { exit !(${pn} <= ${p1} + 0.05) }"; then
      echo "PASS  ${cmd}: ${pn} processes per cluster at N=${last}, ${p1} at N=${first}"
    else
      echo "FAIL  ${cmd}: ${pn} processes per cluster at N=${last}, ${p1} at N=${first}"
      status=1
    fi
    if awk "BEGIN { exit !(${tn} <= 1.5 * ${t1}) }"; then
      echo "PASS  ${cmd}: ${tn} s per cluster at N=${last} <= 1.5 x ${t1} s at N=${first}"
    else
      echo "FAIL  ${cmd}: ${tn} s per cluster at N=${last} > 1.5 x ${t1} s at N=${first}"
      status=1
    fi
    if awk "BEGIN { exit !(${mn} < 2048) }"; then
      echo "PASS  ${cmd}: peak ${mn} MB at N=${last} < 2 GB"
    else
      echo "FAIL  ${cmd}: peak ${mn} MB at N=${last} >= 2 GB"
      status=1
    fi
  done
  return "${status}"
}

setup
status=0
case "${mode}" in
  clusters) bench_clusters || status=1 ;;
  charts) bench_charts || status=1 ;;
  memory) bench_memory ;;
  pods) bench_pods || status=1 ;;
  rotation) bench_rotation ;;
  scale) bench_scale || status=1 ;;
  export) bench_export ;;
  all)
    bench_clusters || status=1
    bench_charts || status=1
    bench_memory
    ;;
esac
exit "${status}"
