# Sourced ON THE GPU MACHINE by train.sh / bench.sh: reassembles the GGUF, installs the carried wheels and sets
# the environment that points comet_agents at them.
# Assembled only when the checksum (carried with part aa and the wheels, call 1) is there and matches, so that
# a machine that got only some parts (call 1 never reached it) keeps no broken model.gguf for the next call.
if [ ! -f /root/gguf/model.gguf ]; then
  if [ ! -f /root/wheels/gguf.sha256 ]; then
    echo "no /root/wheels/gguf.sha256: call 1 (GGUF part aa + wheels) did not reach this machine; run it again" >&2
    exit 1
  fi
  cat /root/gguf/gguf.part.* > /root/gguf/model.gguf.tmp
  if ! echo "$(cat /root/wheels/gguf.sha256)  /root/gguf/model.gguf.tmp" | sha256sum -c - >/dev/null; then
    rm -f /root/gguf/model.gguf.tmp
    echo "GGUF parts in /root/gguf ($(ls /root/gguf | tr '\n' ' ')) do not match the checksum; stage the missing part" >&2
    exit 1
  fi
  mv /root/gguf/model.gguf.tmp /root/gguf/model.gguf
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /root/wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD COMET_AGENTS_GGUF=/root/gguf/model.gguf COMET_AGENTS_CACHE=/root/cache \
       HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
