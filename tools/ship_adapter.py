"""Copy a training checkpoint's adapter into the package as the shipped default, with a note for users.

    python tools/ship_adapter.py training/smollm2-default/checkpoint --note "Preview (training step N): ..."

Copies ``comet_adapter.safetensors`` and ``comet_config.json`` (not the optimizer moments) to
``comet_agents/weights/`` and writes ``--note`` into the config's ``meta.note`` (the demo's page header shows
it; an empty note removes it). Refuses an adapter of 24 MB or more (issue 3's limit) and a checkpoint whose
config does not load.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from comet_agents.config import CometConfig
from comet_agents.modeling import ADAPTER_FILE, WEIGHTS_DIR

LIMIT = 24 * 1024 * 1024


def ship(checkpoint: Path, note: str, dest: Path = WEIGHTS_DIR) -> Path:
    """Copy the adapter of ``checkpoint`` to ``dest`` with ``note`` in its meta; returns ``dest``."""
    adapter = checkpoint / ADAPTER_FILE
    if not adapter.is_file():
        raise FileNotFoundError(f"{adapter} does not exist")
    if adapter.stat().st_size >= LIMIT:
        raise ValueError(f"{adapter} is {adapter.stat().st_size / 2**20:.1f} MiB; the shipped adapter must stay "
                         f"under {LIMIT / 2**20:.0f} MiB")
    config, meta = CometConfig.load(checkpoint)  # a config that does not load must not ship
    meta = {k: v for k, v in meta.items() if k != "note"} | ({"note": note} if note else {})
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(adapter, dest / ADAPTER_FILE)
    config.save(dest, extra=meta)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--note", default="", help="what users should know about this adapter (shown by the demo)")
    a = ap.parse_args()
    print(f"shipped {a.checkpoint} to {ship(a.checkpoint, a.note)}")


if __name__ == "__main__":
    main()
