#!/usr/bin/env bash
# Measures what the alarm records cost and how fast the API lists them: a site with one 1080p and
# one 640x360 camera (the storm footage, 15 fps, 2 s GOP), an alarm on each over the HTTP webhook,
# the evidence JPEG and clip sizes of each, then the store filled to 1,000 records and the time of
# GET /api/alarms?limit=1000 (median of 10).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --quiet
BIN=target/release/alarm-verifier
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MQTT=$(free_port); RTSP=$(free_port); HTTP=$(free_port); TOKEN=records-bench
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT" > "$WORK/mosquitto.conf"
/usr/sbin/mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 & PIDS+=($!)
$BIN serve-rtsp --port "$RTSP" cam1080=testdata/storm/people-1080.mp4 cam360=testdata/storm/people-360.mp4 \
  >"$WORK/rtsp.log" 2>&1 & PIDS+=($!)
cat > "$WORK/site.toml" <<TOML
site = "records"
[mqtt]
port = $MQTT
[http]
listen = "127.0.0.1:$HTTP"
token = "$TOKEN"
[store]
path = "$WORK/store/alarm-verifier.db"
[[camera]]
id = "cam1080"
url = "rtsp://127.0.0.1:$RTSP/cam1080"
[[camera]]
id = "cam360"
url = "rtsp://127.0.0.1:$RTSP/cam360"
TOML
sleep 1
$BIN run --config "$WORK/site.toml" >"$WORK/service.log" 2>&1 & PIDS+=($!)
api() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP$1"; }
for _ in $(seq 60); do api /healthz >/dev/null 2>&1 && break; sleep 0.5; done
sleep 6   # buffers fill with the pre-alarm window
for cam in cam1080 cam360; do
  curl -sf -H "Authorization: Bearer $TOKEN" -d "{\"alarm_id\":\"rec-$cam\"}" "http://127.0.0.1:$HTTP/api/alarms/$cam" >/dev/null
done
sleep 8   # the post-alarm window, then the clip is made
echo "storage per alarm (window 2 s before + 4 s after, from the keyframe before):"
for cam in cam1080 cam360; do
  jpeg=$(api "/api/alarms/rec-$cam/evidence.jpg" | wc -c)
  clip=$(api "/api/alarms/rec-$cam/clip.mp4" | wc -c)
  verdict=$(api "/api/alarms/rec-$cam" | python3 -c 'import json,sys; print(json.load(sys.stdin)["verdict"])')
  printf '  %-8s verdict %-12s evidence JPEG %7d bytes, clip MP4 %8d bytes\n' "$cam" "$verdict" "$jpeg" "$clip"
done
python3 - "$WORK/store/alarm-verifier.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
for i in range(998):
    for table in ("alarms", "verdicts"):
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        src = "rec-cam1080" if i % 2 else "rec-cam360"
        sel = ", ".join("?" if c == "alarm_id" else c for c in cols)
        db.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {sel} FROM {table} WHERE alarm_id = ?",
                   (f"fill-{i}", src))
db.commit()
print("  records in the store:", db.execute("SELECT COUNT(*) FROM alarms").fetchone()[0])
PY
times=()
for _ in $(seq 10); do
  times+=("$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP/api/alarms?limit=1000")")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "GET /api/alarms?limit=1000: median %.1f ms (min %.1f, max %.1f), ", a[int((NR+1)/2)]*1000, a[1]*1000, a[NR]*1000}'
api "/api/alarms?limit=1000" | wc -c | awk '{printf "%d bytes\n", $1}'
t=$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP/")
python3 -c "print(f\"GET / (the console, 50 alarms): {$t*1000:.1f} ms\")"
for cam in cam1080 cam360; do
  t=$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP/api/cameras/$cam/snapshot.jpg")
  python3 -c "print(f\"GET /api/cameras/$cam/snapshot.jpg (a keyframe decoded now): {$t*1000:.0f} ms\")"
done
