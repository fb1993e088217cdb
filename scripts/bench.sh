#!/usr/bin/env bash
# The detector benchmark, with Python onnxruntime side by side (installs the tools environment once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
scripts/pytools.sh >/dev/null
cargo run --release --quiet -- bench "$@"
