#!/usr/bin/env bash
# Run ON THE GPU MACHINE: keep whatever this call carried (GGUF part, wheels, checkpoint) outside the repo, so that
# the next call on the same warm machine finds it.
set -euo pipefail
mkdir -p /root/gguf /root/wheels
for f in .gpu/gguf.part.*; do [ -f "$f" ] && cp "$f" /root/gguf/; done
if [ -d .gpu/ckpt ]; then mkdir -p /root/run/checkpoint && cp .gpu/ckpt/* /root/run/checkpoint/; fi
[ -d .whl ] && cp .whl/* /root/wheels/ || true
ls /root/gguf /root/wheels /root/run/checkpoint 2>/dev/null | tr '\n' ' '; echo
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
