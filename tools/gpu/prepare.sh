#!/usr/bin/env bash
# Run HERE (the CPU machine, repo root) before using the lent GPU machine, which starts bare. Fills the git-ignored
# folders that travel with `carry`: .gpu/ (the base GGUF cut into two parts, and the checkpoint to resume from in
# .gpu/ckpt/) and .whl/ (wheels the GPU image lacks).
#
#   bash tools/gpu/prepare.sh [CHECKPOINT_DIR]      (default: the committed training/smollm2-default/checkpoint)
#
# The committed checkpoint (~30 MB) would otherwise travel with every call as part of the tree, so it is MOVED
# into .gpu/ckpt/ (its tracked files disappear from the working tree until train.sh's returned checkpoint is
# copied back, or `git checkout training/smollm2-default/checkpoint`). Then issue the calls BACK TO BACK IN ONE
# BATCH OF TOOL CALLS (a warm machine goes back 30 s after a call ends, sooner than a reply can be thought out):
#   carry [".gpu/gguf.part.aa", ".whl"]          bash tools/gpu/stage.sh
#   carry [".gpu/gguf.part.ab", ".gpu/ckpt"]     bash tools/gpu/stage.sh && bash tools/gpu/train.sh <args> ...
# or, when the checkpoint does not fit beside the last part (the CALL PLAN line says which):
#   carry [".gpu/gguf.part.ab"]                  bash tools/gpu/stage.sh
#   carry [".gpu/ckpt"]                          bash tools/gpu/stage.sh && bash tools/gpu/train.sh <args> ...
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
committed=training/smollm2-default/checkpoint
src=${1:-$committed}
gguf=$(.venv/bin/python -c 'from comet_agents.base_models import default_gguf_path; print(default_gguf_path())')
mkdir -p .gpu .whl
if [ ! -f "$src/trainer_state.json" ] && [ "$src" = "$committed" ] && [ -f .gpu/ckpt/trainer_state.json ]; then
  echo "reusing .gpu/ckpt (step $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' \
    .gpu/ckpt/trainer_state.json)): an earlier run of this script moved the committed checkpoint there"
elif [ -f "$src/trainer_state.json" ]; then
  rm -rf .gpu/ckpt
  mkdir -p .gpu/ckpt
  cp "$src"/comet_adapter.safetensors "$src"/comet_config.json "$src"/optim_*.safetensors "$src"/trainer_state.json \
    .gpu/ckpt/
  if [ "$src" = "$committed" ]; then rm -f "$committed"/*; fi
  echo "resuming from $src (step $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' \
    .gpu/ckpt/trainer_state.json)), carried in .gpu/ckpt"
else
  rm -rf .gpu/ckpt
  echo "no checkpoint in $src: the run starts fresh"
fi
# The shipped adapter (comet_agents/weights, ~16 MB) is not used on the GPU machine and would push tree + checkpoint
# past the limit: removed here while unmodified; `git checkout comet_agents/weights` brings it back afterwards.
shipped=comet_agents/weights/comet_adapter.safetensors
if [ -f "$shipped" ] && git ls-files --error-unmatch "$shipped" >/dev/null 2>&1 && git diff --quiet -- "$shipped"; then
  rm -f "$shipped"
  echo "removed $shipped from the working tree for the GPU calls (git checkout comet_agents/weights restores it)"
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl gguf==0.19.0 platformdirs
# Sizes as the device tool counts them: the files present in the working tree, plus what each call carries.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | python3 -c \
  'import os, sys; print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if os.path.isfile(p)))')
limit=$(( 64 * 1024 * 1024 - 512 * 1024 ))
whl=$(du -cb .whl | tail -1 | cut -f1)
ckpt=$( [ -d .gpu/ckpt ] && du -cb .gpu/ckpt | tail -1 | cut -f1 || echo 0)
part=$(( limit - tree - whl ))
[ $(( ckpt + tree )) -lt "$limit" ] || { echo "tree + checkpoint too large for one call"; exit 1; }
rm -f .gpu/gguf.part.*
split -b "$part" "$gguf" .gpu/gguf.part.
parts=(.gpu/gguf.part.*)
last=${parts[${#parts[@]}-1]}
echo "tree ${tree} B, wheels ${whl} B, checkpoint ${ckpt} B -> ${#parts[@]} GGUF parts of at most ${part} B"
# One call per part (.whl with the first); the checkpoint goes with the last part if both fit, else in a call of
# its own after it (a checkpoint with the reader LoRA, ~47 MB, does not fit beside a 35 MB part).
if [ $(( $(stat -c %s "$last") + ckpt + tree )) -lt "$limit" ]; then
  echo "CALL PLAN: ${parts[*]} one a call, .whl with ${parts[0]}, .gpu/ckpt with $last"
else
  echo "CALL PLAN: ${parts[*]} one a call, .whl with ${parts[0]}, then .gpu/ckpt in a call of its own"
fi
sha256sum "$gguf" | cut -d' ' -f1 > .whl/gguf.sha256
ls -la .gpu .gpu/ckpt .whl 2>/dev/null
