"""Give a training checkpoint's global memory the temporary memory's read path (in place).

Each layer's ``global_net.norm`` and ``global_net.adapter`` become copies of its ``temp_net`` ones, their AdamW
moments dropped; gates and everything else stay. With ``global_source="compression"`` a global slot written
once then injects exactly what the FIFO entry of the same compression token injects, so the model's learnt FIFO
reading applies to the global memory at once. ``tools/memory_info.py --without-fifo`` shows the effect.

    python tools/copy_global_read.py training/smollm2-default/checkpoint
"""

from __future__ import annotations

import argparse

from comet_agents.training.trainer import copy_temporary_read_to_global


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    a = ap.parse_args()
    names = copy_temporary_read_to_global(a.checkpoint)
    print(f"copied {len(names)} tensors of the temporary memory's read path into the global memory's in {a.checkpoint}")


if __name__ == "__main__":
    main()
