#!/usr/bin/env bash
# The GitOps engines for the real tier: Flux's own controllers (source-controller,
# helm-controller, kustomize-controller) built from their Go modules and run as host processes
# against the real clusters of scripts/real-clusters.sh, and Argo CD's CRDs.
#
#   scripts/engines.sh build               builds the pinned controllers, fetches the CRDs
#   scripts/engines.sh up DIR [hub|every]  starts the engines on the clusters in DIR (default hub)
#   scripts/engines.sh down DIR            stops them (the clusters stay up)
#   scripts/engines.sh status DIR          the engines' processes and their resident memory
#
# `build` writes into the real tier's cache, one directory per component and version:
#
#   ${MESHUP_REAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshup/real}/
#     flux-source-controller-VERSION/{source-controller,crds/*.yaml,go.mod,go.sum,.built}
#     flux-helm-controller-VERSION/{helm-controller,crds/*.yaml,...}
#     flux-kustomize-controller-VERSION/{kustomize-controller,crds/*.yaml,...}
#     argocd-crds-VERSION/crds/{application,applicationset,appproject}-crd.yaml
#
# A controller's go.mod replaces its `.../api` module with `./api`, so it cannot be `go
# install`ed: as real-clusters.sh does for kubernetes and etcd, a wrapper module generated in a
# temporary directory requires the controller and its api module at the same version, carries
# the controller's other replace directives (replace directives of a dependency are ignored, and
# helm-controller's go-digest and kustomize pins are needed to compile) and the replacements
# pins.env pins for versions the proxy refuses, then `go build` with CGO_ENABLED=0. The CRDs are
# the controller module's config/crd/bases, copied at build time; Argo CD's are the argo-cd
# module's manifests/crds (a download, nothing built). Nothing third-party lands in the repo.
#
# Each component is built into a temporary directory, its binary must carry the pinned module
# version (`go version -m`) and run, and only then is the `.built` marker (the recipe) written
# and the directory moved into place; a changed pin rebuilds. Builds run under `nice -n 19` with
# `go build -p ${MESHUP_REAL_GO_P:-1}`.
#
# `up`, `down` and `status` run scripts/real/engines.py (see there: modes, addresses, files under
# DIR).
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
usage: scripts/engines.sh build [source-controller|helm-controller|kustomize-controller|argocd-crds]...
       scripts/engines.sh up DIR [hub|every]
       scripts/engines.sh down DIR
       scripts/engines.sh status DIR
EOF
}

# module_replaces GOMOD: the module's replace directives that name another module (not a local
# directory), as go.mod lines.
module_replaces() {
  go mod edit -json "$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    if not new.get("Version"):
        continue  # => ./api and other local directories
    lhs = old["Path"] + (" " + old["Version"] if old.get("Version") else "")
    print("replace %s => %s %s" % (lhs, new["Path"], new["Version"]))
'
}

built_rows=() # "component version path"
time_rows=()  # "component seconds result"
failed=()

# recipe_is_current DEST RECIPE FILE...: the marker matches and every FILE exists.
recipe_is_current() {
  local dest="$1" recipe="$2" f
  shift 2
  [[ -f "${dest}/.built" ]] && [[ "$(cat "${dest}/.built")" == "${recipe}" ]] || return 1
  for f in "$@"; do
    [[ -e "${dest}/${f}" ]] || return 1
  done
}

# finish NAME VERSION DEST TMP START OK: moves TMP into place (OK=1) or records a failure.
finish() {
  local name="$1" version="$2" dest="$3" tmp="$4" start="$5" ok="$6"
  local took=$((SECONDS - start))
  if ! ((ok)); then
    rm -rf "${tmp}"
    failed+=("${name}-${version}")
    time_rows+=("${name}-${version} ${took} failed")
    return 0
  fi
  rm -rf "${dest}"
  mv "${tmp}" "${dest}"
  echo "${name} ${version}: done in $(fmt_duration "${took}") (${dest})" >&2
  time_rows+=("${name}-${version} ${took} built")
  built_rows+=("${name} ${version} ${dest}")
}

# build_flux COMPONENT VERSION "MOD=VER...": one Flux controller (github.com/fluxcd/COMPONENT,
# its main package at the module root) and its CRDs.
build_flux() {
  local component="$1" version="$2" pinned="$3"
  local name="flux-${component}" module="github.com/fluxcd/${component}"
  local dest="${cache_root}/${name}-${version}"
  local pins pin
  read -ra pins <<<"${pinned}"
  for pin in "${pins[@]}"; do
    if [[ "${pin}" != ?*=?* ]]; then
      echo "error: ${name} ${version}: replace pin \`${pin}\` is not MODULE=VERSION; fix it in scripts/pins.env" >&2
      exit 2
    fi
  done
  local recipe
  recipe="$(printf 'module %s@%s\napi %s/api@%s\nreplaces module go.mod%s\ncrds config/crd/bases\nCGO_ENABLED=0\n' \
    "${module}" "${version}" "${module}" "${version}" "${pins[*]:+ ${pins[*]}}")"
  if recipe_is_current "${dest}" "${recipe}" "${component}" crds; then
    echo "${name} ${version}: up to date (${dest})" >&2
    return 0
  fi

  echo "${name} ${version}: building ${module}@${version}" >&2
  local start=${SECONDS} tmp="${cache_root}/.${name}-${version}.tmp" work ok=1 dir replaces=""
  work="$(mktemp -d)"
  rm -rf "${tmp}"
  mkdir -p "${tmp}/crds"
  if ! dir="$(module_json "${module}@${version}" Dir)"; then
    ok=0
  elif ! replaces="$(module_replaces "${dir}/go.mod")"; then
    ok=0
  fi
  for pin in "${pins[@]}"; do
    replaces+="${replaces:+$'\n'}replace ${pin%%=*} => ${pin%%=*} ${pin#*=}"
  done

  if ((ok)); then
    {
      echo "// Generated by scripts/engines.sh: builds ${module}@${version}."
      echo "module meshup.invalid/real/${name}"
      echo
      echo "go 1.24"
      echo
      echo "require ("
      echo "	${module} ${version}"
      echo "	${module}/api ${version}"
      echo ")"
      echo
      echo "tool ${module}"
      if [[ -n "${replaces}" ]]; then
        echo
        echo "${replaces}"
      fi
    } >"${work}/go.mod"
    cp "${dir}"/config/crd/bases/*.yaml "${tmp}/crds/"
    chmod u+w "${tmp}"/crds/*.yaml
  fi

  if ! ((ok)); then
    :
  elif ! (cd "${work}" && GOFLAGS="${GOFLAGS:-} -mod=mod" gorun mod tidy -e >&2); then
    # -e: `tidy` also resolves the tests of the controller's packages, and the proxy refuses
    # some test-only modules (source-controller v1.9.6's helmtestserver v0.40.2); `go build`
    # below fails on any module the binary itself needs and cannot get.
    echo "${name} ${version}: \`go mod tidy\` failed in the wrapper module (kept in ${work})" >&2
    ok=0
  elif ! (cd "${work}" && CGO_ENABLED=0 gorun build -p "${go_p}" -trimpath \
    -o "${tmp}/${component}" "${module}" >&2); then
    echo "${name} ${version}: \`go build ${module}\` failed (wrapper module kept in ${work})" >&2
    ok=0
  elif ! go version -m "${tmp}/${component}" | grep -qF "$(printf '\tmod\t%s\t%s\t' "${module}" "${version}")"; then
    echo "${name} ${version}: \`go version -m\` does not name ${module} ${version}" >&2
    ok=0
  elif ! "${tmp}/${component}" --help 2>&1 | grep -q -- '--health-addr'; then
    echo "${name} ${version}: \`${component} --help\` does not list --health-addr" >&2
    ok=0
  fi
  if ((ok)); then
    cp "${work}/go.mod" "${work}/go.sum" "${tmp}/"
    echo "${recipe}" >"${tmp}/.built"
    rm -rf "${work}"
  fi
  finish "${name}" "${version}" "${dest}" "${tmp}" "${start}" "${ok}"
}

build_source_controller() {
  build_flux source-controller "${FLUX_SOURCE_CONTROLLER_VERSION}" "${FLUX_REPLACES_SOURCE_CONTROLLER:-}"
}
build_helm_controller() {
  build_flux helm-controller "${FLUX_HELM_CONTROLLER_VERSION}" "${FLUX_REPLACES_HELM_CONTROLLER:-}"
}
build_kustomize_controller() {
  build_flux kustomize-controller "${FLUX_KUSTOMIZE_CONTROLLER_VERSION}" "${FLUX_REPLACES_KUSTOMIZE_CONTROLLER:-}"
}

# Argo CD's Application, ApplicationSet and AppProject CRDs from the argo-cd module's
# manifests/crds. The module needs a newer Go than the machine's (its go.mod says so, and `go mod
# download` refuses to unpack it otherwise), hence ARGOCD_GOTOOLCHAIN.
build_argocd_crds() {
  local version="${ARGOCD_VERSION}" name=argocd-crds module=github.com/argoproj/argo-cd/v3
  local dest="${cache_root}/${name}-${version}"
  local recipe
  recipe="$(printf 'module %s@%s\ncrds manifests/crds\n' "${module}" "${version}")"
  if recipe_is_current "${dest}" "${recipe}" crds/application-crd.yaml; then
    echo "${name} ${version}: up to date (${dest})" >&2
    return 0
  fi
  echo "${name} ${version}: downloading ${module}@${version}" >&2
  local start=${SECONDS} tmp="${cache_root}/.${name}-${version}.tmp" dir ok=1 f
  rm -rf "${tmp}"
  mkdir -p "${tmp}/crds"
  if ! dir="$(GOTOOLCHAIN="${ARGOCD_GOTOOLCHAIN:-${GOTOOLCHAIN:-local}}" module_json "${module}@${version}" Dir)"; then
    ok=0
  else
    for f in application-crd.yaml applicationset-crd.yaml appproject-crd.yaml; do
      if ! cp "${dir}/manifests/crds/${f}" "${tmp}/crds/"; then
        ok=0
      fi
    done
    chmod u+w "${tmp}"/crds/*.yaml
    echo "${recipe}" >"${tmp}/.built"
  fi
  finish "${name}" "${version}" "${dest}" "${tmp}" "${start}" "${ok}"
}

cmd_build() {
  if ! command -v go >/dev/null 2>&1; then
    echo "error: \`go\` is not on PATH; the engines are built from Go modules, so they need Go (1.26 or newer)" >&2
    exit 1
  fi
  local components=("$@") c
  if ((${#components[@]} == 0)); then
    components=(argocd-crds source-controller kustomize-controller helm-controller)
  fi
  for c in "${components[@]}"; do
    case "${c}" in
      source-controller | helm-controller | kustomize-controller | argocd-crds) ;;
      *)
        echo "error: unknown component \`${c}\` (known: source-controller, helm-controller, kustomize-controller, argocd-crds)" >&2
        exit 2
        ;;
    esac
  done

  build_lock '`engines.sh build`'

  local total_start=${SECONDS}
  for c in "${components[@]}"; do
    "build_${c//-/_}"
  done

  build_summary "${total_start}" 30
}

case "${1:-}" in
  build)
    shift
    cmd_build "$@"
    ;;
  up)
    [[ $# -eq 2 || $# -eq 3 ]] || { usage; exit 2; }
    exec python3 "${repo_root}/scripts/real/engines.py" up "$2" "${3:-hub}"
    ;;
  down | status)
    [[ $# -eq 2 ]] || { usage; exit 2; }
    exec python3 "${repo_root}/scripts/real/engines.py" "$1" "$2"
    ;;
  *)
    usage
    exit 2
    ;;
esac
