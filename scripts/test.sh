#!/usr/bin/env bash
# Runs meshup's whole test suite on a fresh machine, both tiers:
#
# - the emulator tier: unit tests, and integration tests driving the real helm and kubectl
#   (scripts/fetch-tools.sh) against in-memory API servers, with Istio's own charts
#   (scripts/istio-charts.sh);
# - the real tier (tests/real): real kube-apiservers, etcd, controllers, kwok nodes and a real
#   istiod per istiod pod, built from their Go modules by scripts/real-clusters.sh build (cached
#   outside the repo; a cold build takes about 40 minutes on two cores) and started per test;
#   GitOps engines (Flux's controllers, Argo CD's CRDs) from scripts/engines.sh build.
#
# The real tier needs Go, root (network namespaces and a bridge), iproute2 and openssl. Without
# them the run fails, naming what is missing; MESHUP_REAL_TIER=0 leaves the real tier out (for
# a machine that cannot run it; CI never sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

real_tier="${MESHUP_REAL_TIER:-1}"
if [[ "${real_tier}" != 0 ]]; then
  missing=()
  command -v go >/dev/null || missing+=("go (the Go toolchain)")
  ((EUID == 0)) || missing+=("root (network namespaces and a bridge)")
  command -v ip >/dev/null || missing+=("ip (iproute2)")
  command -v openssl >/dev/null || missing+=("openssl")
  command -v python3 >/dev/null || missing+=("python3")
  if ((${#missing[@]} > 0)); then
    printf 'error: the real test tier needs: %s\n' "${missing[*]}" >&2
    echo "install them, or run the emulator tier alone with MESHUP_REAL_TIER=0" >&2
    exit 1
  fi
fi

scripts/fetch-tools.sh
# Istio's own charts, stamped, from the istio.io/istio Go module (needs Go).
scripts/istio-charts.sh >/dev/null

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

nextest=0
cargo nextest --version >/dev/null 2>&1 && nextest=1

# The test binaries first, timed on their own (a cold build on a fresh clone), then the tier.
start=${SECONDS}
if ((nextest)); then
  cargo nextest run --workspace --locked --no-run
else
  cargo test --workspace --locked --no-run
fi
echo "test build: $((SECONDS - start))s"

start=${SECONDS}
if ((nextest)); then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --locked --no-fail-fast "$@"
fi
echo "emulator tier: $((SECONDS - start))s"

if [[ "${real_tier}" == 0 ]]; then
  echo "MESHUP_REAL_TIER=0: the real tier was not run" >&2
  exit 0
fi

start=${SECONDS}
scripts/real-clusters.sh build
echo "real tier binaries: $((SECONDS - start))s (built or found in the cache)"
start=${SECONDS}
# Flux's controllers and Argo CD's CRDs for the engines tests (tests/real/engines.rs).
scripts/engines.sh build
echo "engines: $((SECONDS - start))s (built or found in the cache)"
start=${SECONDS}
# One test at a time: each starts its own clusters (a real control plane per cluster and a real
# istiod per istiod pod), which is what two cores hold.
if ((nextest)); then
  cargo nextest run --locked --no-fail-fast --test real --test-threads 1 "$@"
else
  cargo test --locked --no-fail-fast --test real "$@" -- --test-threads 1
fi
echo "real tier: $((SECONDS - start))s"
