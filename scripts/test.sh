#!/usr/bin/env bash
# Runs meshup's whole test suite on a fresh machine: fetches the real helm and kubectl the
# end-to-end tests drive (scripts/fetch-tools.sh) and Istio's own charts they install
# (scripts/istio-charts.sh), then formatting, lints, and every test of
# the workspace (unit tests, and integration tests driving the real tools against in-memory API servers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/fetch-tools.sh
# Istio's own charts, stamped, from the istio.io/istio Go module (needs Go).
scripts/istio-charts.sh >/dev/null

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --locked --no-fail-fast "$@"
fi
