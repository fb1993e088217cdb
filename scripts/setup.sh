#!/usr/bin/env bash
# Installs everything alarm-verifier needs on a Debian 12 machine, idempotently:
# system packages, the ONNX Runtime library, the detector model and the test footage.
# A second run only checks and finishes in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${ALARM_VERIFIER_SHARED:-$ROOT/../shared}"
ORT_VERSION=1.31.1
# sha256 of onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl, the one wheel the platform tags
# below select; pip refuses any other file (--require-hashes).
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_DIR="$ROOT/third_party/onnxruntime"
MODEL_SHA256=e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd
MODEL_URL=https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx
FOOTAGE_DIR="$ROOT/testdata"
SOURCES_DIR="$FOOTAGE_DIR/sources"
DEVSET_DIR="$FOOTAGE_DIR/devset"
# Bumped whenever the footage or development-set recipe changes, so that existing copies are rebuilt.
FOOTAGE_VERSION=4
# Bumped whenever make-devset's clips change (2: far targets on wide views; 3: lost views and changes of light; 4: snow, fog, cloud shadows), so the set is rebuilt.
DEVSET_VERSION=4
# Photographs for the development set, and where they come from.
OPENCV_IMAGES=(messi5.jpg squirrel_cls.jpg)
SKIMAGE_WHEEL="scikit-image==0.26.0"
SKIMAGE_IMAGES=(astronaut.png chelsea.png motorcycle_left.png grass.png gravel.png)
ULTRALYTICS_WHEEL="ultralytics==8.4.190"
ULTRALYTICS_IMAGES=(bus.jpg zidane.jpg)
# Footage for `alarm-verifier bench-storm` (scripts/storm.sh), with a version of its own: bumping it
# rebuilds only the storm footage, not the development set.
STORM_DIR="$FOOTAGE_DIR/storm"
STORM_VERSION=2
# Each storm file's length in frames at 15 fps (120 s). The benchmark's RTSP server plays a file once
# from the service's first connect; a whole run (start-up, filling, storm, verdicts) takes about a
# minute, so this leaves a minute's margin.
STORM_FRAMES=1800

APT_PACKAGES=(
  pkg-config unzip ca-certificates curl openssl procps
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  mosquitto python3 python3-yaml chromium
  # tests/install.rs checks the package's unit with systemd-analyze (Debian 12 has it, containers may not).
  systemd
  # tests/transports.rs: VLC's RTSP server, which refuses RTP over TCP as many older cameras do.
  vlc-bin vlc-plugin-base
)

log() { printf '[setup] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_system_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "system packages: present"; return; fi
  log "system packages: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # mosquitto's Debian package starts a system broker on 1883; tests start their own on free ports.
}

# cargo fmt and clippy, which CI runs before the tests (README, "Developing").
install_rust_tools() {
  if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    log "rustfmt and clippy: present"; return
  fi
  log "rustfmt and clippy: installing"
  rustup component add rustfmt clippy
}

install_onnxruntime() {
  local lib="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
  if [ -f "$lib" ]; then log "onnxruntime $ORT_VERSION: present"; return; fi
  log "onnxruntime $ORT_VERSION: fetching the PyPI wheel"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --require-hashes -d "$tmp" -r /dev/stdin <<<"onnxruntime==$ORT_VERSION --hash=sha256:$ORT_WHEEL_SHA256"
  # pip checked the hash; this checks that the file kept is the one it checked.
  echo "$ORT_WHEEL_SHA256  $(ls "$tmp"/onnxruntime-*.whl)" | sha256sum --check --status \
    || { echo "setup: the onnxruntime wheel does not have sha256 $ORT_WHEEL_SHA256" >&2; exit 1; }
  mkdir -p "$ORT_DIR"
  unzip -q -o -j "$tmp"/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so*' -d "$ORT_DIR"
  rm -rf "$tmp"
  [ -f "$lib" ] || { echo "setup: $lib not found in the onnxruntime wheel" >&2; exit 1; }
}

sha_ok() { echo "$MODEL_SHA256  $1" | sha256sum --check --status; }

install_model() {
  local dest="$ROOT/models/yolox_nano.onnx"
  if [ -f "$dest" ] && sha_ok "$dest"; then log "model: present"; return; fi
  mkdir -p "$ROOT/models"
  if [ -f "$SHARED/models/yolox_nano.onnx" ]; then
    log "model: copying from $SHARED/models"
    cp "$SHARED/models/yolox_nano.onnx" "$dest.part"
    chmod 644 "$dest.part"
  else
    log "model: downloading $MODEL_URL"
    curl -fsSL "$MODEL_URL" -o "$dest.part"
  fi
  sha_ok "$dest.part" || { echo "setup: model sha256 mismatch (expected $MODEL_SHA256)" >&2; rm -f "$dest.part"; exit 1; }
  mv "$dest.part" "$dest"
}

# Re-encodes a clip to H.264 with a 1 s GOP, as an IP camera sends it: one slice per frame, or with
# "sliced" two, as many cameras do (the test RTSP server then repeats SPS/PPS before each slice).
transcode_h264() {
  local src="$1" dest="$2" slicing="threads=1"
  [ "${3:-}" = sliced ] && slicing="tune=zerolatency"
  gst-launch-1.0 -q filesrc location="$src" ! decodebin ! videoconvert ! video/x-raw,format=I420 \
    ! x264enc speed-preset=veryfast key-int-max=10 bframes=0 $slicing \
    ! video/x-h264,profile=constrained-baseline ! h264parse ! mp4mux ! filesink location="$dest.part" >/dev/null
  mv "$dest.part" "$dest"
}

# Downloads Debian's opencv-doc into the folder $1, unpacks it there and prints the folder that holds
# its sample footage (vtest.avi: people walking, parked vehicles; tree.avi: a tree in wind).
opencv_doc_data() {
  local tmp="$1"
  (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1) \
    || { as_root apt-get update -qq >&2; (cd "$tmp" && apt-get download opencv-doc >/dev/null); }
  dpkg -x "$tmp"/opencv-doc_*.deb "$tmp/x"
  dirname "$(find "$tmp/x" -name vtest.avi | head -n1)"
}

have_all_images() {
  for f in "${OPENCV_IMAGES[@]}" "${SKIMAGE_IMAGES[@]}" "${ULTRALYTICS_IMAGES[@]}"; do
    [ -f "$SOURCES_DIR/$f" ] || return 1
  done
}

install_footage() {
  if [ -f "$FOOTAGE_DIR/vtest.mp4" ] && [ -f "$FOOTAGE_DIR/vtest_multislice.mp4" ] && [ -f "$FOOTAGE_DIR/tree.mp4" ] \
    && [ -f "$FOOTAGE_DIR/vtest.avi" ] && have_all_images \
    && [ "$(cat "$FOOTAGE_DIR/.version" 2>/dev/null)" = "$FOOTAGE_VERSION" ]; then
    log "footage: present"; return
  fi
  rm -rf "$DEVSET_DIR"
  log "footage: building from Debian's opencv-doc"
  local tmp; tmp="$(mktemp -d)"
  local data; data="$(opencv_doc_data "$tmp")"
  mkdir -p "$FOOTAGE_DIR"
  transcode_h264 "$data/vtest.avi" "$FOOTAGE_DIR/vtest.mp4"
  transcode_h264 "$data/tree.avi" "$FOOTAGE_DIR/tree.mp4"
  transcode_h264 "$data/vtest.avi" "$FOOTAGE_DIR/vtest_multislice.mp4" sliced
  # The original, for the detector parity test: its decoded frames do not depend on an encoder.
  cp "$data/vtest.avi" "$FOOTAGE_DIR/vtest.avi"
  mkdir -p "$SOURCES_DIR"
  for f in "${OPENCV_IMAGES[@]}"; do cp "$data/$f" "$SOURCES_DIR/"; done
  # The storm footage's empty scene (install_storm_footage).
  cp "$data/tree.avi" "$SOURCES_DIR/"
  log "footage: photographs from the scikit-image and ultralytics wheels"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp/wheels" "$SKIMAGE_WHEEL" "$ULTRALYTICS_WHEEL"
  for f in "${SKIMAGE_IMAGES[@]}"; do unzip -q -o -j "$tmp"/wheels/scikit_image-*.whl "skimage/data/$f" -d "$SOURCES_DIR"; done
  for f in "${ULTRALYTICS_IMAGES[@]}"; do unzip -q -o -j "$tmp"/wheels/ultralytics-*.whl "ultralytics/assets/$f" -d "$SOURCES_DIR"; done
  rm -rf "$tmp"
  echo "$FOOTAGE_VERSION" > "$FOOTAGE_DIR/.version"
}

# One storm camera's two streams, frame for frame from one decode: "$dest-1080.mp4" (main stream,
# 1920x1080, ~4 Mbit/s) and "$dest-360.mp4" (detect stream, 640x360, ~500 kbit/s). Both at 15 fps,
# H.264 with an IDR every 30 frames (2 s GOP), no B-frames and one slice per picture, as cameras
# send it. The source is played $copies times in a row, cropped to 16:9 and cut at STORM_FRAMES.
# With $4, only the source's first $4 frames at 15 fps are played: the source (320x240, as tree.avi
# is) is decoded once to raw frames at 15 fps, and that many of them are piped in $copies times
# (identity's eos-after does not end a stream in this GStreamer).
storm_camera_streams() {
  local src="$1" dest="$2" copies="$3" frames="${4:-}" sources=() i
  local raw="$dest.part.yuv" frame_bytes=$((320 * 240 * 3 / 2))
  if [ -n "$frames" ]; then
    gst-launch-1.0 -q filesrc "location=$src" ! decodebin ! videorate ! video/x-raw,framerate=15/1 \
      ! videoconvert ! videoscale ! video/x-raw,format=I420,width=320,height=240 \
      ! filesink "location=$raw" >/dev/null
    sources=(fdsrc fd=0 "blocksize=$frame_bytes" ! rawvideoparse width=320 height=240 format=i420
      framerate=15/1 ! c.)
  else
    for ((i = 0; i < copies; i++)); do sources+=(filesrc "location=$src" ! decodebin ! videoconvert ! c.); done
  fi
  local x264=(x264enc speed-preset=veryfast pass=cbr key-int-max=30 bframes=0 sliced-threads=false
    option-string=scenecut=0)
  # The pipeline ends at STORM_FRAMES, closing the pipe on the copies still to come.
  { for ((i = 0; i < copies; i++)); do
    if [ -n "$frames" ]; then head -c $((frames * frame_bytes)) "$raw"; fi
  done 2>/dev/null || true; } | gst-launch-1.0 -q concat name=c ! identity single-segment=true ! videorate ! video/x-raw,framerate=15/1 \
    ! identity eos-after="$STORM_FRAMES" ! aspectratiocrop aspect-ratio=16/9 ! videoconvert \
    ! video/x-raw,format=I420 ! tee name=t \
    t. ! queue ! videoscale ! video/x-raw,width=1920,height=1080,pixel-aspect-ratio=1/1 \
    ! "${x264[@]}" bitrate=4000 ! video/x-h264,profile=high ! h264parse ! mp4mux \
    ! filesink location="$dest-1080.mp4.part" \
    t. ! queue ! videoscale ! video/x-raw,width=640,height=360,pixel-aspect-ratio=1/1 \
    ! "${x264[@]}" bitrate=500 ! video/x-h264,profile=high ! h264parse ! mp4mux \
    ! filesink location="$dest-360.mp4.part" \
    "${sources[@]}" >/dev/null
  rm -f "$raw"
  mv "$dest-1080.mp4.part" "$dest-1080.mp4"
  mv "$dest-360.mp4.part" "$dest-360.mp4"
}

# The cameras of `alarm-verifier bench-storm`: people walking (vtest.avi) and an empty scene with
# natural motion (tree.avi), each as a main and a detect stream (storm_camera_streams).
install_storm_footage() {
  if [ -f "$STORM_DIR/people-1080.mp4" ] && [ -f "$STORM_DIR/people-360.mp4" ] \
    && [ -f "$STORM_DIR/empty-1080.mp4" ] && [ -f "$STORM_DIR/empty-360.mp4" ] \
    && [ "$(cat "$STORM_DIR/.version" 2>/dev/null)" = "$STORM_VERSION" ]; then
    log "storm footage: present"; return
  fi
  log "storm footage: building (about a minute)"
  local started=$SECONDS
  if [ ! -f "$SOURCES_DIR/tree.avi" ]; then
    local tmp; tmp="$(mktemp -d)"
    local data; data="$(opencv_doc_data "$tmp")"
    mkdir -p "$SOURCES_DIR"
    cp "$data/tree.avi" "$SOURCES_DIR/"
    rm -rf "$tmp"
  fi
  rm -f "$STORM_DIR/.version"
  mkdir -p "$STORM_DIR"
  # vtest.avi lasts 79.5 s at 10 fps: two copies make STORM_FRAMES. tree.avi (29.6 s, 68 frames)
  # has a hand pass over the lens from about 22 s (the detector rightly calls it a person), so the
  # empty scene is its first 18 s (270 frames), seven times.
  storm_camera_streams "$FOOTAGE_DIR/vtest.avi" "$STORM_DIR/people" 2
  storm_camera_streams "$SOURCES_DIR/tree.avi" "$STORM_DIR/empty" 7 270
  echo "$STORM_VERSION" > "$STORM_DIR/.version"
  log "storm footage: built in $((SECONDS - started)) s"
}

# The labelled development set for `alarm-verifier eval`, made by the release binary from the footage.
install_devset() {
  if [ -f "$DEVSET_DIR/labels.tsv" ] && [ "$(cat "$DEVSET_DIR/.version" 2>/dev/null)" = "$DEVSET_VERSION" ]; then
    log "development set: present"; return
  fi
  log "development set: building (compiles the release binary once)"
  (cd "$ROOT" && cargo build --release --quiet && target/release/alarm-verifier make-devset \
    --footage "$FOOTAGE_DIR" --images "$SOURCES_DIR" --out "$DEVSET_DIR.part" >/dev/null)
  echo "$DEVSET_VERSION" > "$DEVSET_DIR.part/.version"
  rm -rf "$DEVSET_DIR" && mv "$DEVSET_DIR.part" "$DEVSET_DIR"
}

# The Python modules the tests talk to, in a venv of their own beside ONNX Runtime: pysiaalarm (a
# real SIA DC-09 receiver, standing in for the alarm receiving centre) and aiosmtpd (a real mail
# server, receiving the verdict mails).
TEST_VENV="$ROOT/third_party/test-venv"
PYSIAALARM_VERSION=3.2.2
AIOSMTPD_VERSION=1.4.6
install_test_python() {
  if "$TEST_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pysiaalarm') != '$PYSIAALARM_VERSION' or m.version('aiosmtpd') != '$AIOSMTPD_VERSION')" 2>/dev/null; then
    log "test venv (pysiaalarm $PYSIAALARM_VERSION, aiosmtpd $AIOSMTPD_VERSION): present"; return
  fi
  log "test venv: installing pysiaalarm $PYSIAALARM_VERSION and aiosmtpd $AIOSMTPD_VERSION"
  if [ ! -x "$TEST_VENV/bin/python" ]; then
    python3 -m venv "$TEST_VENV" \
      || { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; python3 -m venv "$TEST_VENV"; }
  fi
  "$TEST_VENV/bin/python" -m pip install --quiet "pysiaalarm==$PYSIAALARM_VERSION" "aiosmtpd==$AIOSMTPD_VERSION"
}

install_system_packages
install_rust_tools
install_onnxruntime
install_model
install_footage
install_storm_footage
install_devset
install_test_python
log "ready"
