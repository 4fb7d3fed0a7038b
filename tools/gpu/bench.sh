#!/usr/bin/env bash
# Run ON THE GPU MACHINE after the stage.sh calls: the absorb benchmark of issue 2 on the current default config
# (speed and memory do not depend on the weights), rows back as $OUT/bench-absorb.json, table printed.
#   bash tools/gpu/bench.sh            (defaults: 8k, 64k and 512k tokens)
set -uo pipefail
source tools/gpu/env.sh
tokens=${1:-8k,64k,512k}
python3 -m comet_agents.cli bench absorb --tokens "$tokens" --device cuda --out $OUT/bench-absorb.json 2>&1 \
  | tr '\r' '\n' | grep -v -E 'it/s|s/it' | tail -12
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
