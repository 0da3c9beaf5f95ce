#!/usr/bin/env bash
# Try meshup on two kind clusters: creates them on one docker network, installs a
# multi-primary mesh across them, and proves it works with `meshup verify --traffic`.
# Not run in CI (it needs docker, kind and the internet for images).
#
#   examples/kind/walkthrough.sh          create, install, verify
#   examples/kind/walkthrough.sh down     uninstall and delete the clusters
#
# Needs on PATH: docker, kind, kubectl, helm (3.12+ or 4) and meshup (cargo install --path .).
# ISTIO_VERSION picks the Istio release (default 1.28.1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mesh="${here}/mesh.yaml"
clusters=(cluster1 cluster2)
version="${ISTIO_VERSION:-1.28.1}"

for tool in docker kind kubectl helm meshup; do
  command -v "${tool}" >/dev/null || { echo "error: \`${tool}\` is not on PATH" >&2; exit 1; }
done

if [[ "${1:-}" == down ]]; then
  [[ -f "${mesh}" ]] && meshup uninstall -f "${mesh}" --yes || true
  for c in "${clusters[@]}"; do kind delete cluster --name "${c}"; done
  exit 0
fi

for c in "${clusters[@]}"; do
  kind get clusters | grep -qx "${c}" || kind create cluster --name "${c}"
done

# kubeconfig points at 127.0.0.1:<port> for each cluster, which the other cluster cannot reach.
# Inside docker, every kind node sits on the `kind` network: each API server is reachable from
# the other cluster at its control-plane container's address, port 6443 (that address is in the
# API server's certificate).
address() {
  docker inspect -f '{{ (index .NetworkSettings.Networks "kind").IPAddress }}' "$1-control-plane"
}

{
  echo "meshID: mesh1"
  echo "network: network1"
  echo "istio:"
  echo "  version: ${version}"
  echo "clusters:"
  for c in "${clusters[@]}"; do
    echo "  - name: ${c}"
    echo "    context: kind-${c}"
    echo "    apiServer: https://$(address "${c}"):6443"
  done
} >"${mesh}"
echo "wrote ${mesh}:"
cat "${mesh}"

meshup install -f "${mesh}"
# istiod may still be syncing right after the install; traffic needs the images pulled.
meshup verify -f "${mesh}" --wait 3m --traffic
echo
echo "done. \`meshup status -f ${mesh}\` shows the mesh; \`$0 down\` removes it."
