#!/usr/bin/env bash
# The Python tools for developers (not needed to run or test the service): the YOLOX reference,
# the generator of the small layout test models, and the ONNX Runtime side of the benchmark.
# Installs them into third_party/pyenv (git-ignored); idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/third_party/pyenv"
PACKAGES=(onnxruntime==1.31.1 onnx numpy opencv-python-headless)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
fi
if ! "$VENV/bin/python" -c "import onnxruntime, onnx, numpy, cv2" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi
echo "$VENV/bin/python"
