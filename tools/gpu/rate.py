"""Steady training speed of one train.sh call, from its log lines: chunk-tokens per second.

A step's host work (the dispatch-bound part) grows with the chunks per sequence, so tokens/s is multiplied by
the chunks per sequence to compare calls at different curriculum stages. The first log line (start-up, data
workers filling) is skipped. Prints one number, 0 when the log has fewer than three log lines.

    python3 tools/gpu/rate.py /root/run/call.log
"""

from __future__ import annotations

import json
import sys


def chunk_token_rate(lines: list[str]) -> float:
    rows = []
    for line in lines:
        start = line.find('{"step"')
        if start < 0:
            continue
        try:
            row = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if "tokens_per_s" in row and "elapsed_s" in row:
            rows.append(row)
    if len(rows) < 3:
        return 0.0
    rows = rows[1:]
    work = sum((b["tokens_per_s"] * b["elapsed_s"] - a["tokens_per_s"] * a["elapsed_s"]) * b.get("chunks", 1)
               for a, b in zip(rows, rows[1:]))
    seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
    return work / seconds if seconds > 0 else 0.0


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        print(round(chunk_token_rate(f.read().splitlines())))
