"""Where the answers of saved event-QA rows were last stated: CoMeT's accuracy per memory tier, for rows written
before ``comet-agents eval qa`` recorded ``fact_age`` (2026-12-03). Regenerates the rows' held-out items (same
families, length, seed, one question per stream) and checks that they are the same questions and answers.

    python tools/qa_where.py docs/data/qa-16k-step3293-h200-2026-12-03.json --model training/smollm2-default/checkpoint
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from comet_agents.engine import MemoryEngine
from comet_agents.evaluation import fact_age, qa_items
from comet_agents.modeling import CometModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", help="qa_rows.json of comet-agents eval qa")
    ap.add_argument("--model", default="training/smollm2-default/checkpoint", help="for its tokenizer and config")
    a = ap.parse_args()
    data = json.loads(Path(a.rows).read_text())
    meta, rows = data["meta"], data["rows"]
    engine = MemoryEngine(CometModel.from_pretrained(a.model, device="cpu"))
    count = lambda s: len(engine.encode(s))  # noqa: E731
    tally: dict[str, list[bool]] = {}
    for length in meta["lengths"]:
        for family in meta["families"]:
            for it in qa_items(family, length, meta["items"], meta["seed"], count, qa_per_stream=meta["qa_per_stream"]):
                row = next(r for r in rows if (r["family"], r["length"], r["item"]) == (family, length, it.item))
                if (row["question"], row["gold"]) != (it.question, it.answer):
                    raise SystemExit(f"item {family}/{length}/{it.item} differs from the rows: another generator?")
                age = fact_age(engine, it.stream, it.answer, row["stream_tokens"])
                tier = "not spelled out" if age is None else engine.config.memory_tier(age)
                tally.setdefault(tier, []).append(bool(row["correct"]["comet"]))
    print(", ".join(f"{tier} {sum(v)}/{len(v)}" for tier, v in tally.items()))


if __name__ == "__main__":
    main()
