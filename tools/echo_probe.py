"""Does memory answer a question that its own stream ends with? (docs/training.md, steps 3,184-3,293)

``ComeTMemoryMiddleware`` absorbs the user's request before it asks memory about it, so the stream ends with the
request. This replays the LangChain test's scene (a tool returns a vault code, six chunk-sized notes follow, the
user asks for the code) as events into two fresh sessions of the same model, one without the request absorbed
and one with it, and prints what each recalls for the request's own words and for a paraphrase.

    python tools/echo_probe.py --model training/smollm2-default/checkpoint --device cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time

from comet_agents import CometModel, ComeTMemory
from comet_agents.engine import MemoryEngine


def scene(engine: MemoryEngine) -> tuple[list[dict], str]:
    """The events the middleware writes for the test's turns (without the last answer), and the request."""
    filler = "The weather report says mild winds and light rain all day. "
    per_note = engine.model.config.chunk_size // len(engine.encode(filler)) + 1  # a note fills a chunk
    events: list[dict] = [
        {"type": "message", "role": "user", "content": "Open the vault named Orion."},
        {"type": "tool_call", "tool": "vault", "arguments": {"name": "Orion"}, "call_id": "v1"},
        {"type": "observation", "tool": "vault", "content": "The code of vault Orion is 4711.", "call_id": "v1"},
        {"type": "message", "role": "assistant", "content": "Opened."},
    ]
    for i in range(6):
        events.append({"type": "message", "role": "user", "content": f"Note {i}: " + filler * per_note})
        events.append({"type": "message", "role": "assistant", "content": "Noted."})
    return events, "What is the code of the vault named Orion?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="adapter directory or 'default'")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = MemoryEngine(CometModel.from_pretrained(args.model, device=args.device).eval())
    events, request = scene(engine)
    questions = [request, "What is the code of vault Orion?"]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/probe.db"
        for name, stream in [("request not absorbed", events),
                             ("request absorbed", events + [{"type": "message", "role": "user", "content": request}])]:
            with ComeTMemory(name.replace(" ", "-"), store=url, model=engine) as mem:
                mem.absorb(stream)
                for q in questions:
                    print(f"{name} | {q} -> {mem.recall(q, max_new_tokens=16)!r}")
    print(f"{time.perf_counter() - t0:.0f} s, model {args.model}, adapter {engine.model.adapter_fingerprint}")


if __name__ == "__main__":
    main()
