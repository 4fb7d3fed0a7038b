"""Span recall: "the text had a passage beginning with <cue>; continue it word for word".

An autoencoding target for the memory itself: the answer is a stretch of the stream (8 to 40 words following a
unique cue of 4 to 8 words; fewer, down to 4, when the stream is too short), so every answer token supervises something that only memory holds once the passage
lies in a closed chunk. Pass-key questions supervise a handful of digits; this family supervises whole
passages of every filler style the other families use (prose, service logs, shopper events, agent steps, chat),
which is what teaches the compression tokens to write down *what the text said*, not one planted fact.

The cue sits at a relative depth drawn in ``[0, max_depth]`` of the stream (``max_depth`` 0.6 by default, so
that in training the passage is usually in memory rather than in the open chunk).
"""

from __future__ import annotations

import random
import re

from comet_agents.events import TextEvent, render

from . import passkey
from .common import QA, Sample, TokenCounter, approx_tokens, check_target, make_rng

__all__ = ["FAMILY", "STYLES", "QUESTIONS", "generate"]

FAMILY = "recall_span"
STYLES = ("prose", "logs", "user_events", "agent_steps", "chat")
QUESTIONS = (
    'Somewhere in the text there is a passage that begins with "{cue}". Continue it word for word.',
    'The text contained the words "{cue}". What came right after them? Quote it exactly.',
    'Continue this passage from the text, exactly as it was written: "{cue}"',
    'Quote the text that followed "{cue}".',
    'Earlier you read "{cue}". Repeat what came next, word for word.',
    'Find the passage starting "{cue}" and copy the words that follow it.',
)
_WORD = re.compile(r"\S+")


def _stream(rng: random.Random, style: str, target_tokens: int, count_tokens: TokenCounter) -> str:
    """Filler of ``style`` reaching ``target_tokens``, rendered as the pass-key haystacks are."""
    source, joiner = passkey._units(style, rng, target_tokens)
    parts: list[str] = []
    group: list[str] = []
    group_size = rng.randint(3, 9) if joiner == " " else rng.randint(5, 20)
    total = 0
    while total < target_tokens:
        unit = next(source)
        total += count_tokens(unit + (joiner or ""))
        if joiner is None:
            parts.append(unit)
            continue
        group.append(unit)
        if len(group) >= group_size:
            parts.append(render(TextEvent(joiner.join(group))))
            group = []
    if group:
        parts.append(render(TextEvent(joiner.join(group))))  # type: ignore[union-attr]
    return "".join(parts)


def _place(rng: random.Random, stream: str, max_depth: float) -> tuple[str, str, int, int] | None:
    """(cue, answer, cue offset, answer words) for a unique one-line cue in ``stream``, or None."""
    words = list(_WORD.finditer(stream))
    for attempt in range(100):
        depth = max_depth if attempt < 50 else 1.0  # short streams: allow any depth before giving up
        n_cue = rng.randint(4, 8)
        n_answer = min(rng.randint(8, 40), len(words) - n_cue)
        if n_answer < 4:
            return None
        start = int(rng.random() * depth * (len(words) - n_cue - n_answer))
        cue = stream[words[start].start() : words[start + n_cue - 1].end()]
        if "\n" in cue or stream.count(cue) != 1:
            continue
        answer = stream[words[start + n_cue].start() : words[start + n_cue + n_answer - 1].end()].strip()
        return cue, answer, words[start].start(), n_answer
    return None


def generate(
    seed: int,
    target_tokens: int,
    count_tokens: TokenCounter = approx_tokens,
    *,
    max_depth: float = 0.6,
    style: str | None = None,
) -> Sample:
    """A span-recall sample: a stream of about ``target_tokens`` tokens and one continuation question."""
    check_target(target_tokens)
    if not 0.0 <= max_depth <= 1.0:
        raise ValueError(f"max_depth must be in [0, 1], got {max_depth!r}")
    rng = make_rng(seed, FAMILY)
    style = style or rng.choice(STYLES)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")
    for grow in (1, 2, 4):  # a stream too short for a unique one-line cue is drawn again, longer
        stream = _stream(random.Random(rng.getrandbits(64)), style, target_tokens * grow, count_tokens)
        found = _place(rng, stream, max_depth)
        if found is None:
            continue
        cue, answer, start_char, n_answer = found
        question = rng.choice(QUESTIONS).format(cue=cue)
        meta = {
            "seed": seed,
            "target_tokens": target_tokens,
            "tokens": count_tokens(stream),
            "style": style,
            "cue": cue,
            "depth": round(start_char / max(1, len(stream)), 4),
            "answer_words": n_answer,
            "qa_kinds": ["recall_span"],
        }
        return Sample(FAMILY, stream, [QA(question, answer)], meta)
    raise ValueError(f"could not place a unique cue in a {style} stream of {target_tokens} tokens")
