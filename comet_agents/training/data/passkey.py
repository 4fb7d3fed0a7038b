"""Pass-key retrieval: a key hidden at a relative depth inside a long filler, then "What is the pass key?".

The key is a 5-7 digit number or, sometimes, an alphanumeric code such as ``K7-Q2M9``. The needle sentence states
it (canonically "The pass key is 71432. Remember it. 71432 is the pass key."); depth 0 puts the needle first,
depth 1 last, depth d after about d of the filler tokens. Filler styles (:data:`FILLER_STYLES`):

- ``classic``: the repeated "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
  again." of the original pass-key test;
- ``prose``: random sentences from word lists;
- ``logs``: service log lines;
- ``user_events``: rendered shopper events (see :mod:`.user_behaviour`);
- ``agent_steps``: rendered agent thoughts, tool calls and observations (see :mod:`.agent_trajectory`);
- ``chat``: rendered user / assistant chit-chat (see :mod:`.conversation`).

The key occurs in the stream only inside the needle (filler is regenerated in the rare case it contains it).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator

from comet_agents.events import ChatMessage, Event, TextEvent, render

from . import agent_trajectory, conversation, user_behaviour, vocab
from .common import QA, Sample, TokenCounter, approx_tokens, check_target, make_rng, standalone_starts

__all__ = [
    "FAMILY",
    "FILLER_STYLES",
    "CLASSIC_FILLER",
    "CANONICAL_NEEDLE",
    "NEEDLE_TEMPLATES",
    "QUESTIONS",
    "make_key",
    "make_passkey_haystack",
    "generate",
    "generate_in_memory",
    "generate_multi",
    "multi_key_range",
    "multi_max_depth",
]

FAMILY = "passkey"
FILLER_STYLES = ("classic", "prose", "logs", "user_events", "agent_steps", "chat")
CLASSIC_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
CANONICAL_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
NEEDLE_TEMPLATES = (
    CANONICAL_NEEDLE,
    "Important: the pass key is {key}. Keep it in mind: {key}.",
    "Here is the pass key you will need later: {key}. Once more, the pass key is {key}.",
    "Note this down. The secret pass key is {key}. I repeat: {key}.",
    "Pass key: {key}. Do not forget it. The pass key is {key}.",
    "Remember this pass key: {key}. The pass key is {key}.",
    "The pass key for today is {key}. Remember {key}.",
    "Attention! The pass key is {key}. It is {key}.",
    "Keep this safe - the pass key is {key}. Again: {key} is the pass key.",
)
QUESTIONS = (
    "What is the pass key?",
    "What was the pass key mentioned in the text?",
    "Which pass key did the text ask you to remember?",
    "Tell me the pass key.",
    "What is the pass key hidden in the text?",
    "Recall the pass key.",
    "What pass key was given?",
    "There was a pass key somewhere in the text. What was it?",
    "What is the secret pass key?",
    "Please repeat the pass key exactly.",
    "What number or code was the pass key?",
    "What is the pass key? The pass key is",
)
_STYLE_WEIGHTS = {"classic": 0.15, "prose": 0.3, "logs": 0.15, "user_events": 0.15, "agent_steps": 0.15, "chat": 0.1}
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I / O
_DIGITS = "23456789"  # no 0 / 1
_CODE_PATTERNS = ("LD-LDLD", "LL-DDDD", "DLL-DLD", "LLLDD", "LDLD-DL")


def make_key(rng: random.Random) -> str:
    """A 3-9 digit number (70%) or a short alphanumeric code like ``K7-Q2M9`` (30%).

    Lengths 3-9, not only the grid's 5-7: users' codes are often short (a 4-digit PIN), and a model that only saw
    5-7 digits pads a 4-digit key to five and cuts a 9-digit one to seven ("44111" for 4711 at step 3,575,
    docs/training.md)."""
    if rng.random() < 0.7:
        n = rng.randint(3, 9)
        return str(rng.randint(10 ** (n - 1), 10**n - 1))
    pattern = rng.choice(_CODE_PATTERNS)
    return "".join(rng.choice(_LETTERS) if c == "L" else rng.choice(_DIGITS) if c == "D" else c for c in pattern)


# ----------------------------------------------------------------------------------------------- filler units

_PROSE = (
    "The {adj} {noun} {verb} {place}.",
    "{time}, the {noun} {verb} {adv}.",
    "A {adj} {noun} {verb} near the {adj2} {noun2}.",
    "{name} {verb} {place} with a {adj} {noun}.",
    "Nobody knew why the {noun} was so {adj}.",
    "{name} said that the {noun} {verb} {adv} {place}.",
    "It was a {adj} day, and the {noun} {verb} {place}.",
    "There was once a {adj} {noun} that {verb} every morning.",
    "The {noun} and the {noun2} were {adj} and {adj2}.",
    "{time}, {name} {verb} the {noun} and {verb2} the {noun2}.",
    "Some say the {noun} {verb} {place} long before anyone remembers.",
    "{name} {verb} {adv}, thinking about the {adj} {noun}.",
    "If the {noun} is {adj}, the {noun2} will be {adj2}.",
    "The old {noun} {verb} {place} once more.",
    "In the {adj} light, the {noun} looked almost {adj2}.",
    "Every {noun} has a story, and this one was {adj}.",
    "{name} and {name2} {verb} {place}.",
    "The smell of {food} drifted {place}.",
    "Far away, a {noun} {verb} {adv}.",
    "Then the {noun} {verb}, and everything was {adj} again.",
    "{name} kept a {adj} {noun} in a {adj2} box.",
    "No one {verb} the {noun} {place} that year.",
)


def _prose_sentence(rng: random.Random) -> str:
    s = rng.choice(_PROSE).format(
        adj=rng.choice(vocab.ADJECTIVES), adj2=rng.choice(vocab.ADJECTIVES), noun=rng.choice(vocab.NOUNS),
        noun2=rng.choice(vocab.NOUNS), verb=rng.choice(vocab.VERBS_PAST), verb2=rng.choice(vocab.VERBS_PAST),
        adv=rng.choice(vocab.ADVERBS), place=rng.choice(vocab.PLACES), time=rng.choice(vocab.TIME_PHRASES),
        name=rng.choice(vocab.FIRST_NAMES), name2=rng.choice(vocab.FIRST_NAMES), food=rng.choice(vocab.FOODS),
    )
    s = _AN.sub(r"\1n ", s)
    return s[0].upper() + s[1:]


_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _log_lines(rng: random.Random) -> Iterator[str]:
    t = rng.randrange(0, 365 * 86400)
    while True:
        t += rng.randint(0, 3000) // rng.choice((1, 10, 100))
        d, rem = divmod(t, 86400)
        stamp = (f"2025-{1 + d // 31 % 12:02d}-{1 + d % 28:02d}T"
                 f"{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}.{rng.randint(0, 999):03d}Z")
        level = rng.choices(("INFO", "DEBUG", "WARN", "ERROR"), weights=(12, 5, 2, 1), k=1)[0]
        service = rng.choice(vocab.SERVICES)
        if rng.random() < 0.35:
            msg = (f"{rng.choice(('GET', 'GET', 'POST', 'PUT', 'DELETE'))} {rng.choice(vocab.HTTP_PATHS)} "
                   f"{rng.choice((200, 200, 200, 201, 204, 301, 400, 401, 404, 500))} {rng.randint(1, 900)}ms")
        else:
            msg = rng.choice(vocab.LOG_MESSAGES).format(
                word=rng.choice(vocab.NOUNS), n=rng.randint(1, 99999), m=rng.randint(1, 64), ms=rng.randint(1, 4000),
                hex="".join(rng.choice("0123456789abcdef") for _ in range(8)),
            )
        yield f"{stamp} {level:<5} [{service}] {msg}"


def _units(style: str, rng: random.Random, target_tokens: int) -> tuple[Iterator[str], str | None]:
    """(unit source, joiner): with a joiner, units are raw sentences / lines grouped into TextEvents;
    without, each unit is an already rendered event."""
    if style == "classic":
        def classic() -> Iterator[str]:
            while True:
                yield CLASSIC_FILLER
        return classic(), " "
    if style == "prose":
        def prose() -> Iterator[str]:
            while True:
                yield _prose_sentence(rng)
        return prose(), " "
    if style == "logs":
        return _log_lines(rng), "\n"
    events: Iterator[Event]
    if style == "user_events":
        events = user_behaviour.iter_filler_events(rng)
    elif style == "agent_steps":
        events = agent_trajectory.iter_filler_events(rng, max_obs_chars=max(120, min(1200, target_tokens * 4 // 25)))
    elif style == "chat":
        events = conversation.iter_chitchat(rng, max_sentences=3 if target_tokens < 2000 else 5)
    else:
        raise ValueError(f"unknown filler style {style!r} (known: {', '.join(FILLER_STYLES)})")
    return (render(e) for e in events), None


def _group_sizes(seed: int, joiner: str) -> Iterator[int]:
    rng = random.Random(seed)
    lo, hi = (5, 20) if joiner == "\n" else (3, 9)
    while True:
        yield rng.randint(lo, hi)


def _assemble(units: list[str], ks: list[int], needles: list[tuple[str, str]], joiner: str | None,
              group_seed: int) -> str:
    """Filler units with needle ``i`` inserted before unit ``ks[i]`` (``ks`` non-decreasing), rendered."""
    if joiner is None:
        parts, prev = [], 0
        for k, (_, rendered) in zip(ks, needles):
            parts += units[prev:k] + [rendered]
            prev = k
        return "".join(parts + units[prev:])
    seq = list(units)
    for k, (raw, _) in reversed(list(zip(ks, needles))):  # back to front: earlier indices stay valid
        seq.insert(k, raw)
    out: list[str] = []
    sizes = _group_sizes(group_seed, joiner)
    i = 0
    while i < len(seq):
        n = next(sizes)
        out.append(render(TextEvent(joiner.join(seq[i : i + n]))))
        i += n
    return "".join(out)


def _insert_index(unit_tokens: list[int], depth: float) -> int:
    """Index k such that the units before k hold about ``depth`` of the filler tokens."""
    if depth <= 0.0 or not unit_tokens:
        return 0
    if depth >= 1.0:
        return len(unit_tokens)
    total = sum(unit_tokens)
    goal = depth * total
    acc = 0
    best_k, best_err = 0, goal
    for k, t in enumerate(unit_tokens, start=1):
        acc += t
        err = abs(acc - goal)
        if err < best_err:
            best_k, best_err = k, err
        elif acc > goal:
            break
    return best_k


def _haystack(
    rng: random.Random,
    target_tokens: int,
    depths: list[float],
    needles: list[str],
    style: str,
    count_tokens: TokenCounter,
    needle_role: str | None = None,
    avoid: tuple[str, ...] = (),
) -> str:
    """Filler of about ``target_tokens`` tokens with ``needles[i]`` at relative depth ``depths[i]`` (sorted).

    Filler units in which a string of ``avoid`` (the keys) stands alone are skipped, so that a common short key
    ("500", an HTTP status in log filler) still occurs only in its needles."""
    source, joiner = _units(style, rng, target_tokens)
    group_seed = rng.getrandbits(64)
    needle_units = [
        (n, render(ChatMessage(needle_role, n)) if needle_role else render(TextEvent(n))) for n in needles
    ]
    needle_tokens = sum(count_tokens(rendered) for _, rendered in needle_units)
    sep = joiner or ""
    units: list[str] = []
    unit_tokens: list[int] = []

    def text_for(n: int) -> str:
        ks = [_insert_index(unit_tokens[:n], d) for d in depths]
        return _assemble(units[:n], ks, needle_units, joiner, group_seed)

    # Draw units until the whole text reaches the target ...
    goal = target_tokens - needle_tokens
    estimate = 0
    for _ in range(32):
        skipped = 0
        while estimate < goal:
            unit = next(source)
            if any(standalone_starts(unit, k) for k in avoid):
                skipped += 1
                if skipped > 10_000:
                    raise ValueError(f"the {style} filler keeps producing one of the keys {list(avoid)!r}")
                continue
            skipped = 0
            units.append(unit)
            unit_tokens.append(count_tokens(unit + sep))
            estimate += unit_tokens[-1]
        real = count_tokens(text_for(len(units)))
        if real >= target_tokens:
            break
        goal += target_tokens - real
    # ... then keep the fewest units that still reach it (summed unit counts are only an estimate).
    lo, hi = 0, len(units)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text_for(mid)) >= target_tokens:
            hi = mid
        else:
            lo = mid + 1
    return text_for(hi)


def _check_args(target_tokens: int, depth: float, key: str, filler: str) -> None:
    check_target(target_tokens)
    is_number = isinstance(depth, (int, float)) and not isinstance(depth, bool)
    if not is_number or not math.isfinite(depth) or not 0 <= depth <= 1:
        raise ValueError(f"depth must be a number in [0, 1], got {depth!r}")
    if not isinstance(key, str) or not key.strip() or "\n" in key or "\r" in key:
        raise ValueError(f"key must be a non-empty single-line string, got {key!r}")
    if filler not in FILLER_STYLES:
        raise ValueError(f"unknown filler style {filler!r} (known: {', '.join(FILLER_STYLES)})")


def _build(
    rng: random.Random,
    target_tokens: int,
    depths: list[float],
    keys: list[str],
    needles: list[str],
    filler: str,
    count_tokens: TokenCounter,
    needle_role: str | None = None,
) -> str:
    """The haystack, regenerated in the rare case the assembled text still holds a key outside the needles
    (filler units holding one are already skipped): each key stands alone only in its needles.

    A key counts where it stands alone (:func:`~.common.standalone_starts`): a 3-digit key inside a longer number of the
    filler ("964" in "19642 ms") is not the key to the reader and must not make short keys unbuildable."""
    expected = {k: sum(len(standalone_starts(n, k)) for n in needles) for k in keys}
    text = ""
    for _ in range(10):
        text = _haystack(random.Random(rng.getrandbits(64)), target_tokens, depths, needles, filler, count_tokens,
                         needle_role, tuple(keys))
        if all(len(standalone_starts(text, k)) == c for k, c in expected.items()):
            return text
    raise ValueError(f"could not build a filler without the keys {keys!r}; choose less common keys")


def _pick_filler(rng: random.Random) -> str:
    styles = sorted(_STYLE_WEIGHTS)
    return rng.choices(styles, weights=[_STYLE_WEIGHTS[s] for s in styles], k=1)[0]


def _pick_needle_role(rng: random.Random, filler: str) -> str | None:
    """Sometimes the user says the needle, in fillers made of chat-like events."""
    return "user" if filler in ("chat", "user_events", "agent_steps") and rng.random() < 0.4 else None


def make_passkey_haystack(
    target_tokens: int,
    depth: float,
    key: str,
    filler: str = "classic",
    count_tokens: TokenCounter = approx_tokens,
    seed: int = 0,
    *,
    needle: str | None = None,
) -> str:
    """A filler text of about ``target_tokens`` tokens with the pass-key needle at relative ``depth``.

    The needle is :data:`CANONICAL_NEEDLE` ("The pass key is {key}. Remember it. {key} is the pass key.") unless
    ``needle`` (a template with ``{key}``, or a literal sentence containing the key) is given. ``depth`` 0 makes the
    needle the first thing in the text, 1 the last. ``seed`` only drives the filler's randomness.
    """
    _check_args(target_tokens, depth, key, filler)
    sentence = (needle or CANONICAL_NEEDLE).replace("{key}", key)
    if key not in sentence:
        raise ValueError(f"needle {sentence!r} does not contain the key {key!r}")
    rng = make_rng(seed, f"{FAMILY}-haystack")
    return _build(rng, target_tokens, [float(depth)], [key], [sentence], filler, count_tokens)


def generate(
    seed: int,
    target_tokens: int,
    count_tokens: TokenCounter = approx_tokens,
    *,
    depth: float | None = None,
    filler: str | None = None,
) -> Sample:
    """A pass-key sample; ``depth`` and ``filler`` are drawn from ``seed`` unless given."""
    check_target(target_tokens)
    rng = make_rng(seed, FAMILY)
    key = make_key(rng)
    if depth is None:
        r = rng.random()
        depth = 0.0 if r < 0.08 else 1.0 if r < 0.16 else round(rng.random(), 3)
    if filler is None:
        filler = _pick_filler(rng)
    _check_args(target_tokens, depth, key, filler)
    template_index = rng.randrange(len(NEEDLE_TEMPLATES))
    needle = NEEDLE_TEMPLATES[template_index].format(key=key)
    role = _pick_needle_role(rng, filler)
    stream = _build(rng, target_tokens, [float(depth)], [key], [needle], filler, count_tokens, role)
    question = rng.choice(QUESTIONS)
    offset = stream.index(needle)
    meta = {
        "seed": seed,
        "target_tokens": target_tokens,
        "tokens": count_tokens(stream),
        "key": key,
        "depth": depth,
        "filler": filler,
        "needle": needle,
        "needle_template": template_index,
        "needle_role": role,
        "needle_char_offset": offset,
        "qa_kinds": ["passkey"],
    }
    return Sample(FAMILY, stream, [QA(question, key)], meta)


def generate_in_memory(seed: int, target_tokens: int, count_tokens: TokenCounter = approx_tokens) -> Sample:
    """A pass-key sample with the key in the first 55 % of the stream (family ``passkey_memory``).

    With training's chunk plans (the open chunk holds the last 1/8 to 7/8 of a chunk plus the question) such a
    key almost always sits in a closed chunk, so the answer must come through memory: the signal training
    needs, where a uniform depth leaves a third of short samples answerable from the open chunk alone.
    """
    rng = make_rng(seed, FAMILY + "-memory")
    sample = generate(seed, target_tokens, count_tokens, depth=round(rng.random() * 0.55, 3))
    sample.family = "passkey_memory"
    return sample


MULTI_LABELS = (
    "blue door", "red door", "north gate", "south gate", "server room", "archive", "garage", "basement",
    "front office", "back office", "wine cellar", "rooftop", "library", "workshop", "vault", "locker",
    "laboratory", "boiler room", "east wing", "west wing", "staff lounge", "mail room", "green cabinet",
    "loading dock",
)
MULTI_NEEDLES = (
    "The pass key for the {label} is {key}. Remember it: the {label} pass key is {key}.",
    "Note: the {label} opens with pass key {key}. Once more, {label}: {key}.",
    "Pass key of the {label}: {key}. Keep it in mind, the {label} needs {key}.",
    "Remember this: to enter the {label}, use the pass key {key}. The {label} key is {key}.",
    "Important - the pass key for the {label} is {key}. Again: {key} for the {label}.",
)
MULTI_QUESTIONS = (
    "What is the pass key for the {label}?",
    "Which pass key opens the {label}?",
    "Tell me the pass key of the {label}.",
    "What was the pass key given for the {label}?",
    "Recall the {label} pass key.",
)


MULTI_TAIL_MARGIN = 1500  # tokens at the end of a long ``passkey_multi`` stream kept free of keys in memory


def multi_key_range(target_tokens: int) -> tuple[int, int]:
    """(fewest, most) keys of a ``passkey_multi`` stream of ``target_tokens``: 2-4 up to 8k tokens, up to 8 (at
    least half as many) in longer ones, about one per 2,000 tokens, so that a long stream's answers do not
    shrink to a few tokens per 10k absorbed."""
    most = min(8, max(4, target_tokens // 2000))
    return max(2, most // 2), most


def multi_max_depth(target_tokens: int) -> float:
    """How deep a ``passkey_multi`` key in memory may sit: the first 60 % of a short stream, all but its last
    1,500 tokens in a long one. Either way the key ends in a closed chunk of training's plans (1,024-token
    chunks, tails under 900 tokens), and in long streams the last closed chunks hold keys too."""
    return max(0.6, 1.0 - MULTI_TAIL_MARGIN / target_tokens)


def generate_multi(seed: int, target_tokens: int, count_tokens: TokenCounter = approx_tokens) -> Sample:
    """Labelled pass keys (family ``passkey_multi``; how many: :func:`multi_key_range`), each asked for in turn.

    Keys sit before :func:`multi_max_depth` (so, with training's chunk plans, in closed chunks) at distinct
    depths, each tied to a label ("the pass key for the server room is 48213"). In half of the samples the last
    key is instead the very end of the stream (depth 1), so it lies in the open chunk: the model has to take
    some answers from memory and others from its local context, chosen by the label. A mix whose keys all sit in
    memory taught the model to ignore keys in plain sight (2026-12-01: 0 % at depths 75-100 % of 1,500 tokens
    after 760 such steps). Every question names one label, so the answer has to come from the right entry, not
    from "the only number seen". Several answers per stream give several times the supervised tokens of one
    pass key for the same absorbed tokens. No key is a substring of another, so each occurs only inside its own
    needle.
    """
    check_target(target_tokens)
    rng = make_rng(seed, FAMILY + "-multi")
    n = rng.randint(*multi_key_range(target_tokens))
    labels = rng.sample(MULTI_LABELS, n)
    keys: list[str] = []
    while len(keys) < n:
        key = make_key(rng)
        if all(key not in k and k not in key for k in keys):
            keys.append(key)
    top = multi_max_depth(target_tokens)
    depths = sorted(round(rng.random() * top, 3) for _ in range(n))
    local = rng.random() < 0.5
    if local:
        depths[-1] = 1.0
    filler = _pick_filler(rng)
    needles = [rng.choice(MULTI_NEEDLES).format(label=lab, key=key) for lab, key in zip(labels, keys)]
    role = _pick_needle_role(rng, filler)
    stream = _build(rng, target_tokens, depths, keys, needles, filler, count_tokens, role)
    order = list(range(n))
    rng.shuffle(order)
    qa = [QA(rng.choice(MULTI_QUESTIONS).format(label=labels[i]), keys[i]) for i in order]
    meta = {
        "seed": seed,
        "target_tokens": target_tokens,
        "tokens": count_tokens(stream),
        "keys": keys,
        "labels": labels,
        "depths": depths,
        "local_key": local,
        "filler": filler,
        "needle_role": role,
        "needle_char_offsets": [stream.index(nd) for nd in needles],
        "qa_kinds": ["passkey_multi"] * n,
    }
    return Sample("passkey_multi", stream, qa, meta)
