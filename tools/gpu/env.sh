# Sourced ON THE GPU MACHINE by train.sh / bench.sh: reassembles the GGUF, installs the carried wheels and sets
# the environment that points comet_agents at them.
if [ ! -f /root/gguf/model.gguf ]; then
  cat /root/gguf/gguf.part.* > /root/gguf/model.gguf
  if [ -f /root/wheels/gguf.sha256 ]; then
    echo "$(cat /root/wheels/gguf.sha256)  /root/gguf/model.gguf" | sha256sum -c - || exit 1
  fi
fi
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /root/wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD COMET_AGENTS_GGUF=/root/gguf/model.gguf COMET_AGENTS_CACHE=/root/cache \
       HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
