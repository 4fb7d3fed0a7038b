#!/usr/bin/env bash
# Run HERE (the CPU machine, repo root) before using the lent GPU machine. Fills the git-ignored folders that
# travel with `carry`: .gpu/ (the base GGUF cut into parts) and .whl/ (wheels the GPU image lacks). The tracked
# tree (the training checkpoint included, ~40 MB) travels with every call, so each part is sized to fit beside
# it in the 64 MiB a call may carry. Then, in back-to-back device calls (a warm machine is released 30 s after
# a call):
#   carry [".gpu/gguf.part.aa", ".whl"]   command: bash tools/gpu/stage.sh
#   carry [".gpu/gguf.part.ab"]           command: bash tools/gpu/stage.sh      ... one call per part
#   (no carry)                            command: bash tools/gpu/train.sh <train args>
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
gguf=$(.venv/bin/python -c 'from comet_agents.base_models import default_gguf_path; print(default_gguf_path())')
mkdir -p .gpu .whl
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
rm -rf .gpu/ckpt
# Optional $1: a checkpoint directory returned by an earlier call (the lent machine starts bare). It travels in
# .gpu/ckpt/ beside the second part, so the first part is made as large as its call allows.
if [ -n "${1:-}" ]; then
  mkdir -p .gpu/ckpt && cp "$1"/comet_adapter.safetensors "$1"/comet_config.json "$1"/optim_*.safetensors \
    "$1"/trainer_state.json .gpu/ckpt/
  part=$(( 64 * 1024 * 1024 - tree - 1024 * 1024 ))
  rest=$(( $(stat -c %s "$gguf") - part + $(du -cb .gpu/ckpt | tail -1 | cut -f1) + tree ))
  [ "$rest" -lt $(( 64 * 1024 * 1024 - 256 * 1024 )) ] || { echo "checkpoint too large to travel in two calls"; exit 1; }
else
  part=$(( 64 * 1024 * 1024 - tree - 3 * 1024 * 1024 ))
fi
echo "tree ${tree} bytes -> GGUF parts of ${part} bytes"
rm -f .gpu/gguf.part.*
split -b "$part" "$gguf" .gpu/gguf.part.
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/gguf.sha256
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl gguf==0.19.0 platformdirs
cp .gpu/gguf.sha256 .whl/ 2>/dev/null || true
ls -la .gpu .whl
