#!/usr/bin/env bash
# The real tier's clusters: real Kubernetes control planes (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler), kwok standing in for the kubelets, and real istiods
# (pilot-discovery), all built from Go modules and run as plain processes.
#
#   scripts/real-clusters.sh build [COMPONENT...]   builds the pinned binaries (all by default)
#   scripts/real-clusters.sh up N DIR               starts N clusters (scripts/real/launcher.py)
#   scripts/real-clusters.sh down DIR               stops them, removes DIR
#
# `build` builds every binary once, from the versions scripts/pins.env pins, into a cache outside
# the repo, one directory per component and version:
#
#   ${MESHUP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshup/real}/
#     etcd-VERSION/etcd
#     kubernetes-VERSION/{kube-apiserver,kube-controller-manager,kube-scheduler}
#     kwok-VERSION/kwok
#     pilot-discovery-ISTIO_VERSION/pilot-discovery      one per ISTIO_BUILDS entry
#
# Each binary is built from a wrapper module generated in a temporary directory (nothing
# Go-generated is kept in the repo): a go.mod that requires the pinned module and names the
# commands as `tool`s, tidied, then `go build` with CGO_ENABLED=0. The wrapper is needed because
# etcd's and kubernetes' go.mod files carry replace directives (kubernetes maps every staging
# module `k8s.io/NAME` to ./staging/src, which the wrapper replaces with the published
# `k8s.io/NAME v0.MINOR.PATCH`, the list generated from that go.mod), and it costs nothing for
# the others. It also carries the replacements pins.env pins for a build (for an Istio build,
# ISTIO_REPLACES_<VERSION>: dependencies whose required version the Go module proxy refuses, each
# replaced by a version it serves). The wrapper's go.mod and go.sum are kept beside the binaries:
# they say exactly what was built. Go's module and build caches are used as they are.
#
# A component is built into a temporary directory; each binary must run and report its pinned
# version; only then is the `.built` marker (the build's recipe) written and the directory moved
# into place, so an interrupted or failed build is redone by the next run, and a changed pin
# (another recipe) rebuilds. A run with everything in place only prints "up to date" lines.
# Progress goes to stderr; when something was built, a table of the binaries, their versions and
# paths, each component's build time and the total go to stdout.
#
# The builds are long (kubernetes: tens of minutes on two cores) and run under `nice -n 19`
# with `go build -p ${MESHUP_REAL_GO_P:-1}` so that they leave a shared machine usable.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pins.env
source "${repo_root}/scripts/pins.env"
# shellcheck source=real/build-lib.sh
source "${repo_root}/scripts/real/build-lib.sh"

cache_root="${MESHUP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshup/real}"
go_p="${MESHUP_REAL_GO_P:-1}"

usage() {
  cat >&2 <<'EOF'
usage: scripts/real-clusters.sh build [etcd|kubernetes|kwok|pilot-discovery]...
       scripts/real-clusters.sh up N DIR
       scripts/real-clusters.sh down DIR
EOF
}

built_rows=()   # "binary version path" for the table
time_rows=()    # "component seconds"
failed=()       # components that failed

# build_component NAME VERSION MODULE MODVERSION LDFLAGS REPLACES_FN "MOD=VER..." "PKG..."
#                 "BIN=EXPECTED;..." CHECK_ARGS
#
#   NAME-VERSION          the cache directory
#   MODULE@MODVERSION     what the wrapper requires
#   LDFLAGS               go build -ldflags
#   REPLACES_FN           a function printing the wrapper's replace directives, run only when
#                         building (it may download); empty for none
#   MOD=VER...            pinned replacements (space separated), each written to the wrapper as
#                         `replace MOD => MOD VER`; empty for none
#   PKG...                the main packages to build (space separated)
#   BIN=EXPECTED;...      each package's binary, in the same order, and the text its version
#                         output must contain; `;` between
#   CHECK_ARGS            the arguments that make a binary print its version
#
# The recipe in `.built` is made of the pins alone, so that deciding "up to date" needs no
# network and no module cache.
build_component() {
  local name="$1" version="$2" module="$3" modversion="$4" ldflags="$5" replaces_fn="$6"
  local pinned="$7" pkgs="$8" check_args="${10}" checks
  IFS=';' read -ra checks <<<"$9"
  local dest="${cache_root}/${name}-${version}"

  local pins pin
  read -ra pins <<<"${pinned}"
  for pin in "${pins[@]}"; do
    if [[ "${pin}" != ?*=?* ]]; then
      echo "error: ${name} ${version}: replace pin \`${pin}\` is not MODULE=VERSION; fix it in scripts/pins.env" >&2
      exit 2
    fi
  done

  # The pinned replacements join the recipe's `replaces` line (so a changed pin rebuilds); with
  # none, the line is what it was before there were pins, and what is built stays up to date.
  local replaces_desc="${replaces_fn}"
  if ((${#pins[@]} > 0)); then
    replaces_desc="${replaces_desc:+${replaces_desc} }${pins[*]}"
  fi
  local recipe
  recipe="$(printf 'module %s@%s\nldflags %s\npackages %s\nreplaces %s\nCGO_ENABLED=0\n' \
    "${module}" "${modversion}" "${ldflags}" "${pkgs}" "${replaces_desc:-none}")"

  local check bin all_there=1
  if (($(wc -w <<<"${pkgs}") != ${#checks[@]})); then
    echo "internal error: ${name}: ${pkgs} and the binaries ${checks[*]} do not pair up" >&2
    exit 1
  fi
  for check in "${checks[@]}"; do
    [[ -x "${dest}/${check%%=*}" ]] || all_there=0
  done
  if ((all_there)) && [[ -f "${dest}/.built" ]] && [[ "$(cat "${dest}/.built")" == "${recipe}" ]]; then
    echo "${name} ${version}: up to date (${dest})" >&2
    return 0
  fi

  echo "${name} ${version}: building ${pkgs} from ${module}@${modversion}" >&2
  local start=${SECONDS}
  local tmp="${cache_root}/.${name}-${version}.tmp"
  local work
  work="$(mktemp -d)"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"

  local ok=1 replaces=""
  if [[ -n "${replaces_fn}" ]] && ! replaces="$("${replaces_fn}" "${modversion}")"; then
    ok=0
  fi
  for pin in "${pins[@]}"; do
    replaces+="${replaces:+$'\n'}replace ${pin%%=*} => ${pin%%=*} ${pin#*=}"
  done

  {
    echo "// Generated by scripts/real-clusters.sh: builds ${pkgs} from ${module}@${modversion}."
    echo "module meshup.invalid/real/${name}"
    echo
    echo "go 1.24"
    echo
    echo "require ${module} ${modversion}"
    echo
    echo "tool ("
    for pkg in ${pkgs}; do
      echo "	${pkg}"
    done
    echo ")"
    if [[ -n "${replaces}" ]]; then
      echo
      echo "${replaces}"
    fi
  } >"${work}/go.mod"

  if ! ((ok)); then
    :
  elif ! (cd "${work}" && GOFLAGS="${GOFLAGS:-} -mod=mod" gorun mod tidy >&2); then
    echo "${name} ${version}: \`go mod tidy\` failed in the wrapper module (kept in ${work})" >&2
    ok=0
  else
    # One package at a time, each to its binary's name (the last element of
    # go.etcd.io/etcd/server/v3 is not `etcd`); the packages they share are compiled once.
    local i=0 pkg
    for pkg in ${pkgs}; do
      bin="${checks[i]%%=*}"
      i=$((i + 1))
      if ! (cd "${work}" && CGO_ENABLED=0 gorun build -p "${go_p}" -trimpath -ldflags "${ldflags}" \
        -o "${tmp}/${bin}" "${pkg}" >&2); then
        echo "${name} ${version}: \`go build ${pkg}\` failed (wrapper module kept in ${work})" >&2
        ok=0
        break
      fi
    done
  fi

  if ((ok)); then
    for check in "${checks[@]}"; do
      bin="${check%%=*}"
      local want="${check#*=}" got
      # shellcheck disable=SC2086
      got="$("${tmp}/${bin}" ${check_args} 2>&1 | head -n 5)" || true
      if ! grep -qF -- "${want}" <<<"${got}"; then
        echo "${name} ${version}: \`${bin} ${check_args}\` does not report ${want}: ${got}" >&2
        ok=0
      fi
    done
  fi

  if ! ((ok)); then
    rm -rf "${tmp}"
    failed+=("${name}-${version}")
    time_rows+=("${name}-${version} $((SECONDS - start)) failed")
    return 0
  fi

  cp "${work}/go.mod" "${work}/go.sum" "${tmp}/"
  echo "${recipe}" >"${tmp}/.built"
  rm -rf "${dest}" "${work}"
  mv "${tmp}" "${dest}"
  local took=$((SECONDS - start))
  echo "${name} ${version}: built in $(fmt_duration "${took}") (${dest})" >&2
  time_rows+=("${name}-${version} ${took} built")
  for check in "${checks[@]}"; do
    built_rows+=("${check%%=*} ${version} ${dest}/${check%%=*}")
  done
}

build_etcd() {
  local v="${REAL_ETCD_VERSION}"
  build_component etcd "${v}" go.etcd.io/etcd/server/v3 "${v}" "" "" "" \
    "go.etcd.io/etcd/server/v3" \
    "etcd=etcd Version: ${v#v}" "--version"
}

# kubernetes_replaces VERSION: a replace directive to the published `k8s.io/NAME v0.MINOR.PATCH`
# for every staging module that kubernetes' go.mod maps to ./staging/src (1.36 has modules 1.35
# lacks, so the list is read, not written).
kubernetes_replaces() {
  local v="$1" gomod replaces
  gomod="$(module_json "k8s.io/kubernetes@${v}" GoMod)" || return 1
  replaces="$(sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[^[:space:]]+)[[:space:]]+=>[[:space:]]+\./staging/src/k8s\.io/[^[:space:]]+[[:space:]]*$#replace \2 => \2 v0.'"${v#v1.}"'#p' "${gomod}")"
  if [[ -z "${replaces}" ]]; then
    echo "kubernetes ${v}: found no \`=> ./staging/src/k8s.io/NAME\` replace directives in ${gomod}" >&2
    return 1
  fi
  echo "${replaces}"
}

build_kubernetes() {
  local v="${REAL_KUBERNETES_VERSION}"
  local minor
  minor="$(cut -d. -f2 <<<"${v}")"
  # Without these, /version reports no major/minor and istiod's Kubernetes version checks see -1.
  local ldflags="-X k8s.io/component-base/version.gitVersion=${v}"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=${minor}"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  build_component kubernetes "${v}" k8s.io/kubernetes "${v}" "${ldflags}" kubernetes_replaces "" \
    "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler" \
    "kube-apiserver=Kubernetes ${v};kube-controller-manager=Kubernetes ${v};kube-scheduler=Kubernetes ${v}" \
    "--version"
}

build_kwok() {
  local v="${REAL_KWOK_VERSION}"
  build_component kwok "${v}" sigs.k8s.io/kwok "${v}" "" "" "" \
    "sigs.k8s.io/kwok/cmd/kwok" \
    "kwok=${v#v}" "--version"
}

build_pilot_discovery() {
  local build version modversion ldflags pins_var
  for build in ${ISTIO_BUILDS}; do
    version="${build%%=*}"
    modversion="${build#*=}"
    # ISTIO_REPLACES_1_30_0 for 1.30.0: what the proxy refuses and what stands in for it.
    pins_var="ISTIO_REPLACES_${version//[.-]/_}"
    # As Istio's release build stamps it (tools/report_build_info.sh); the revision is the
    # commit the pseudo-version names.
    ldflags="-X istio.io/istio/pkg/version.buildVersion=${version}"
    ldflags+=" -X istio.io/istio/pkg/version.buildTag=${version}"
    ldflags+=" -X istio.io/istio/pkg/version.buildGitRevision=${modversion##*-}"
    ldflags+=" -X istio.io/istio/pkg/version.buildStatus=Clean"
    ldflags+=" -X istio.io/istio/pkg/version.buildHub=${ISTIO_HUB}"
    build_component pilot-discovery "${version}" istio.io/istio "${modversion}" "${ldflags}" "" \
      "${!pins_var:-}" \
      "istio.io/istio/pilot/cmd/pilot-discovery" \
      "pilot-discovery=${version}" "version --short"
  done
}

cmd_build() {
  if ! command -v go >/dev/null 2>&1; then
    echo "error: \`go\` is not on PATH; the real tier builds its binaries from Go modules, so it needs Go (1.26 or newer)" >&2
    exit 1
  fi
  local components=("$@")
  if ((${#components[@]} == 0)); then
    components=(etcd kwok kubernetes pilot-discovery)
  fi
  local c
  for c in "${components[@]}"; do
    case "${c}" in
      etcd | kubernetes | kwok | pilot-discovery) ;;
      *)
        echo "error: unknown component \`${c}\` (known: etcd, kubernetes, kwok, pilot-discovery)" >&2
        exit 2
        ;;
    esac
  done

  build_lock '`real-clusters.sh build`'

  local total_start=${SECONDS}
  for c in "${components[@]}"; do
    "build_${c//-/_}"
  done

  build_summary "${total_start}" 24
}

case "${1:-}" in
  build)
    shift
    cmd_build "$@"
    ;;
  up)
    [[ $# -eq 3 ]] || { usage; exit 2; }
    # kwok's Exec and Logs CRDs, from the module kwok was built from (the launcher applies them).
    kwok_dir="$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@${REAL_KWOK_VERSION}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    MESHUP_REAL_KWOK_CRDS="${kwok_dir}/kustomize/crd/bases" exec python3 "${repo_root}/scripts/real/launcher.py" up "$2" "$3"
    ;;
  down)
    [[ $# -eq 2 ]] || { usage; exit 2; }
    exec python3 "${repo_root}/scripts/real/launcher.py" down "$2"
    ;;
  *)
    usage
    exit 2
    ;;
esac
