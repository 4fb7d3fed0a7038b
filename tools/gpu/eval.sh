#!/usr/bin/env bash
# Run ON THE GPU MACHINE: evaluate the adapter of the latest checkpoint, e.g.
#   bash tools/gpu/eval.sh passkey --lengths 1k,4k,16k,64k --depths 11
set -uo pipefail
source tools/gpu/env.sh
mkdir -p /root/adapter
cp /root/run/checkpoint/comet_adapter.safetensors /root/run/checkpoint/comet_config.json /root/adapter/
python3 -m comet_agents.cli eval "$@" --model /root/adapter --out $OUT/eval 2>&1 | tr '\r' '\n' | grep -v 'it/s' \
  | tail -60 | tee $OUT/eval.log
