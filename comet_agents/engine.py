"""MemoryEngine: streaming and batched absorption into CoMeT memory, and answering from it.

* ``absorb`` appends tokens to a session's pending tail and processes every chunk that fills, so the state
  only depends on the token stream, never on how it was cut into calls.
* ``absorb_many`` does the same for many sessions at once, batching the sessions that have a chunk ready
  (they may sit at different FIFO fill levels and first-chunk states; the layout batch handles both).
* ``generate`` runs the pending tail plus the prompt as the open last chunk with a KV cache and decodes
  greedily; positions continue from the chunk's layout.

Compression tokens while generating: the open chunk follows the training layout exactly. A compression token
follows each complete group of ``s`` text tokens once the next text token arrives, counting text tokens only
(prompt and generated alike). So when the token about to be fed starts a new group, the engine feeds
``[<beacon>, token]`` as one two-token step and keeps the logits of ``token``. The beacon changes what later
tokens see exactly as it did in training, and logits of added tokens are never sampled.

Peak memory is one chunk of activations plus the state and, while answering, the open chunk's KV cache: it
does not depend on how much was absorbed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .layout import LayoutBatch, build_chunk_layout, pad_layouts
from .modeling import CometModel
from .state import MemoryState

ProgressFn = Callable[[int], None]


def chat_question(tokenizer: Any, question: str) -> str:
    """The question as a user turn in the base model's chat template, ready for the assistant's answer.

    Training (``comet_agents.training``) and recall use this one function, so the model always sees questions
    the same way.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {question}\nAnswer:"


class MemoryEngine:
    """Absorbs token streams into :class:`MemoryState` objects and answers from them."""

    def __init__(self, model: CometModel, *, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.config = model.config
        self.max_batch = max_batch

    @property
    def tokenizer(self) -> Any:
        if self.model.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids instead of text")
        return self.model.tokenizer

    def new_state(self) -> MemoryState:
        return self.model.new_state(1)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- absorbing --------------------------------------------------------------------------------------------

    def chunk_layout(self, state: MemoryState, b: int, text: Sequence[int], *, closed: bool):
        """Layout of session ``b``'s next chunk given its memory state."""
        cfg = self.config
        return build_chunk_layout(
            text,
            num_global=cfg.m if bool(state.has_global[b]) else 0,
            num_temp=int(state.fifo_len[b]),
            stride=cfg.stride,
            num_readouts=cfg.m if closed else 0,
            closed=closed,
            ids=self.model.special,
        )

    def absorb(
        self, state: MemoryState, token_ids: Sequence[int], progress: ProgressFn | None = None
    ) -> MemoryState:
        """Absorb tokens into a single-session state (in place; also returned)."""
        self.absorb_many([state], [token_ids], progress=progress)
        return state

    def absorb_text(self, state: MemoryState, text: str, progress: ProgressFn | None = None) -> MemoryState:
        return self.absorb(state, self.encode(text), progress=progress)

    def absorb_many(
        self,
        states: Sequence[MemoryState],
        token_lists: Sequence[Sequence[int]],
        progress: ProgressFn | None = None,
    ) -> None:
        """Absorb ``token_lists[i]`` into ``states[i]`` for every i, batching ready chunks across sessions.

        Each state must hold one session. ``progress`` is called with the number of text tokens each time a
        chunk batch has been absorbed.
        """
        if len(states) != len(token_lists):
            raise ValueError(f"{len(states)} states but {len(token_lists)} token lists")
        for st in states:
            if st.batch_size != 1:
                raise ValueError("absorb_many takes single-session states; split batched states first")
            self.model.check_state(st)
        vocab = self.model.first_special_id
        for i, toks in enumerate(token_lists):
            bad = [t for t in toks if not 0 <= int(t) < vocab]
            if bad:
                raise ValueError(f"token list {i} holds ids outside the text vocabulary [0, {vocab}): {bad[:5]}")
        for st, toks in zip(states, token_lists):
            st.pending[0].extend(int(t) for t in toks)
        C = self.config.chunk_size
        while True:
            ready = [i for i, st in enumerate(states) if len(st.pending[0]) >= C]
            if not ready:
                return
            for start in range(0, len(ready), self.max_batch):
                group = ready[start : start + self.max_batch]
                merged = MemoryState.merge([states[i] for i in group])
                texts = [merged.pending[j][:C] for j in range(len(group))]
                layouts = [self.chunk_layout(merged, j, t, closed=True) for j, t in enumerate(texts)]
                self.model.absorb_chunks(merged, pad_layouts(layouts, self.model.special.pad))
                for j, i in enumerate(group):
                    piece = merged.select([j])
                    piece.pending = [states[i].pending[0][C:]]
                    states[i].global_state = piece.global_state
                    states[i].has_global = piece.has_global
                    states[i].fifo = piece.fifo
                    states[i].fifo_len = piece.fifo_len
                    states[i].pending = piece.pending
                    states[i].tokens_absorbed = piece.tokens_absorbed
                    states[i].chunks = piece.chunks
                if progress is not None:
                    progress(C * len(group))

    def flush(self, state: MemoryState) -> MemoryState:
        """Absorb the pending tail as a (short) closed chunk, so that memory holds everything.

        Not needed before answering (the tail is read as part of the open chunk); useful before a long pause
        when the tail should survive in the compressed state alone.
        """
        if state.batch_size != 1:
            raise ValueError("flush takes a single-session state")
        if state.pending[0]:
            layout = self.chunk_layout(state, 0, state.pending[0], closed=True)
            self.model.absorb_chunks(state, pad_layouts([layout], self.model.special.pad))
            state.pending = [[]]
        return state

    # ---- answering ------------------------------------------------------------------------------------------

    def open_chunk(self, state: MemoryState, prompt_ids: Sequence[int]) -> tuple[LayoutBatch, int, int]:
        """(batch, layout length, text tokens) of the open chunk = pending tail + prompt."""
        text = list(state.pending[0]) + [int(t) for t in prompt_ids]
        if not text:
            raise ValueError("nothing to answer: the prompt is empty and no text is pending")
        layout = self.chunk_layout(state, 0, text, closed=False)
        return pad_layouts([layout], self.model.special.pad), len(layout), len(text)

    @torch.no_grad()
    def generate(
        self,
        state: MemoryState,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        stop_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Greedy answer tokens for ``prompt_ids`` given the memory in ``state`` (which is not modified)."""
        if state.batch_size != 1:
            raise ValueError("generate takes a single-session state")
        self.model.check_state(state)
        stride = self.config.stride
        batch, next_pos, n_text = self.open_chunk(state, prompt_ids)
        logits, cache = self.model.prefill_open_chunk(state, batch)
        stops = set(stop_ids if stop_ids is not None else self.default_stop_ids())
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0].argmax())
            if token in stops:
                break
            out.append(token)
            if len(out) == max_new_tokens:
                break
            feed = [token]
            if stride and n_text % stride == 0:
                feed = [self.model.special.compression, token]
            ids = torch.tensor([feed])
            pos = torch.arange(next_pos, next_pos + len(feed))[None]
            past = torch.tensor([cache.get_seq_length()])
            logits = self.model.decode_step(cache, ids, pos, past)[:, -1]
            next_pos += len(feed)
            n_text += 1
        return out

    def default_stop_ids(self) -> list[int]:
        tok = self.model.tokenizer
        if tok is None:
            eos = self.model.special.pad
            return [eos]
        stops = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tok.unk_token_id:
            stops.add(im_end)
        return sorted(s for s in stops if s is not None)

    def recall(self, state: MemoryState, question: str, *, max_new_tokens: int = 64) -> str:
        """Answer ``question`` from memory (the absorbed stream and the pending tail)."""
        if not question or not question.strip():
            raise ValueError("the question is empty")
        prompt = self.encode(chat_question(self.tokenizer, question))
        out = self.generate(state, prompt, max_new_tokens=max_new_tokens)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()
