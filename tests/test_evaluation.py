"""Evaluation harness: answer normalisation, held-out items, the QA systems and short-chat preservation.

The end-to-end tests run the real SmolLM2 base with whatever ``"default"`` adapter is shipped (untrained while
none is): they check the harness (same items for every system, budgets, tables), not accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from comet_agents import evaluation as ev
from comet_agents.config import CometConfig
from comet_agents.evaluation import (
    HELDOUT_SEED_BASE,
    SHORT_INSTRUCTIONS,
    heldout_seed,
    is_correct,
    normalize,
    passkey_found,
    preservation_markdown,
    qa_items,
    qa_markdown,
    truncation_budget,
)

# ---- normalisation and correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Answer", "answer"),
        ("  a   cat\n\tand AN apple ", "cat and apple"),
        ("1,204!", "1204"),
        ("62.99", "6299"),
        ("sql_query", "sqlquery"),
        ("src/app/main.py", "srcappmainpy"),
        ("“Naples”…", "naples"),  # unicode punctuation
        ("Théâtre", "théâtre"),  # letters with accents are kept
        ("then there", "then there"),  # articles only as whole words
        ("", ""),
        (None, ""),
    ],
)
def test_normalize(text, expected) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Naples", "Naples", True),
        ("The user lives in Naples.", "naples", True),
        ("It cost $62.99 in total", "62.99", True),
        ("The tool sql_query failed.", "sql_query", True),
        ("It reports ca356cc", "It reports ca356cc.", True),
        ("a Tesla Model 3", "Tesla Model 3", True),  # articles dropped on both sides
        ("The user searched 12 times", "1", False),  # whole words only
        ("1", "12", False),
        ("Napleston", "Naples", False),
        ("", "Naples", False),
        (None, "Naples", False),
        ("anything", "the", False),  # nothing left of the gold answer
        ("Kuala Lumpur", "Kuala  Lumpur", True),
        ("kuala\nlumpur", "Kuala Lumpur", True),
    ],
)
def test_is_correct(prediction, gold, expected) -> None:
    assert is_correct(prediction, gold) is expected


@pytest.mark.parametrize(
    ("key", "answer", "expected"),
    [
        ("8005970", "8005970", True),
        ("8005970", "The pass key is 8005970.", True),
        ("8005970", "80059700", False),  # padded: counted as found by plain containment before 2026-12-04
        ("4711", "44711", False),
        ("4711", "47111", False),
        ("1976505", "197650", False),  # cut
        ("K7-Q2M9", "The code is K7-Q2M9!", True),
        ("K7-Q2M9", "XK7-Q2M9", False),
        ("123", "1234 and 123", True),  # any standalone occurrence
        ("123", "", False),
        ("", "123", False),
    ],
)
def test_passkey_found(key, answer, expected) -> None:
    assert passkey_found(key, answer) is expected


# ---- held-out items -----------------------------------------------------------------------------------------------


def test_heldout_seeds_are_outside_every_training_seed_range() -> None:
    seeds = {heldout_seed(s, f, t, i) for s in (0, 1) for f in ("conversation", "passkey") for t in (4096, 8192)
             for i in range(50)}
    assert len(seeds) == 2 * 2 * 2 * 50
    assert all(HELDOUT_SEED_BASE <= s < 2 * HELDOUT_SEED_BASE for s in seeds)  # training: < 2**31, sub-seeds < 2**48
    assert heldout_seed(0, "conversation", 4096, 3) == heldout_seed(0, "conversation", 4096, 3)


def test_qa_items_are_deterministic_and_take_every_qa_of_a_stream() -> None:
    items = qa_items("conversation", 600, 7, seed=3)
    assert [it.item for it in items] == list(range(7))
    assert items == qa_items("conversation", 600, 7, seed=3)
    assert items != qa_items("conversation", 600, 7, seed=4)
    first = [it for it in items if it.sample_seed == items[0].sample_seed]
    assert [it.qa_index for it in first] == list(range(len(first))) and len(first) > 1  # all QAs of the stream
    assert all(it.question and it.answer and it.family == "conversation" and it.length == 600 for it in items)
    one_each = qa_items("conversation", 600, 3, seed=3, qa_per_stream=1)
    assert [it.qa_index for it in one_each] == [0, 0, 0] and len({it.sample_seed for it in one_each}) == 3
    with pytest.raises(ValueError, match="unknown family"):
        qa_items("nope", 600, 1)


def test_truncation_budget_is_the_answer_time_span() -> None:
    cfg = CometConfig()
    assert truncation_budget(cfg) == cfg.m + cfg.fifo + cfg.chunk_size == 128 + 512 + 1024
    assert truncation_budget(CometConfig(temporary_memory=False)) == 128 + 1024


def test_short_instructions() -> None:
    assert len(SHORT_INSTRUCTIONS) == 50 and len(set(SHORT_INSTRUCTIONS)) == 50


def test_unknown_system_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown systems"):
        ev.evaluate_items(None, [], systems=("comet", "oracle"))  # type: ignore[arg-type]


def _row(family, length, item, correct, seed=1):
    return {"family": family, "length": length, "item": item, "sample_seed": seed, "stream_tokens": length + 5,
            "prediction": {k: (None if v is None else "x") for k, v in correct.items()}, "correct": correct}


def test_qa_markdown_accuracy_na_and_partial_cells() -> None:
    rows = [
        _row("conversation", 4096, 0, {"comet": True, "truncation": False, "full": True}),
        _row("conversation", 4096, 1, {"comet": False, "truncation": False, "full": None}),
        _row("user_behaviour", 4096, 0, {"comet": True, "truncation": True, "full": True}, seed=2),
        _row("conversation", 16384, 0, {"comet": True, "truncation": False, "full": None}),
    ]
    table = qa_markdown(rows, budget=1664, window=8192)
    lines = table.splitlines()
    assert lines[0] == "| family | length | items | streams | mean tokens | comet | truncation | full |"
    assert "| conversation | 4k | 2 | 1 | 4,101 | 50.0 | 0.0 | 100.0 (1/2) |" in lines
    assert "| user_behaviour | 4k | 1 | 1 | 4,101 | 100.0 | 100.0 | 100.0 |" in lines
    assert "| **all** | 4k | 3 | 2 | 4,101 | 66.7 | 33.3 | 100.0 (2/3) |" in lines
    assert "| conversation | 16k | 1 | 1 | 16,389 | 100.0 | 0.0 | n/a |" in lines
    assert "1,664 stream tokens" in table and "8,192-token window" in table


def test_preservation_markdown_lists_differences() -> None:
    result = {"n": 2, "matches": 1, "exact": 1, "rate": 0.5, "rows": [
        {"instruction": "a", "comet": "x", "base": "x", "match": True},
        {"instruction": "b|c", "comet": "y", "base": "z", "match": False}]}
    text = preservation_markdown(result)
    assert "| 2 | 1 | 1 | 50.0 % |" in text and "| b\\|c | y | z |" in text


# ---- the real base model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    from comet_agents.engine import MemoryEngine
    from comet_agents.modeling import CometModel

    return MemoryEngine(CometModel.from_pretrained("default", device="cpu").eval())


@pytest.mark.slow
def test_plain_base_bypasses_lora() -> None:
    """``plain_base`` must compute the base model even when the LoRA weights (peft at every position, and the
    memory LoRA at added tokens) are not zero."""
    from comet_agents import CometConfig
    from comet_agents.base_models import DEFAULT_BASE
    from comet_agents.engine import MemoryEngine
    from comet_agents.modeling import CometModel

    model = CometModel.from_pretrained(DEFAULT_BASE, config=CometConfig(lora_rank=8), device="cpu").eval()
    engine = MemoryEngine(model)
    ids = torch.tensor([engine.encode("The quick brown fox jumps over the lazy dog.")])
    with ev.plain_base(model) as base:
        before = base(input_ids=ids).logits
    lora_b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    lora_b += [lin.weight for lora in model.memory_lora for lin in lora.up.values()]
    assert lora_b
    saved = [p.detach().clone() for p in lora_b]
    try:
        with torch.no_grad():
            for p in lora_b:
                p.normal_(0.0, 0.05)
        with torch.no_grad(), ev.plain_base(model) as base:
            plain = base(input_ids=ids).logits
        with torch.no_grad():
            adapted = model.backbone(input_ids=ids).logits
    finally:
        with torch.no_grad():
            for p, s in zip(lora_b, saved):
                p.copy_(s)
    assert torch.equal(plain, before)
    assert not torch.allclose(adapted, before, atol=1e-3)


@pytest.mark.slow
def test_qa_systems_answer_the_same_items(engine, monkeypatch) -> None:
    items = [it for fam in ev.QA_FAMILIES
             for it in qa_items(fam, 1200, 1, seed=0, count_tokens=lambda s: len(engine.encode(s)))]
    assert [it.family for it in items] == list(ev.QA_FAMILIES)
    prompts: list[list[int]] = []
    real_generate = ev.base_generate

    def spy(eng, prompt_ids, **kw):
        prompts.append(list(prompt_ids))
        return real_generate(eng, prompt_ids, **kw)

    monkeypatch.setattr(ev, "base_generate", spy)
    budget = 400  # below the stream length, so that truncation really cuts (the default is 1,664)
    timings: dict[str, float] = {}
    rows = ev.evaluate_items(engine, items, max_new_tokens=6, budget=budget, timings=timings)
    assert set(timings) == set(ev.SYSTEMS)
    assert len(rows) == 3 and len(prompts) == 6  # truncation for every item, then full for every item
    for it, row, trunc, full in zip(items, rows, prompts[:3], prompts[3:]):
        assert (row["family"], row["question"], row["gold"]) == (it.family, it.question, it.answer)
        assert set(row["prediction"]) == set(row["correct"]) == set(row["prompt_tokens"]) == set(ev.SYSTEMS)
        for system in ev.SYSTEMS:
            assert isinstance(row["prediction"][system], str)
            assert row["correct"][system] == is_correct(row["prediction"][system], it.answer)
        stream = engine.encode(it.stream)
        question = engine.encode(ev.chat_question(engine.tokenizer, it.question))
        assert row["stream_tokens"] == len(stream) >= 1200 and row["question_tokens"] == len(question)
        assert trunc == stream[-budget:] + question  # the most recent `budget` stream tokens, then the question
        assert row["prompt_tokens"]["truncation"] == budget + len(question)
        assert full == stream + question  # fits the 8k window: full is applicable
        assert row["prompt_tokens"]["full"] == len(stream) + len(question) == row["prompt_tokens"]["comet"]
    json.dumps(rows)  # JSON-ready

    table = qa_markdown(rows, budget=budget, window=ev.native_window(engine))
    for fam in ev.QA_FAMILIES:
        assert f"| {fam} | 1,200 | 1 | 1 |" in table
    assert "| **all** | 1,200 | 3 | 3 |" in table

    # A stream that does not fit the native window is "not applicable" for full attention, never truncated.
    monkeypatch.setattr(ev, "native_window", lambda eng: 1000)
    prompts.clear()
    na = ev.evaluate_items(engine, items[:1], systems=("full",), max_new_tokens=6)
    assert prompts == [] and na[0]["prediction"] == {"full": None} and na[0]["correct"] == {"full": None}
    assert "| n/a |" in qa_markdown(na)


@pytest.mark.slow
def test_base_preservation_on_three_instructions(engine) -> None:
    result = ev.base_preservation(engine, SHORT_INSTRUCTIONS[:3], max_new_tokens=12)
    assert 0.0 <= result["rate"] <= 1.0 and result["n"] == 3 and len(result["rows"]) == 3
    for row, text in zip(result["rows"], SHORT_INSTRUCTIONS[:3]):
        assert row["instruction"] == text and isinstance(row["comet"], str) and row["base"]
        assert row["match"] == (row["comet"] == row["base"] or normalize(row["comet"]) == normalize(row["base"]))
    assert result["matches"] == sum(r["match"] for r in result["rows"])
    # The base answer is the plain model's: "Paris" for the capital of France.
    assert "paris" in result["rows"][0]["base"].lower()


@pytest.mark.slow
def test_cli_eval_qa_and_preserve(engine, monkeypatch, tmp_path) -> None:
    from comet_agents import cli

    monkeypatch.setattr(cli, "_load", lambda model, device, config_json=None, dtype="auto": engine)  # one model load per file
    runner = CliRunner()
    out = tmp_path / "qa"
    result = runner.invoke(cli.app, ["eval", "qa", "--families", "conversation", "--lengths", "0.25k", "--items", "1",
                                     "--systems", "truncation,full", "--max-new-tokens", "3", "--device", "cpu",
                                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| conversation | 256 | 1 | 1 |" in result.output and "1 items in" in result.output
    saved = json.loads((out / "qa_rows.json").read_text())
    assert saved["meta"]["truncation_budget"] == truncation_budget(engine.config)
    assert set(saved["rows"][0]["prediction"]) == {"truncation", "full"}
    assert (out / "qa_table.md").read_text().startswith("| family | length |")

    out = tmp_path / "preserve"
    result = runner.invoke(cli.app, ["eval", "preserve", "--limit", "1", "--max-new-tokens", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| instructions |" in result.output
    assert json.loads((out / "preserve_rows.json").read_text())["n"] == 1

    result = runner.invoke(cli.app, ["eval", "qa", "--families", "nope"])
    assert result.exit_code != 0 and "unknown families" in result.output
    result = runner.invoke(cli.app, ["eval", "qa", "--systems", "comet,oracle"])
    assert result.exit_code != 0 and "unknown systems" in result.output



def test_passkey_grid_says_which_memory_holds_each_key() -> None:
    """Each row records how many closed chunks back its key sat and so which memory had to answer; the table
    sums the rows per memory tier (keys beyond the FIFO are what the global memory is for)."""
    from comet_agents.engine import MemoryEngine
    from comet_agents.evaluation import grid_cases, grid_markdown, passkey_grid

    from tiny import tiny_chat_model

    engine = MemoryEngine(tiny_chat_model(chunk_size=32))  # 8 entries a chunk, FIFO of 5: no chunk wholly held
    rows = passkey_grid(engine, [400], [0.0, 1.0], trials=1)
    first, last = rows
    assert first["key_age"] == first["tokens"] // 32 and first["memory"] == "global"
    assert last["key_age"] <= 2  # the needle (about 60 characters) ends the stream
    assert all(r["memory"] == engine.config.memory_tier(r["key_age"]) for r in rows)
    assert "Found, by where the key sits when asked: " in grid_markdown(rows)
    assert "global memory only" in grid_markdown(rows)
    assert "Found, by" not in grid_markdown([{k: v for k, v in r.items() if k != "memory"} for r in rows])
    assert all(r["tail"] == r["tokens"] % 32 for r in rows)  # the stream left in the open chunk when asked
    assert all(r["chunk_size"] == 32 for r in rows)
    cases = list(grid_cases(engine, [400], [0.0, 1.0], trials=1))
    assert [c[3] for c in cases] == [r["key"] for r in rows]  # the same keys, without running the model
    assert [c[5] % 32 for c in cases] == [r["key_offset"] for r in rows]
    assert cases[0][5] < 32  # depth 0: the needle opens the stream, so its key sits in the first chunk
    assert [len(c[4]) for c in cases] == [r["tokens"] for r in rows]


def test_grid_keys_have_the_asked_number_of_digits() -> None:
    """``key_digits`` sets the keys' lengths; the default is the 5-7 digits of every recorded grid."""
    import random

    from comet_agents.engine import MemoryEngine
    from comet_agents.evaluation import KEY_DIGITS, grid_cases

    from tiny import tiny_chat_model

    engine = MemoryEngine(tiny_chat_model(chunk_size=32))
    default = [c[3] for c in grid_cases(engine, [200], [0.0, 0.5, 1.0], trials=2)]
    rng = random.Random(0)
    legacy = []
    for _ in range(6):  # the draw the grids of 2026-11/12 made: randrange(10**4, 10**7), then a haystack seed
        legacy.append(str(rng.randrange(10**4, 10**7)))
        rng.randrange(2**31)
    assert KEY_DIGITS == (5, 7) and default == legacy
    cases = list(grid_cases(engine, [200], [0.0, 0.5, 1.0], trials=2, key_digits=(3, 3)))
    assert all(len(c[3]) == 3 for c in cases)
    for length, _, _, key, ids, at in cases:  # the key's own tokens start where the case says
        assert engine.tokenizer.decode(ids[at:]).lstrip().startswith(key)
    for bad in ((0, 3), (5, 4), (3, 19)):
        with pytest.raises(ValueError, match="key digits"):
            list(grid_cases(engine, [200], [0.5], key_digits=bad))


def test_grid_markdown_splits_closed_chunk_keys_by_the_open_chunks_tail() -> None:
    """A stream that ends right after a chunk closed leaves a tail of a few tokens; the table counts those
    apart, and keys in the open chunk count in neither group."""
    from comet_agents.evaluation import SHORT_TAIL, grid_markdown

    def row(memory: str, tail: int, correct: bool) -> dict:
        return {"length": 4096, "depth": 0.5, "memory": memory, "tail": tail, "correct": correct}

    rows = [row("fifo", 3, False), row("global", SHORT_TAIL - 1, True), row("fifo", SHORT_TAIL, True),
            row("open", 0, True)]
    assert (f"by the stream's tail in the open chunk: under {SHORT_TAIL} tokens 1/2, {SHORT_TAIL} or more 1/1."
            in grid_markdown(rows))
    assert "by the stream's tail" not in grid_markdown([{k: v for k, v in r.items() if k != "tail"} for r in rows])


def test_grid_markdown_splits_closed_chunk_keys_by_where_they_start_in_their_chunk() -> None:
    """Keys starting in the last CHUNK_END tokens of their chunk count apart from earlier ones (few of the chunk's
    compression tokens follow them); open-chunk keys and rows without an offset count in neither group."""
    from comet_agents.evaluation import CHUNK_END, grid_markdown

    def row(memory: str, offset: int, correct: bool) -> dict:
        return {"length": 4096, "depth": 0.5, "memory": memory, "key_offset": offset, "chunk_size": 1024,
                "correct": correct}

    rows = [row("fifo", 1024 - CHUNK_END, False), row("global", 1023, False), row("fifo", 1024 - CHUNK_END - 1, True),
            row("global", 0, True), row("fifo", 500, False), row("open", 1000, True)]
    assert (f"by where the key starts in its chunk: in the last {CHUNK_END} tokens 0/2, earlier 2/3."
            in grid_markdown(rows))
    assert "where the key starts" not in grid_markdown([{k: v for k, v in r.items() if k != "key_offset"}
                                                        for r in rows])


def test_heatmap_command_draws_a_saved_grid_and_names_bad_input(tmp_path) -> None:
    """`comet-agents eval heatmap` turns saved grid rows (from a machine without matplotlib) into a PNG whose
    cells are the grid's accuracies; unreadable files and rows that are not grid rows get a clear error."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from comet_agents.cli import app

    rows = [{"length": n, "depth": d, "correct": ok} for n, d, ok in
            [(1500, 0.0, True), (1500, 1.0, True), (4096, 0.0, False), (4096, 1.0, True)]]
    src = tmp_path / "passkey_rows.json"
    src.write_text(json.dumps(rows))
    runner = CliRunner()
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["eval", "heatmap", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        colours = {img.convert("RGB").getpixel((x, y)) for x in range(0, img.width, 7) for y in range(0, img.height, 7)}
    assert len(colours) > 10  # drawn cells, labels and a colour bar, not a blank canvas

    (tmp_path / "bad.json").write_text(json.dumps([{"length": 1500}]))
    (tmp_path / "dict.json").write_text(json.dumps({"rows": rows}))
    for name, message in [("bad.json", "need 'length', 'depth' and 'correct'"), ("dict.json", "list of grid rows"),
                          ("absent.json", "cannot read grid rows")]:
        result = runner.invoke(app, ["eval", "heatmap", str(tmp_path / name), "--out", str(tmp_path / "x.png")])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "x.png").exists()


def test_a_grid_stopped_at_its_deadline_resumes_to_the_same_rows(tmp_path) -> None:
    """A grid run in several sittings (``resume_dir`` + ``deadline``: each sitting absorbs a slice, then saves
    every state in progress as safetensors) returns exactly the rows of a run without a break, finished lengths
    are not run again, and a directory holding another grid's progress is refused."""
    from comet_agents.engine import MemoryEngine
    from comet_agents.evaluation import GridInterrupted, passkey_grid

    from tiny import tiny_chat_model

    engine = MemoryEngine(tiny_chat_model(chunk_size=32))
    expected = passkey_grid(engine, [150, 300], [0.0, 1.0], trials=1)
    sittings = 0
    while True:
        sittings += 1
        try:
            rows = passkey_grid(engine, [150, 300], [0.0, 1.0], trials=1, resume_dir=tmp_path,
                                deadline=0.0, slice_tokens=70)  # a deadline long past: one slice per sitting
            break
        except GridInterrupted as stop:
            assert "progress saved in" in str(stop)
            assert sittings < 20
    assert rows == expected and sittings > 4
    assert not list(tmp_path.glob("*.safetensors"))  # states go once their length is done
    assert passkey_grid(engine, [150, 300], [0.0, 1.0], trials=1, resume_dir=tmp_path, deadline=0.0) == expected
    from comet_agents.evaluation import grid_cases

    every = list(grid_cases(engine, [150, 300], [0.0, 1.0]))
    later = list(grid_cases(engine, [150, 300], [0.0, 1.0], skip={150}))  # a finished length is not rebuilt
    assert [c[:4] for c in later] == [c[:4] for c in every if c[0] == 300]
    assert [c[4] for c in later] == [c[4] for c in every if c[0] == 300]
    with pytest.raises(ValueError, match="another grid"):
        passkey_grid(engine, [150], [0.5], resume_dir=tmp_path)
    with pytest.raises(ValueError, match="another grid"):  # other key lengths are another grid
        passkey_grid(engine, [150, 300], [0.0, 1.0], trials=1, resume_dir=tmp_path, key_digits=(4, 4))
    with pytest.raises(ValueError, match="resume_dir"):
        passkey_grid(engine, [150], [0.5], deadline=0.0)


def test_qa_rows_say_where_the_answer_was_last_stated() -> None:
    """Each QA row records how many closed chunks back the gold answer was last spelled out (its memory tier),
    None for answers the stream never spells; the table splits CoMeT's accuracy by that tier."""
    from comet_agents.engine import MemoryEngine
    from comet_agents.evaluation import QAItem, evaluate_items, fact_age

    from tiny import tiny_chat_model

    engine = MemoryEngine(tiny_chat_model(chunk_size=32))
    filler = "The sky is blue and the grass is green. " * 12
    early = "The vault code is 4711. " + filler
    late = filler + "The vault code is 4711."
    n_early, n_late = len(engine.encode(early)), len(engine.encode(late))
    age = fact_age(engine, early, "4711", n_early)
    assert age is not None and age == n_early // 32  # in the first chunk, every closed chunk back
    assert fact_age(engine, late, "4711", n_late) == 0  # in the open chunk
    assert fact_age(engine, early, "Vault Code", n_early) is not None  # case-insensitive fallback
    assert fact_age(engine, early, "3 times", n_early) is None  # a derived answer, never spelled out

    items = [QAItem("agent_trajectory", 500, i, i, 0, stream, "What is the vault code?", gold)
             for i, (stream, gold) in enumerate([(early, "4711"), (late, "4711"), (early, "3 times")])]
    rows = evaluate_items(engine, items, systems=("comet",), max_new_tokens=4)
    assert [r["memory"] for r in rows] == [engine.config.memory_tier(age), "open", None]
    assert [r["fact_age"] for r in rows] == [age, 0, None]
    table = qa_markdown(rows)
    line = table.splitlines()[-1]
    assert line.startswith("comet, by where the answer was last stated in the stream: ")
    assert "open chunk " in line and "not spelled out " in line and "/1" in line
    json.dumps(rows)
