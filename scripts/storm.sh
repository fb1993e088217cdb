#!/usr/bin/env bash
# The alarm storm benchmark (alarm-verifier bench-storm), twice back to back: cameras with detect
# streams, then without (--no-detect). Defaults: 100 cameras, 40 alarms on distinct cameras within
# 4 s, half on cameras showing people and half on empty scenes. Arguments go to both runs, e.g.
# scripts/storm.sh --cameras 10 --alarms 4, or --extra '[verdict]\nworkers = 2'.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --quiet
echo "=== bench-storm: with detect streams"
cargo run --release --quiet -- bench-storm "$@"
echo
echo "=== bench-storm: without detect streams"
cargo run --release --quiet -- bench-storm --no-detect "$@"
