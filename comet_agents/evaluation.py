"""Evaluation (``comet-agents eval``): pass-key grid, held-out event QA against baselines, short-chat preservation.

* ``eval passkey`` (:func:`passkey_grid`): a grid of stream lengths x needle depths. Each cell absorbs a haystack
  with a random key at the given relative depth and asks for it; a cell is correct when the key appears in the
  answer as a whole (:func:`passkey_found`: "80059700" is not 8005970). Sessions of one length are absorbed as a
  batch (one session per depth and trial), which is exactly the batched engine path users get.
* ``eval qa`` (:func:`run_qa`, :func:`qa_markdown`): held-out generated QA per task family and stream length,
  answered by CoMeT and by the plain base model with the stream truncated to CoMeT's attention span
  (``truncation``) or whole where it fits the native window (``full``), on the same items.
* ``eval preserve`` (:func:`base_preservation`): on short instructions (one chunk, empty memory), does CoMeT give
  the base model's greedy answer?
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import re
import string
import time
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine import MemoryEngine, answer_text, chat_question, token_index_at
from .layout import key_age
from .training.data.common import standalone_starts

QUESTION = "What is the pass key?"
SHORT_TAIL = 64  # tokens of stream left in the open chunk under which grid_markdown counts a tail as short
CHUNK_END = 64  # a key starting in the last this many tokens of its chunk counts as at the chunk's end


def passkey_case(engine: MemoryEngine, tokens: int, depth: float, key: str, *, filler: str = "classic",
                 seed: int = 0) -> list[int]:
    """Token ids of a haystack of about ``tokens`` tokens with ``key`` at relative ``depth``."""
    return passkey_haystack(engine, tokens, depth, key, filler=filler, seed=seed)[0]


def passkey_haystack(engine: MemoryEngine, tokens: int, depth: float, key: str, *, filler: str = "classic",
                     seed: int = 0) -> tuple[list[int], int]:
    """:func:`passkey_case`'s token ids and the index of the key's first token among them."""
    from .training.data.passkey import make_passkey_haystack

    text = make_passkey_haystack(tokens, depth, key, filler=filler, count_tokens=lambda s: len(engine.encode(s)),
                                 seed=seed)
    ids = engine.encode(text)
    # The filler never holds the key standing alone (it may inside a longer number), so that is the needle's.
    return ids, token_index_at(engine.tokenizer, text, standalone_starts(text, key)[0], len(ids))


KEY_DIGITS = (5, 7)
"""The grid's key lengths (digits) unless asked otherwise: every recorded grid used them."""


def check_key_digits(key_digits: tuple[int, int]) -> tuple[int, int]:
    """``key_digits`` as (fewest, most) digits, or ValueError naming what is wrong."""
    lo, hi = key_digits
    if not 1 <= lo <= hi <= 18:
        raise ValueError(f"key digits must satisfy 1 <= fewest <= most <= 18, got {lo}-{hi}")
    return lo, hi


def grid_cases(
    engine: MemoryEngine,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    trials: int = 1,
    seed: int = 0,
    filler: str = "classic",
    skip: Collection[int] = (),
    key_digits: tuple[int, int] = KEY_DIGITS,
) -> Iterator[tuple[int, float, int, str, list[int], int]]:
    """The grid's haystacks, deterministic in ``seed``: (length, depth, trial, key, token ids, index of the key's
    first token) for every cell, in :func:`passkey_grid`'s order. Tokenisation only, no model forward. Lengths
    in ``skip`` (done in an earlier sitting) are left out without being built; the others keep their keys.
    Keys are drawn uniformly from the numbers of ``key_digits`` = (fewest, most) digits."""
    lo, hi = check_key_digits(key_digits)
    rng = random.Random(seed)
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                key = str(rng.randrange(10 ** (lo - 1), 10**hi))
                haystack_seed = rng.randrange(2**31)
                if length in skip:
                    continue
                toks, key_at = passkey_haystack(engine, length, depth, key, filler=filler, seed=haystack_seed)
                yield length, depth, trial, key, toks, key_at


class GridInterrupted(RuntimeError):
    """:func:`passkey_grid` reached its ``deadline``: its progress is saved in ``resume_dir``; the same call
    again continues from there."""


def passkey_grid(
    engine: MemoryEngine,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    trials: int = 1,
    seed: int = 0,
    filler: str = "classic",
    question: str = QUESTION,
    log: Callable[[str], None] | None = None,
    resume_dir: str | Path | None = None,
    deadline: float | None = None,
    slice_tokens: int = 1 << 18,
    key_digits: tuple[int, int] = KEY_DIGITS,
) -> list[dict[str, Any]]:
    """Run the grid; one row per (length, depth, trial) with the key, the answer and correctness, where the key
    sat (``key_age`` closed chunks back, ``memory`` tier, ``key_offset`` tokens into its chunk) and the stream's
    ``tail`` left in the open chunk.

    Streams longer than one machine session allows (4M, 10M tokens) are run in several: with ``resume_dir``
    and a ``deadline`` (a :func:`time.monotonic` value), the haystacks are absorbed ``slice_tokens`` at a time,
    and at the deadline every state in progress is saved there (safetensors) with the rows of the lengths
    already done, and :class:`GridInterrupted` is raised. The same call again resumes where it stopped and
    returns the same rows as a run without a break.

    ``key_digits`` (fewest, most) sets the keys' lengths: ``(4, 4)`` asks how a model does with 4-digit PINs.
    """
    if slice_tokens < 1:
        raise ValueError(f"slice_tokens must be >= 1, got {slice_tokens}")
    if deadline is not None and resume_dir is None:
        raise ValueError("a deadline needs a resume_dir to save progress in")
    C = engine.config.chunk_size
    rows: list[dict[str, Any]] = []
    key_digits = check_key_digits(key_digits)
    saved = _GridProgress(resume_dir, engine, lengths, depths, trials, seed, filler, key_digits) if resume_dir \
        else None
    done = saved.done_lengths() if saved else {}
    groups = itertools.groupby(grid_cases(engine, lengths, depths, trials=trials, seed=seed, filler=filler,
                                          skip=done.keys(), key_digits=key_digits), key=lambda c: c[0])
    for length, _ in itertools.groupby(lengths):  # one length's haystacks in memory at once
        if length in done:
            rows.extend(done[length])
            continue
        batch = list(next(groups)[1])
        states = [saved.state(c) if saved else None for c in batch]
        states = [st if st is not None else engine.new_state() for st in states]
        progressed = False  # each sitting absorbs at least one slice before it may stop
        while True:
            fed = [int(st.tokens_absorbed) + len(st.pending[0]) for st in states]  # stream tokens taken in
            todo = [i for i, c in enumerate(batch) if fed[i] < len(c[4])]
            if not todo:
                break
            if progressed and deadline is not None and time.monotonic() >= deadline:
                assert saved is not None
                saved.save_states(batch, states)
                raise GridInterrupted(f"stopped at the deadline: {sum(fed):,} of {sum(len(c[4]) for c in batch):,} "
                                      f"tokens of the {length:,}-token haystacks absorbed; progress saved in "
                                      f"{saved.dir}")
            engine.absorb_many([states[i] for i in todo],
                               [batch[i][4][fed[i] : fed[i] + slice_tokens] for i in todo])
            progressed = True
        group_rows = []
        for (_, depth, trial, key, toks, key_at), state in zip(batch, states):
            tail = len(state.pending[0])
            answer = engine.recall(state, question, max_new_tokens=16)
            age = key_age(key_at, len(toks), C)
            row = {"length": length, "tokens": len(toks), "depth": depth, "trial": trial, "key": key,
                   "key_age": age, "memory": engine.config.memory_tier(age), "key_offset": key_at % C,
                   "chunk_size": C, "tail": tail, "answer": answer, "correct": passkey_found(key, answer)}
            group_rows.append(row)
            if log:
                log(f"len={length} depth={depth:.2f} key={key} memory={row['memory']} answer={answer!r} "
                    f"{'OK' if row['correct'] else 'MISS'}")
        rows.extend(group_rows)
        if saved:
            saved.finish_length(length, group_rows)
    return rows


class _GridProgress:
    """A resumable grid's directory: ``grid.json`` (the grid's arguments, the model's fingerprints and the rows
    of finished lengths) and one ``<case>.safetensors`` memory state per haystack in progress."""

    def __init__(self, directory: str | Path, engine: MemoryEngine, lengths: Sequence[int],
                 depths: Sequence[float], trials: int, seed: int, filler: str,
                 key_digits: tuple[int, int] = KEY_DIGITS) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "grid.json"
        m = engine.model
        self.identity = {"lengths": [int(n) for n in lengths], "depths": [float(d) for d in depths],
                         "trials": trials, "seed": seed, "filler": filler,
                         **({} if key_digits == KEY_DIGITS else {"key_digits": list(key_digits)}),
                         "config_fingerprint": m.config.fingerprint(), "base_fingerprint": m.base_fingerprint,
                         "adapter_fingerprint": m.adapter_fingerprint}
        self.data: dict[str, Any] = {"grid": self.identity, "done": {}}
        if self.file.exists():
            try:
                data = json.loads(self.file.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.file} is not a grid progress file: {error}") from error
            if data.get("grid") != self.identity:
                raise ValueError(f"{self.dir} holds the progress of another grid or model; use an empty directory")
            self.data = data
        self.engine = engine

    @staticmethod
    def _name(case: tuple) -> str:
        length, depth, trial, key = case[:4]
        return f"len{length}-depth{depth:.4f}-trial{trial}-key{key}.safetensors"

    def done_lengths(self) -> dict[int, list[dict[str, Any]]]:
        return {int(k): v for k, v in self.data["done"].items()}

    def state(self, case: tuple) -> Any:
        from .state import MemoryState

        path = self.dir / self._name(case)
        if not path.exists():
            return None
        state = MemoryState.from_bytes(path.read_bytes(), device=self.engine.model.device)
        return state.to(self.engine.model.device, self.engine.model.dtype)

    def save_states(self, batch: Sequence[tuple], states: Sequence[Any]) -> None:
        for case, state in zip(batch, states):
            path = self.dir / self._name(case)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(state.to_bytes())
            tmp.replace(path)  # a break while writing leaves the previous state whole
        self._write()

    def finish_length(self, length: int, rows: list[dict[str, Any]]) -> None:
        self.data["done"][str(length)] = rows
        self._write()
        for path in self.dir.glob(f"len{length}-*.safetensors"):
            path.unlink()

    def _write(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.file)


def grid_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy (%) table: one row per length, one column per depth."""
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    head = "| tokens | " + " | ".join(f"{d:.0%}" for d in depths) + " | mean |"
    lines = [head, "|" + "---|" * (len(depths) + 2)]
    for n in lengths:
        cells, total = [], []
        for d in depths:
            hits = [r["correct"] for r in rows if r["length"] == n and r["depth"] == d]
            acc = 100 * sum(hits) / len(hits)
            cells.append(f"{acc:.0f}")
            total.extend(hits)
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {100 * sum(total) / len(total):.1f} |")
    tiers = [(t, [r["correct"] for r in rows if r.get("memory") == t]) for t in ("open", "fifo", "global")]
    if any(hits for _, hits in tiers):
        names = {"open": "open chunk", "fifo": "FIFO", "global": "global memory only"}
        lines.append("")
        lines.append("Found, by where the key sits when asked: " + ", ".join(
            f"{names[t]} {sum(h)}/{len(h)}" for t, h in tiers if h) + ".")
    # How much of the stream is left in the open chunk with the question: right after a chunk closes, only a
    # few tokens, a case that reads memory differently (docs/training.md, steps 2,668-2,831).
    closed = [r for r in rows if r.get("memory") in ("fifo", "global") and "tail" in r]
    if closed:
        short = [r["correct"] for r in closed if r["tail"] < SHORT_TAIL]
        long_ = [r["correct"] for r in closed if r["tail"] >= SHORT_TAIL]
        lines.append(f"Keys in closed chunks, by the stream's tail in the open chunk: under {SHORT_TAIL} tokens "
                     f"{sum(short)}/{len(short)}, {SHORT_TAIL} or more {sum(long_)}/{len(long_)}.")
    # Where the key starts inside its chunk: the last few tokens of a chunk are seen by few of its compression
    # tokens (docs/training.md, steps 2,831-2,945).
    placed = [r for r in rows if r.get("memory") in ("fifo", "global") and "key_offset" in r and "chunk_size" in r]
    if placed:
        end = [r["correct"] for r in placed if r["key_offset"] >= r["chunk_size"] - CHUNK_END]
        rest = [r["correct"] for r in placed if r["key_offset"] < r["chunk_size"] - CHUNK_END]
        lines.append(f"Keys in closed chunks, by where the key starts in its chunk: in the last {CHUNK_END} tokens "
                     f"{sum(end)}/{len(end)}, earlier {sum(rest)}/{len(rest)}.")
    return "\n".join(lines)


def grid_heatmap(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "pass key retrieval") -> Path:
    """Write a heat-map PNG of accuracy per (depth, length) cell (needs matplotlib: ``pip install
    comet-agents[eval]``). Rows are those of :func:`passkey_grid` or a saved ``passkey_rows.json``."""
    if not rows or any(not {"length", "depth", "correct"} <= r.keys() for r in rows):
        raise ValueError("grid rows need 'length', 'depth' and 'correct' (rows of comet-agents eval passkey)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = [[100 * sum(r["correct"] for r in rows if r["length"] == n and r["depth"] == d)
             / max(1, sum(1 for r in rows if r["length"] == n and r["depth"] == d)) for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("stream length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy %")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ================================================================================================================
# Held-out event QA against truncation and full-attention baselines (``comet-agents eval qa``)
# ================================================================================================================
#
# Three systems answer the same items with greedy decoding and the same question text (the base model's chat
# template, via :func:`comet_agents.engine.chat_question`, placed right after the stream):
#
# * ``comet``: the stream is absorbed into a fresh memory state, then ``engine.recall`` answers.
# * ``truncation``: the plain base model (LoRA disabled, no memory) reads the most recent stream tokens that fit
#   CoMeT's answer-time attention span (see :func:`truncation_budget`), then the question.
# * ``full``: the plain base model reads the whole stream, then the question, when that fits its native window
#   (``max_position_embeddings`` minus ``max_new_tokens``); otherwise the item is "not applicable" for it (its
#   prediction and correctness are ``None``): never silently truncated.

SYSTEMS = ("comet", "truncation", "full")
QA_FAMILIES = ("user_behaviour", "agent_trajectory", "conversation")
QA_LENGTHS = (4 * 1024, 16 * 1024, 64 * 1024)
HELDOUT_SEED_BASE = 2**48
"""Held-out generator seeds lie in ``[2**48, 2**49)``. Training draws ``randrange(2**31)`` for
:func:`~comet_agents.training.data.common.generate_mixed`, which hands the family generator a 48-bit sub-seed
(``getrandbits(48)``, so below ``2**48``): no training sample can use a held-out seed."""


# ---- answer normalisation ---------------------------------------------------------------------------------------

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def normalize(text: str | None) -> str:
    """Lower-case, NFKC, punctuation deleted (SQuAD style: ``"1,204"`` -> ``"1204"``, ``"sql_query"`` ->
    ``"sqlquery"``), the articles a/an/the dropped, whitespace collapsed to single spaces."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch.isspace() else ch for ch in text if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def passkey_found(key: str, answer: str) -> bool:
    """True when ``key`` occurs in ``answer`` with no letter or digit right before or after it.

    The answer may say more ("The pass key is 8005970."), but a key padded, cut or run into other characters is
    wrong: ``"80059700"`` does not hold 8005970 and ``"44711"`` does not hold 4711 (plain containment, used by the
    grids before 2026-12-04, counted both as found).
    """
    return bool(standalone_starts(answer, key))


def is_correct(prediction: str | None, gold: str) -> bool:
    """True when the normalized gold answer occurs in the normalized prediction as whole words.

    Gold answers are short (a name, a number, a path), so the prediction may say more ("The user lives in
    Naples." is right for "Naples"). Containment is on word boundaries, so gold ``"1"`` is not found in ``"12"``.
    An empty prediction, or a gold answer with nothing left after normalisation, counts as wrong.
    """
    g = normalize(gold)
    p = normalize(prediction)
    if not g or not p:
        return False
    return f" {g} " in f" {p} "


# ---- held-out items ---------------------------------------------------------------------------------------------


@dataclass
class QAItem:
    """One evaluation item: a stream and one question about it.

    Several items may share a stream (``sample_seed``): each generated sample contributes its QAs in order.
    """

    family: str
    length: int
    item: int
    sample_seed: int
    qa_index: int
    stream: str
    question: str
    answer: str


def heldout_seed(seed: int, family: str, tokens: int, index: int) -> int:
    """Generator seed of the ``index``-th held-out sample of ``(family, tokens)``; in ``[2**48, 2**49)``."""
    digest = hashlib.sha256(f"heldout/{seed}/{family}/{tokens}/{index}".encode()).digest()
    return HELDOUT_SEED_BASE + int.from_bytes(digest[:6], "big")


def qa_items(
    family: str,
    tokens: int,
    n: int,
    seed: int = 0,
    count_tokens: Callable[[str], int] | None = None,
    *,
    qa_per_stream: int | None = None,
) -> list[QAItem]:
    """``n`` held-out items of ``family`` with streams of about ``tokens`` tokens (at least that many).

    Samples are generated with seeds from :func:`heldout_seed` (never used by training). Each sample contributes
    its QAs in the generator's order: all of them (``qa_per_stream=None``, the default: the question mix is the
    generator's own) or the first ``qa_per_stream``; the last sample may contribute fewer so that exactly ``n``
    items come back. Deterministic in ``(family, tokens, n, seed, qa_per_stream)`` and the token counter.
    """
    from .training.data.common import FAMILIES, approx_tokens

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if qa_per_stream is not None and qa_per_stream < 1:
        raise ValueError(f"qa_per_stream must be >= 1 or None, got {qa_per_stream}")
    gen = FAMILIES[family]
    count = count_tokens or approx_tokens
    items: list[QAItem] = []
    index = 0
    while len(items) < n:
        if index > 10 * n + 10:
            raise RuntimeError(f"{family} produced too few questions for {n} items")
        s = heldout_seed(seed, family, tokens, index)
        index += 1
        sample = gen(s, tokens, count)
        qas = sample.qa if qa_per_stream is None else sample.qa[:qa_per_stream]
        for k, qa in enumerate(qas):
            if len(items) == n:
                break
            items.append(QAItem(family, tokens, len(items), s, k, sample.stream, qa.question, qa.answer))
    return items


# ---- the plain base model -----------------------------------------------------------------------------------------


def truncation_budget(config: Any) -> int:
    """Stream tokens the truncation baseline reads: CoMeT's answer-time attention span, ``m + B + K + C``.

    When CoMeT answers, the open chunk attends to ``m`` global-memory slots, up to ``B`` FIFO entries, the ``K``
    overlap tokens (``chunk_overlap``) and up to ``C`` text tokens of the stream's tail (plus the question,
    which neither side counts). So the baseline gets the most recent ``config.m + config.fifo +
    config.chunk_overlap + config.chunk_size`` stream tokens (1,664 for the default 128 + 512 + 0 + 1,024),
    then the same question.
    """
    return int(config.m + config.fifo + config.chunk_overlap + config.chunk_size)


@contextlib.contextmanager
def plain_base(model: Any) -> Iterator[Any]:
    """The backbone as the plain base ``*ForCausalLM``: LoRA disabled (peft ``disable_adapter``), no memory.

    CoMeT's memory nets, added embeddings and memory LoRA only act through :class:`CometModel`'s own forward
    (the memory LoRA's hooks do nothing unless that forward has marked the added-token positions), so the
    underlying Hugging Face model with its peft LoRA layers bypassed computes exactly the base model.
    """
    backbone = model.backbone
    if hasattr(backbone, "disable_adapter") and hasattr(backbone, "get_base_model"):
        with backbone.disable_adapter():
            yield backbone.get_base_model()
    else:
        yield backbone


def base_generate(
    engine: MemoryEngine, prompt_ids: Sequence[int], *, max_new_tokens: int, stop_ids: Sequence[int] | None = None
) -> str:
    """Greedy answer of the plain base model (Hugging Face ``generate``) to ``prompt_ids``, decoded, cut and
    stripped as CoMeT's answers are (:func:`comet_agents.engine.answer_text`)."""
    model = engine.model
    tok = engine.tokenizer
    stops = list(stop_ids if stop_ids is not None else engine.default_stop_ids())
    pad = tok.pad_token_id if tok.pad_token_id is not None else (stops[0] if stops else 0)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=model.device)
    with plain_base(model) as base, torch.no_grad():
        out = base.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stops or None,
            pad_token_id=pad,
        )
    new = [int(t) for t in out[0, ids.shape[1]:]]
    for i, t in enumerate(new):  # generate keeps the stop token; the engine never emits it
        if t in stops:
            new = new[:i]
            break
    return answer_text(tok.decode(new, skip_special_tokens=True))


def native_window(engine: MemoryEngine) -> int:
    """The base model's native context (``max_position_embeddings``: 8,192 for SmolLM2); 0 when unknown."""
    return engine.max_context_positions or 0


# ---- running the systems ------------------------------------------------------------------------------------------


def fact_age(engine: MemoryEngine, stream: str, answer: str, num_tokens: int) -> int | None:
    """How many closed chunks back the answer was last spelled out in ``stream`` (0: in the open chunk), as
    :func:`~comet_agents.layout.key_age` counts for pass keys; None when the stream never spells it out (a count,
    a derived answer). The most recent mention is the one memory holds best, so this says which tier had to
    answer (:meth:`CometConfig.memory_tier`)."""
    at = stream.rfind(answer) if answer else -1
    if at < 0 and answer:
        at = stream.casefold().rfind(answer.casefold())
    if at < 0 or num_tokens < 1:
        return None
    return key_age(token_index_at(engine.tokenizer, stream, at, num_tokens), num_tokens, engine.config.chunk_size)


def evaluate_items(
    engine: MemoryEngine,
    items: Sequence[QAItem],
    *,
    systems: Sequence[str] = SYSTEMS,
    max_new_tokens: int = 24,
    budget: int | None = None,
    log: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Answer every item with every system in ``systems``; one JSON-ready row per item.

    Row keys: ``family, length, item, sample_seed, qa_index, stream_tokens, question_tokens, question, gold``,
    and per system (dicts keyed by system name) ``prediction``, ``correct`` and ``prompt_tokens`` (what the
    model read: stream tokens absorbed + question for ``comet``; kept stream tokens + question for
    ``truncation``; everything for ``full``). Not-applicable ``full`` entries are ``None``. ``budget`` overrides
    :func:`truncation_budget`; ``timings`` (if given) accumulates seconds per system (comet's include absorbing).
    """
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ValueError(f"unknown systems {unknown} (known: {', '.join(SYSTEMS)})")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    budget = truncation_budget(engine.config) if budget is None else int(budget)
    if budget < 1:
        raise ValueError(f"the truncation budget must be >= 1, got {budget}")
    window = native_window(engine)
    timings = timings if timings is not None else {}
    tok = engine.tokenizer

    # Streams shared by several items are encoded (and absorbed) once.
    streams: dict[tuple[str, int, int], list[int]] = {}
    for it in items:
        key = (it.family, it.length, it.sample_seed)
        if key not in streams:
            streams[key] = engine.encode(it.stream)

    rows: list[dict[str, Any]] = []
    for it in items:
        ids = streams[(it.family, it.length, it.sample_seed)]
        q_ids = engine.encode(chat_question(tok, it.question))
        age = fact_age(engine, it.stream, it.answer, len(ids))
        rows.append({
            "family": it.family, "length": it.length, "item": it.item, "sample_seed": it.sample_seed,
            "qa_index": it.qa_index, "stream_tokens": len(ids), "question_tokens": len(q_ids),
            "question": it.question, "gold": it.answer,
            "fact_age": age, "memory": None if age is None else engine.config.memory_tier(age),
            "prediction": {}, "correct": {}, "prompt_tokens": {},
        })

    def record(row: dict[str, Any], system: str, prediction: str | None, prompt_tokens: int | None) -> None:
        row["prediction"][system] = prediction
        row["correct"][system] = None if prediction is None else is_correct(prediction, row["gold"])
        row["prompt_tokens"][system] = prompt_tokens
        if log:
            verdict = "n/a" if prediction is None else ("OK" if row["correct"][system] else "MISS")
            log(f"{row['family']} {row['length']} #{row['item']} {system}: {prediction!r} "
                f"(gold {row['gold']!r}) {verdict}")

    if "comet" in systems:
        t0 = time.perf_counter()
        keys = list(streams)
        for start in range(0, len(keys), engine.max_batch):
            group = keys[start : start + engine.max_batch]
            states = [engine.new_state() for _ in group]
            engine.absorb_many(states, [streams[k] for k in group])
            by_key = dict(zip(group, states))
            for it, row in zip(items, rows):
                state = by_key.get((it.family, it.length, it.sample_seed))
                if state is not None:
                    answer = engine.recall(state, it.question, max_new_tokens=max_new_tokens)
                    record(row, "comet", answer, row["stream_tokens"] + row["question_tokens"])
            del states, by_key
        timings["comet"] = timings.get("comet", 0.0) + time.perf_counter() - t0

    for system in ("truncation", "full"):
        if system not in systems:
            continue
        t0 = time.perf_counter()
        for it, row in zip(items, rows):
            ids = streams[(it.family, it.length, it.sample_seed)]
            q_ids = engine.encode(chat_question(tok, it.question))
            if system == "truncation":
                prompt = ids[-budget:] + q_ids
            elif not window or len(ids) + len(q_ids) + max_new_tokens <= window:
                prompt = ids + q_ids
            else:
                record(row, system, None, None)
                continue
            record(row, system, base_generate(engine, prompt, max_new_tokens=max_new_tokens), len(prompt))
        timings[system] = timings.get(system, 0.0) + time.perf_counter() - t0
    return rows


def run_qa(
    engine: MemoryEngine,
    families: Sequence[str] = QA_FAMILIES,
    lengths: Sequence[int] = QA_LENGTHS,
    n: int = 50,
    *,
    seed: int = 0,
    systems: Sequence[str] = SYSTEMS,
    max_new_tokens: int = 24,
    qa_per_stream: int | None = None,
    budget: int | None = None,
    log: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Held-out QA for every (family, length): ``n`` items each (:func:`qa_items`, tokens counted with the
    engine's tokenizer), answered by every system (:func:`evaluate_items`). Returns all rows."""
    count = lambda s: len(engine.encode(s))  # noqa: E731
    rows: list[dict[str, Any]] = []
    for length in lengths:
        for family in families:
            items = qa_items(family, length, n, seed, count, qa_per_stream=qa_per_stream)
            rows.extend(evaluate_items(engine, items, systems=systems, max_new_tokens=max_new_tokens, budget=budget,
                                       log=log, timings=timings))
    return rows


def _length_label(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return f"{n:,}"


def qa_markdown(rows: Sequence[dict[str, Any]], *, budget: int | None = None, window: int | None = None) -> str:
    """Accuracy (%) table: one row per (family, length) plus an ``all`` row per length when several families ran.

    Each system's cell is its accuracy over the items where it applies; ``n/a`` where it applies to none, and
    ``(k/n)`` appended where it applies to only some. A note below states the truncation budget and the
    full-attention window when given.
    """
    systems = [s for s in SYSTEMS if any(s in r["prediction"] for r in rows)]
    lengths = sorted({r["length"] for r in rows})
    families = list(dict.fromkeys(r["family"] for r in rows))
    head = "| family | length | items | streams | mean tokens | " + " | ".join(systems) + " |"
    lines = [head, "|" + "---|" * (5 + len(systems))]

    def line(label: str, length: int, sel: list[dict[str, Any]]) -> str:
        cells = []
        for s in systems:
            marks = [r["correct"].get(s) for r in sel]
            marks = [m for m in marks if m is not None]
            if not marks:
                cells.append("n/a")
                continue
            cell = f"{100 * sum(marks) / len(marks):.1f}"
            if len(marks) < len(sel):
                cell += f" ({len(marks)}/{len(sel)})"
            cells.append(cell)
        n_streams = len({(r["family"], r["sample_seed"]) for r in sel})
        mean_tokens = sum(r["stream_tokens"] for r in sel) / len(sel)
        return (f"| {label} | {_length_label(length)} | {len(sel)} | {n_streams} | {mean_tokens:,.0f} | "
                + " | ".join(cells) + " |")

    for length in lengths:
        at = [r for r in rows if r["length"] == length]
        for fam in families:
            sel = [r for r in at if r["family"] == fam]
            if sel:
                lines.append(line(fam, length, sel))
        if len({r["family"] for r in at}) > 1:
            lines.append(line("**all**", length, at))
    notes = []
    where = ""
    judged = [r for r in rows if r["correct"].get("comet") is not None and "memory" in r]
    if judged:
        parts = []
        for tier, label in (("open", "open chunk"), ("fifo", "FIFO"), ("global", "global memory only"),
                            (None, "not spelled out")):
            sel = [r["correct"]["comet"] for r in judged if r["memory"] == tier]
            if sel:
                parts.append(f"{label} {sum(sel)}/{len(sel)}")
        where = "comet, by where the answer was last stated in the stream: " + ", ".join(parts) + "."
    if budget is not None and "truncation" in systems:
        notes.append(f"truncation: the base model reads the most recent {budget:,} stream tokens (CoMeT's answer-time "
                     "attention span, m + B + K + C) and the question")
    if window is not None and "full" in systems:
        notes.append(f"full: the base model reads the whole stream and the question when they fit its "
                     f"{window:,}-token window (with the answer), else n/a")
    if notes:
        lines.append("")
        lines.append("; ".join(notes) + ". Accuracy in % (gold answer contained in the normalized greedy answer).")
    if where:
        lines.extend(["", where])
    return "\n".join(lines)


# ================================================================================================================
# Short-chat preservation (``comet-agents eval preserve``)
# ================================================================================================================

SHORT_INSTRUCTIONS: tuple[str, ...] = (
    # facts
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "How many days are there in a week?",
    "What is the chemical symbol for water?",
    "Which ocean is the largest?",
    "What colour is the sky on a clear day?",
    "What is the boiling point of water in Celsius?",
    "Who painted the Mona Lisa?",
    "What language is spoken in Brazil?",
    # arithmetic
    "What is 7 plus 5?",
    "What is 12 times 3?",
    "What is 100 divided by 4?",
    "What is 15 minus 9?",
    "What is the square root of 81?",
    "Is 17 a prime number?",
    # definitions
    "Define the word 'photosynthesis' in one sentence.",
    "What is a noun?",
    "What does CPU stand for?",
    "Explain what gravity is in one sentence.",
    "What is an atom?",
    "What is a synonym for 'happy'?",
    "What is the opposite of 'cold'?",
    # rewriting
    "Rewrite this sentence in the past tense: I walk to school.",
    "Make this sentence more polite: Give me the salt.",
    "Correct the spelling: I recieved the pakage yesterday.",
    "Turn this into a question: The train leaves at noon.",
    "Summarize in five words: The cat slept all day on the warm windowsill.",
    "Write the word 'banana' in capital letters.",
    # translation
    "Translate 'hello' into Spanish.",
    "Translate 'thank you' into French.",
    "Translate 'cat' into German.",
    "What is 'water' in Italian?",
    # lists
    "List three primary colours.",
    "Name three fruits.",
    "List three animals that live in the ocean.",
    "Name three countries in Europe.",
    "Give me three words that rhyme with 'cat'.",
    # short generation and advice
    "Write a haiku about the sea.",
    "Suggest a name for a pet goldfish.",
    "Give me one tip for sleeping better.",
    "Write a one-sentence greeting for a birthday card.",
    "Tell me a short joke.",
    "How do I boil an egg?",
    # classification and reasoning
    "Is a tomato a fruit or a vegetable?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Is the following review positive or negative: 'I loved this movie!'",
    "What comes next in the sequence 2, 4, 6, 8?",
    "Which month comes after March?",
    "How many legs does a spider have?",
)


def base_preservation(
    engine: MemoryEngine,
    instructions: Sequence[str] = SHORT_INSTRUCTIONS,
    *,
    max_new_tokens: int = 40,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Does the adapter keep the base model's answers on short chats (one chunk, empty memory)?

    For each instruction, CoMeT answers with ``engine.recall`` on a fresh, EMPTY state (the chat-templated
    instruction is the open chunk), and the plain base model (LoRA disabled) answers the same chat-templated
    prompt with Hugging Face greedy ``generate``; both stop at the same stop tokens and ``max_new_tokens``.
    A pair matches when the answers are identical or equal after :func:`normalize`.

    Returns ``{"rate", "matches", "n", "exact", "max_new_tokens", "rows"}``; each row holds the instruction,
    both answers and ``exact`` / ``normalized`` / ``match`` flags.
    """
    if not instructions:
        raise ValueError("no instructions given")
    tok = engine.tokenizer
    rows: list[dict[str, Any]] = []
    for text in instructions:
        comet = engine.recall(engine.new_state(), text, max_new_tokens=max_new_tokens)
        base = base_generate(engine, engine.encode(chat_question(tok, text)), max_new_tokens=max_new_tokens)
        exact = comet == base
        norm = normalize(comet) == normalize(base)
        rows.append({"instruction": text, "comet": comet, "base": base, "exact": exact, "normalized": norm,
                     "match": exact or norm})
        if log:
            log(f"{'MATCH' if exact or norm else 'DIFF '} {text!r}: comet={comet!r} base={base!r}")
    matches = sum(r["match"] for r in rows)
    return {"rate": matches / len(rows), "matches": matches, "n": len(rows),
            "exact": sum(r["exact"] for r in rows), "max_new_tokens": max_new_tokens, "rows": rows}


def preservation_markdown(result: dict[str, Any], *, show_differences: int = 10) -> str:
    """A summary line-table and up to ``show_differences`` differing answers."""
    lines = [
        "| instructions | match (exact or normalized) | exact | rate |",
        "|---|---|---|---|",
        f"| {result['n']} | {result['matches']} | {result['exact']} | {100 * result['rate']:.1f} % |",
    ]
    diffs = [r for r in result["rows"] if not r["match"]][:show_differences]
    if diffs:
        lines += ["", "| instruction | CoMeT (empty memory) | base model |", "|---|---|---|"]
        for r in diffs:
            cells = [str(r[k]).replace("|", "\\|").replace("\n", " ") for k in ("instruction", "comet", "base")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
