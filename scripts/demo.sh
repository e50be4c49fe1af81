#!/usr/bin/env bash
# The demo: a local S3 sandbox with a scaled-down replica of the Visual Behavior Ophys bucket,
# then the commands a user runs against the real one. The sandbox is stopped however this ends.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-$PWD/demo-cache}"
export VBO_MIRROR_SANDBOX_DIR="$DEMO_DIR/.sandbox"
export VBO_MIRROR_CACHE_DIR="$DEMO_DIR/cache"
rm -rf "$VBO_MIRROR_CACHE_DIR"
mkdir -p "$VBO_MIRROR_SANDBOX_DIR"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

trap 'vbo-mirror sandbox down --force >/dev/null 2>&1 || true' EXIT
step vbo-mirror sandbox up
AWS_ENDPOINT_URL_S3="$(vbo-mirror --json sandbox status | python -c 'import json,sys; print(json.load(sys.stdin)["endpoint_url"])')"
export AWS_ENDPOINT_URL_S3

# Versions and metadata
step vbo-mirror manifests list
step vbo-mirror manifests latest
step vbo-mirror manifests use 1.0.1
step vbo-mirror manifests current
step vbo-mirror manifests show
step vbo-mirror manifests compare 0.1.0 0.2.0
step vbo-mirror tables
step vbo-mirror tables ophys_experiment_table --rows 5

# The mirror: plan, sync, a no-op resync, then a version bump that links what it already has
step vbo-mirror plan
step vbo-mirror sync
step vbo-mirror sync
step vbo-mirror manifests compare 1.0.1 1.1.0
step vbo-mirror plan --version 1.1.0
step vbo-mirror sync --version 1.1.0
SESSION="$(vbo-mirror --json tables behavior_session_table --rows 1000 \
  | python -c 'import json,sys; print(next(r["behavior_session_id"] for r in json.load(sys.stdin)["records"] if r["file_id"] is not None))')"
step vbo-mirror get behavior-session "$SESSION"
step vbo-mirror status
step vbo-mirror verify
printf '\n\033[1m$ vbo-mirror urls | head -3\033[0m\n'; vbo-mirror urls | head -3
step vbo-mirror manifests downloaded

# A second release from the same tool: Visual Behavior Neuropixels, its bucket added to the same
# sandbox server, in a cache_dir of its own
VBN=(vbo-mirror --dataset visual-behavior-neuropixels --cache-dir "$DEMO_DIR/vbn")
rm -rf "$DEMO_DIR/vbn"
step "${VBN[@]}" sandbox up
step "${VBN[@]}" manifests list
step "${VBN[@]}" tables
step "${VBN[@]}" get ecephys-session 1044385384
step "${VBN[@]}" get probe-lfp 1044506931
step "${VBN[@]}" sync --version 0.5.0
step "${VBN[@]}" verify
step "${VBN[@]}" sandbox down
step vbo-mirror sandbox down
printf '\ndemo done: the mirror is in %s\n' "$VBO_MIRROR_CACHE_DIR"
