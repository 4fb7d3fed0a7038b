"""Shared pieces of the synthetic data generators: samples, token counting, stream growth, the family registry.

Every family module exposes ``generate(seed, target_tokens, count_tokens=approx_tokens) -> Sample``: the same
arguments always give the same :class:`Sample` (all randomness comes from ``random.Random`` seeded from
``seed``; nothing iterates over sets or depends on ``PYTHONHASHSEED``). Streams are rendered with
:func:`comet_agents.events.render`, so training data and run-time inputs share one format.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from comet_agents.events import Event, render, render_many

__all__ = [
    "QA",
    "Sample",
    "TokenCounter",
    "approx_tokens",
    "grow_stream",
    "make_rng",
    "check_target",
    "FAMILIES",
    "generate_mixed",
    "standalone_starts",
]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text, e.g. ``lambda s: len(tokenizer(s).input_ids)``."""


def standalone_starts(text: str, answer: str) -> list[int]:
    """Where ``answer`` starts in ``text`` with no ASCII letter or digit right before or after it.

    Short answers are often parts of longer words and numbers ("964" in "19642 ms", "mum" in "mummy"); only a
    standalone occurrence states the answer, for building streams as for scoring answers."""
    if not answer:
        return []
    return [m.start() for m in re.finditer(rf"(?<![0-9A-Za-z]){re.escape(answer)}(?![0-9A-Za-z])", text)]


def approx_tokens(text: str) -> int:
    """Default :data:`TokenCounter`: one token per four characters (no tokenizer needed)."""
    return len(text) // 4


@dataclass
class QA:
    """A question about a stream and its short exact answer."""

    question: str
    answer: str


@dataclass
class Sample:
    """One training / evaluation sample.

    Attributes:
        family: generator family (a key of :data:`FAMILIES`).
        stream: the rendered text the memory absorbs, chunk by chunk.
        qa: questions answered from the stream (asked after it).
        meta: family-specific details (seed, target, token count, planted facts ...), JSON-ready.
    """

    family: str
    stream: str
    qa: list[QA]
    meta: dict[str, Any] = field(default_factory=dict)


Piece = Union[str, Event, Sequence[Event]]
"""What a piece source yields: rendered text, one event, or several events (rendered and concatenated)."""


def _piece_text(piece: Piece) -> str:
    if isinstance(piece, str):
        return piece
    if isinstance(piece, Sequence):
        return render_many(piece)
    return render(piece)


def check_target(target_tokens: int) -> None:
    if isinstance(target_tokens, bool) or not isinstance(target_tokens, int) or target_tokens < 1:
        raise ValueError(f"target_tokens must be a positive int, got {target_tokens!r}")


def make_rng(seed: int, family: str) -> random.Random:
    """A ``random.Random`` for ``family`` and ``seed`` (families with the same seed are decorrelated)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return random.Random(f"{family}:{seed}")  # str seeds hash with sha512: stable across processes


def grow_stream(
    next_piece: Callable[[int], Piece | None],
    target_tokens: int,
    count_tokens: TokenCounter = approx_tokens,
    *,
    head: Sequence[Piece] = (),
    tail: Sequence[Piece] = (),
    max_rounds: int = 32,
) -> str:
    """Grow ``head + pieces + tail`` until it holds at least ``target_tokens`` tokens and return its text.

    ``next_piece(remaining)`` is called with the (estimated) number of tokens still missing and returns the
    next piece (a rendered string, an event or a list of events), or ``None`` when it has nothing more.
    Sources should keep pieces small relative to ``remaining`` so that the stream ends close to the target:
    the overshoot is at most the last piece.

    Token counts of pieces are summed as an estimate, re-anchored on a count of the whole text each time the
    estimate covers half of what was missing (a logarithmic number of full counts); tokenizers are not exactly
    additive over pieces. If the final real count is short, growth resumes. The text therefore reaches the target
    unless the source runs dry.
    """
    check_target(target_tokens)
    body: list[str] = [_piece_text(p) for p in head]
    tail_text = "".join(_piece_text(p) for p in tail)

    def full_count() -> int:
        return count_tokens("".join(body) + tail_text)

    estimate = full_count()
    exhausted = False
    for _ in range(max_rounds):
        checkpoint = estimate + (target_tokens - estimate) / 2
        while estimate < target_tokens and not exhausted:
            piece = next_piece(target_tokens - estimate)
            if piece is None:
                exhausted = True
                break
            text = _piece_text(piece)
            body.append(text)
            estimate += count_tokens(text)
            if checkpoint <= estimate < target_tokens:
                estimate = full_count()
                missing = target_tokens - estimate
                checkpoint = estimate + missing / 2 if missing > 32 else float("inf")
        real = full_count()
        if real >= target_tokens or exhausted:
            break
        estimate = real
    return "".join(body) + tail_text


# ----------------------------------------------------------------------------------------------- registry

_FAMILIES: dict[str, Callable[..., Sample]] | None = None


def _families() -> dict[str, Callable[..., Sample]]:
    global _FAMILIES
    if _FAMILIES is None:
        # Imported lazily: the family modules import this module.
        from . import agent_trajectory, conversation, passkey, recall_span, user_behaviour

        _FAMILIES = {
            "passkey": passkey.generate,
            "passkey_memory": passkey.generate_in_memory,
            "passkey_multi": passkey.generate_multi,
            "recall_span": recall_span.generate,
            "user_behaviour": user_behaviour.generate,
            "agent_trajectory": agent_trajectory.generate,
            "conversation": conversation.generate,
        }
    return _FAMILIES


def __getattr__(name: str) -> Any:  # PEP 562: ``FAMILIES`` is built on first access
    if name == "FAMILIES":
        return _families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FAMILIES: dict[str, Callable[..., Sample]]
# Family name -> ``generate(seed, target_tokens, count_tokens=approx_tokens) -> Sample``; only annotated here,
# the value comes from ``__getattr__`` on first access.


def generate_mixed(
    seed: int,
    target_tokens: int,
    weights: Mapping[str, float],
    count_tokens: TokenCounter = approx_tokens,
) -> Sample:
    """Pick a family with probability proportional to ``weights`` and generate one sample from it.

    Deterministic in ``(seed, target_tokens, weights)``; the chosen family gets its own seed derived from
    ``seed``. ``sample.meta["mixed_seed"]`` records ``seed``.
    """
    families = _families()
    check_target(target_tokens)
    if not weights:
        raise ValueError("weights must name at least one family")
    unknown = [name for name in weights if name not in families]
    if unknown:
        raise ValueError(f"unknown families {unknown} (known: {', '.join(families)})")
    names = sorted(weights)
    values = [float(weights[n]) for n in names]
    if any(not (v >= 0.0) or v == float("inf") for v in values):
        raise ValueError(f"weights must be finite and >= 0, got {dict(weights)}")
    if sum(values) <= 0.0:
        raise ValueError("weights must not all be zero")
    rng = make_rng(seed, "mixed")
    family = rng.choices(names, weights=values, k=1)[0]
    sub_seed = rng.getrandbits(48)
    sample = families[family](sub_seed, target_tokens, count_tokens)
    sample.meta["mixed_seed"] = seed
    return sample
