#!/usr/bin/env bash
# Screenshot of the MLflow UI's run table for this project, taken in headless Chromium.
#
#   bash scripts/ui_screenshot.sh [OUT.png] [PROJECT_ROOT]     (make screenshot)
#
# Starts `python -m reprotrain ui` (mlflow server against the project's SQLite store) on a
# free 127.0.0.1 port, waits for /health, opens the experiment's runs page (the MLflow 3 UI
# otherwise opens on a GenAI overview), saves OUT.png (default docs/mlflow-ui.png) and stops
# the server. Installs Debian's `chromium` with apt-get when it is missing (needs root).
# ≈ 30–90 s on 2 busy cores, most of it the server's start.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$HERE/docs/mlflow-ui.png}")"
ROOT="$(realpath "${2:-$PWD}")"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi
WIDTH=1600
HEIGHT=1000

log() { printf 'ui_screenshot: %s\n' "$*" >&2; }

CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$CHROMIUM" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "chromium is not installed; run: sudo apt-get install -y chromium"
    exit 2
  fi
  log "installing Debian's chromium (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
  CHROMIUM="$(command -v chromium)"
fi

PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
SERVER_LOG="$(mktemp)"
PROFILE="$(mktemp -d)"
SEED="$(mktemp -d)"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
SERVER_PID=""
SEED_PID=""
cleanup() {
  [ -n "$SEED_PID" ] && kill "$SEED_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$PROFILE" "$SERVER_LOG" "$SEED"
}
trap cleanup EXIT

# 1. Read the store directly: the experiment id, and a view of the runs table worth looking
#    at (pipeline rows expanded to their stage runs; test metrics and the params that differ
#    between executions as columns; the assistant panel that opens on a first visit closed).
#    The MLflow UI keeps this view state in the browser's localStorage.
SEED_SCRIPT='
import json
import sys
from pathlib import Path

import mlflow

from reprotrain import tracking
from reprotrain.config import load_params

root, seed = Path(sys.argv[1]), Path(sys.argv[2])
params = load_params(root / "params.yaml") if (root / "params.yaml").is_file() else None
store = params.tracking.store if params else "mlruns"
name = params.tracking.experiment if params else "reprotrain"
client = mlflow.MlflowClient(tracking.store_uri(root, store))
exp = client.get_experiment_by_name(name)
if exp is None:
    sys.exit(f"experiment {name!r} not found in the store of {root}: run the pipeline first")
parents = client.search_runs(
    [exp.experiment_id], filter_string="tags.`reprotrain.role` = '"'"'pipeline'"'"'",
    max_results=50,
)
wanted = ("accuracy", "roc_auc", "finetune.final_val_accuracy")
metrics = [m for m in wanted if any(m in p.data.metrics for p in parents)]
keys = sorted({k for p in parents for k in p.data.params})
differ = [k for k in keys if len({p.data.params.get(k) for p in parents}) > 1][:4]
columns = ["attributes.`Duration`"] + [f"metrics.`{m}`" for m in metrics]
columns += [f"params.`{k}`" for k in (differ or ["finetune.learning_rate"])]
for tag in ("reprotrain.dvc.exp_name", "reprotrain.reproduces"):
    if any(tag in p.data.tags for p in parents):
        columns.append(f"tags.`{tag}`")
state = {
    "selectedColumns": columns,
    "runsExpanded": {p.info.run_id: True for p in parents},
}
page = json.dumps([exp.experiment_id])  # the UI keys its persisted view by the id list
view_key = f"MLflowLocalStorage-1.1-ExperimentPage-{page}-ReactComponentState"
items = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    view_key: json.dumps(state),
}
js = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items())
seed.write_text(f"<html><body><script>{js}document.body.textContent=1;</script></body></html>")
print(exp.experiment_id)
'
EXP_ID="$("$PYTHON" -c "$SEED_SCRIPT" "$ROOT" "$SEED/index.html")"

# 2. Seed the browser profile's localStorage for the server's origin (same host and port)
#    from a throw-away static page, before the MLflow server takes the port.
CHROME_FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --disable-dev-shm-usage --hide-scrollbars "--user-data-dir=$PROFILE")
"$PYTHON" -m http.server "$PORT" --bind 127.0.0.1 --directory "$SEED" >/dev/null 2>&1 &
SEED_PID=$!
for _ in $(seq 1 40); do curl -sf "$BASE/index.html" >/dev/null 2>&1 && break; sleep 0.25; done
"$CHROMIUM" "${CHROME_FLAGS[@]}" --dump-dom "$BASE/index.html" >/dev/null 2>&1 || true
kill "$SEED_PID" 2>/dev/null || true
wait "$SEED_PID" 2>/dev/null || true
SEED_PID=""

# 3. The MLflow server, in its own session so that cleanup stops its worker too.
setsid "$PYTHON" -m reprotrain ui --port "$PORT" --root "$ROOT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
log "waiting for the MLflow server on $BASE (store of $ROOT)"
for _ in $(seq 1 360); do
  if curl -sf "$BASE/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited:"
    cat "$SERVER_LOG" >&2
    exit 1
  fi
  sleep 0.5
done
curl -sf "$BASE/health" >/dev/null || {
  log "server not healthy after 180 s"
  cat "$SERVER_LOG" >&2
  exit 1
}

# 4. The screenshot. The background-networking flags keep Chromium from calling Google's
#    hosts (there is no network here); the virtual time budget lets the page finish loading.
mkdir -p "$(dirname "$OUT")"
URL="$BASE/#/experiments/$EXP_ID/runs"
log "screenshot of $URL"
"$CHROMIUM" "${CHROME_FLAGS[@]}" --window-size="$WIDTH,$HEIGHT" --virtual-time-budget=25000 \
  --screenshot="$OUT" "$URL" >/dev/null 2>&1
[ -s "$OUT" ] || {
  log "no screenshot written"
  exit 1
}
log "saved $OUT"
