#!/usr/bin/env bash
# Run ON THE GPU MACHINE: evaluate the adapter of the latest checkpoint; the rows come back as $OUT/eval-<task>.json
# (one file: the device tool returns at most 8), the table is printed. E.g.
#   bash tools/gpu/eval.sh passkey --lengths 1k,4k,16k,64k --depths 11
set -uo pipefail
source tools/gpu/env.sh
mkdir -p /root/adapter /root/eval
cp /root/run/checkpoint/comet_adapter.safetensors /root/run/checkpoint/comet_config.json /root/adapter/
python3 -m comet_agents.cli eval "$@" --model /root/adapter --out /root/eval 2>&1 | tr '\r' '\n' | grep -v -E 'it/s|s/it' \
  | grep -v '^len=' | tail -30
cp /root/eval/"$1"_rows.json $OUT/eval-"$1".json
