#!/usr/bin/env bash
# Headless locust against the embedded demo, bounded in time, on 127.0.0.1 only.
#
#   loadtest/run-locust.sh [-t 60s] [-u 4] [-r 2] [-o locust-report] [--host URL]
#
# Without --host: starts `sd-gateway demo --serve` (as `python -m gateway demo`) on a free
# loopback port, waits for its story to end and its "serving on" line, clears faults the
# story left on its simulated replicas, waits (at most 60 s) for every pool to be available,
# runs locust, stops the demo. With --host: runs locust against that gateway (it must be on 127.0.0.1).
# Writes locust's CSV (<out>/locust_stats.csv, ...), its HTML report (<out>/locust.html),
# the gateway tally (<out>/tally.json) and, with the demo, <out>/demo.log.
# PYTHON selects the interpreter (default: python3). Exit status: locust's (1 on failures).
set -euo pipefail

RUN_TIME=60s
USERS=4
SPAWN_RATE=2
OUT=locust-report
HOST=""
DEMO_STORY_S=${DEMO_STORY_S:-6}
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    -t|--run-time) RUN_TIME=$2; shift 2 ;;
    -u|--users) USERS=$2; shift 2 ;;
    -r|--spawn-rate) SPAWN_RATE=$2; shift 2 ;;
    -o|--out) OUT=$2; shift 2 ;;
    --host) HOST=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run-locust.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done

# Seconds in RUN_TIME (locust accepts e.g. 90, 90s, 2m, 1h30m), to bound the whole run.
run_seconds() {
  local spec=$1 total=0 num unit
  [[ $spec =~ ^[0-9]+$ ]] && { echo "$spec"; return; }
  while [[ $spec =~ ^([0-9]+)([hms])(.*)$ ]]; do
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]} spec=${BASH_REMATCH[3]}
    case $unit in h) total=$((total + num * 3600)) ;; m) total=$((total + num * 60)) ;; s) total=$((total + num)) ;; esac
  done
  [ -z "$spec" ] || { echo "run-locust.sh: cannot read run time $RUN_TIME" >&2; exit 2; }
  echo "$total"
}
LIMIT_S=$(( $(run_seconds "$RUN_TIME") + 60 ))

cd "$(dirname "$0")/.."
mkdir -p "$OUT"
DEMO_PID=""

cleanup() {
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    kill -TERM "$DEMO_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$DEMO_PID" 2>/dev/null || true
    wait "$DEMO_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "$HOST" ]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # The demo tells its story (with injected faults) for DEMO_STORY_S seconds, then serves.
  "$PYTHON" -m gateway demo --serve --port "$PORT" --duration "$DEMO_STORY_S" >"$OUT/demo.log" 2>&1 &
  DEMO_PID=$!
  deadline=$((SECONDS + DEMO_STORY_S + 60))
  until grep -q "serving on" "$OUT/demo.log" 2>/dev/null; do
    if ! kill -0 "$DEMO_PID" 2>/dev/null; then
      echo "run-locust.sh: the demo exited early; see $OUT/demo.log" >&2
      tail -20 "$OUT/demo.log" >&2
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "run-locust.sh: the demo did not start serving in time" >&2
      exit 1
    fi
    sleep 0.5
  done
  HOST="http://127.0.0.1:$PORT"
  # Start from the steady state: clear any fault the story left on the simulated replicas
  # (its last act can be skipped when the story is short), then wait until every pool
  # is available again (at most 60 s; capacity errors hold a pool for their Retry-After).
  "$PYTHON" - "$HOST" <<'PY'
import json, sys, time, urllib.request

def pools():
    with urllib.request.urlopen(sys.argv[1] + "/v1/pools", timeout=2) as answer:
        return json.load(answer)["pools"]

for pool in pools():
    for replica in pool["replicas"]:
        clear = urllib.request.Request(replica["url"] + "/admin/faults", method="DELETE")
        try:
            urllib.request.urlopen(clear, timeout=2).close()
        except OSError as exc:
            print(f"run-locust.sh: could not clear faults on {replica['url']}: {exc}", file=sys.stderr)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        if all(p["capacity_state"] == "available" for p in pools()):
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(1)
print("run-locust.sh: not every pool is available after 60 s; starting anyway", file=sys.stderr)
PY
fi

case "$HOST" in
  http://127.0.0.1:*|http://localhost:*) ;;
  *) echo "run-locust.sh: --host must be on 127.0.0.1, got $HOST" >&2; exit 2 ;;
esac

echo "locust: $USERS users for $RUN_TIME against $HOST -> $OUT/"
status=0
LOCUST_TALLY_JSON="$OUT/tally.json" timeout --kill-after=10 "$LIMIT_S" \
  "$PYTHON" -m locust -f loadtest/locustfile.py --headless \
    --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" --stop-timeout 10 \
    --host "$HOST" --csv "$OUT/locust" --html "$OUT/locust.html" --only-summary \
  || status=$?
exit "$status"
