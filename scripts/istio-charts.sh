#!/usr/bin/env bash
# Fetches Istio's own Helm charts, stamped as a release build stamps them, for the tests:
#
#   .tools/istio/VERSION/{base,istiod,gateway,cni,ztunnel}   for each build in scripts/pins.env
#   .tools/gateway-api/VERSION/standard-crds.yaml             the Gateway API CRDs Istio pins
#
# The charts come from the `istio.io/istio` Go module (its zip holds `manifests/charts` of the
# same commit) through the Go module proxy, which every developer machine and CI reaches; the
# module lands in Go's module cache (outside the repo, reused). Each chart is copied and
# stamped: `version` and `appVersion` in Chart.yaml, and in values.yaml the image `tag: latest`
# and the test hub `registry.istio.io/testing`, become the build's Istio version and
# ${ISTIO_HUB} (what Istio's release builder does to the charts it publishes). Nothing here is
# committed (.tools is ignored). A re-run with the stamped charts in place does nothing.
#
# The Gateway API CRDs are the CustomResourceDefinitions of the `sigs.k8s.io/gateway-api`
# module's config/crd/standard (what its release's standard-install.yaml holds, less the
# ValidatingAdmissionPolicy that file also carries).
#
# Prints the chart directories and CRD files it provides, one a line.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=pins.env
source "${repo_root}/scripts/pins.env"
out_root="${repo_root}/.tools/istio"

if ! command -v go >/dev/null 2>&1; then
  echo "error: \`go\` is not on PATH; Istio's charts come from the istio.io/istio Go module, so the tests need Go (1.26 or newer)" >&2
  exit 1
fi

# chart directory in the module -> the name meshup and the tests use
charts=(
  "base base"
  "istio-control/istio-discovery istiod"
  "gateway gateway"
  "istio-cni cni"
  "ztunnel ztunnel"
)

# module_dir MODULE@VERSION: downloads a module into Go's module cache; prints its directory.
module_dir() {
  local scratch dir
  # A throwaway directory so that `go mod download` runs outside any go.mod of ours.
  scratch="$(mktemp -d)"
  dir="$(cd "${scratch}" && GOFLAGS=-mod=mod timeout 900 go mod download -json "$1" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit("go mod download: " + d.get("Error","no Dir")))')"
  rm -rf "${scratch}"
  echo "${dir}"
}

# stamp DIR VERSION: Chart.yaml's version and appVersion, values.yaml's tag and hub.
stamp() {
  local dir="$1" version="$2"
  sed -i -e "s/^version: .*/version: ${version}/" -e "s/^appVersion: .*/appVersion: ${version}/" \
    "${dir}/Chart.yaml"
  if [[ -f "${dir}/values.yaml" ]]; then
    sed -i -E -e "s/^([[:space:]]*)tag: latest[[:space:]]*$/\1tag: ${version}/" \
      -e "s#^([[:space:]]*)hub: registry\.istio\.io/testing[[:space:]]*\$#\1hub: ${ISTIO_HUB}#" \
      "${dir}/values.yaml"
  fi
}

for build in ${ISTIO_BUILDS}; do
  version="${build%%=*}"
  module_version="${build#*=}"
  dest="${out_root}/${version}"
  marker="${dest}/.module-version"
  if [[ -f "${marker}" ]] && [[ "$(cat "${marker}")" == "${module_version}" ]]; then
    echo "istio ${version}: up to date" >&2
  else
    echo "istio ${version}: fetching istio.io/istio@${module_version}" >&2
    dir="$(module_dir "istio.io/istio@${module_version}")"
    want="$(cut -d. -f1-2 <<<"${version}")"
    have="$(tr -d '[:space:]' <"${dir}/VERSION")"
    if [[ "${have}" != "${want}" ]]; then
      echo "error: istio.io/istio@${module_version} is Istio ${have} (its VERSION file), but scripts/pins.env stamps it ${version}" >&2
      exit 1
    fi
    tmp="${out_root}/.${version}.tmp"
    rm -rf "${tmp}"
    mkdir -p "${tmp}"
    for chart in "${charts[@]}"; do
      from="${chart%% *}"
      name="${chart#* }"
      cp -R "${dir}/manifests/charts/${from}" "${tmp}/${name}"
      chmod -R u+w "${tmp}/${name}"
      stamp "${tmp}/${name}" "${version}"
    done
    echo "${module_version}" >"${tmp}/.module-version"
    rm -rf "${dest}"
    mv "${tmp}" "${dest}"
    echo "istio ${version}: stamped charts in ${dest}" >&2
  fi
  for chart in "${charts[@]}"; do
    echo "${dest}/${chart#* }"
  done
done

for version in ${GATEWAY_API_VERSIONS}; do
  dest="${repo_root}/.tools/gateway-api/${version}/standard-crds.yaml"
  if [[ -s "${dest}" ]]; then
    echo "gateway-api ${version}: up to date" >&2
  else
    echo "gateway-api ${version}: fetching sigs.k8s.io/gateway-api@${version}" >&2
    dir="$(module_dir "sigs.k8s.io/gateway-api@${version}")"
    mkdir -p "$(dirname "${dest}")"
    first=1
    for file in "${dir}"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
      grep -q '^kind: CustomResourceDefinition' "${file}" || continue
      ((first)) || echo "---"
      # Each file starts with its own `---`.
      sed '/^---$/d' "${file}"
      first=0
    done >"${dest}.tmp"
    mv "${dest}.tmp" "${dest}"
  fi
  echo "${dest}"
done
