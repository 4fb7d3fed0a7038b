"""MemoryEngine: streaming and batched absorption into CoMeT memory, and answering from it.

* ``absorb`` appends tokens to a session's pending tail and processes every chunk that fills, so the state
  only depends on the token stream, never on how it was cut into calls.
* ``absorb_many`` does the same for many sessions at once, batching the sessions that have a chunk ready
  (they may sit at different FIFO fill levels and first-chunk states; the layout batch handles both).
* ``generate_stream`` runs the pending tail plus the prompt as the open last chunk with a KV cache and decodes
  greedily, yielding token ids one at a time; positions continue from the chunk's layout. ``generate`` is
  the list of what it yields.
* ``chat`` / ``chat_stream`` answer a list of chat messages (rendered with the base tokenizer's chat
  template), the entry point of the framework integrations; ``recall`` answers one question.

Answering reads the state and never writes it. The open chunk's positions are local to it, so the pending
tail, the prompt and the answer together must fit the base model's positions (``max_context_positions``);
a prompt that cannot fit is refused before any computation, with the numbers.

The open chunk follows the training layout exactly. By default it holds no compression tokens: it is never
written to memory (its text is absorbed later, in a closed chunk laid out anew), so decoding feeds one token a
step and, with an empty memory, answers exactly as the base model. With ``open_chunk_compression`` (the
official code's behaviour) a compression token follows each complete group of ``s`` text tokens once the next
text token arrives, counting text tokens only (prompt and generated alike): when the token about to be fed
starts a new group, the engine feeds ``[<beacon>, token]`` as one two-token step and keeps the logits of
``token``. Logits of added tokens are never sampled.

Peak memory is one chunk of activations plus the state and, while answering, the open chunk's KV cache: it
does not depend on how much was absorbed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .events import ROLES, cut_at_record
from .layout import LayoutBatch, compression_after, next_chunk_layout, pad_layouts
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


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Validate chat messages into ``[{"role": ..., "content": ...}]`` (other keys are dropped).

    A role is one of :data:`comet_agents.events.ROLES`; the content is a string. Raises ValueError or TypeError
    naming the bad message.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(msg).__name__}")
        missing = [k for k in ("role", "content") if k not in msg]
        if missing:
            raise ValueError(f"message {i} has no {' and no '.join(map(repr, missing))}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise ValueError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TypeError(f"message {i}: content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not out:
        raise ValueError("messages is empty: give at least one message")
    return out


def render_chat(tokenizer: Any, messages: Any, *, add_generation_prompt: bool = True) -> str:
    """Chat messages as text in the base model's chat template (validated by :func:`check_messages`).

    A tokenizer without a template gets a plain ``Role: content`` line per message, then ``Assistant:``.
    """
    messages = check_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def answer_text(text: str) -> str:
    """What an answer decoded to ``text`` says: up to a line that starts a rendered record (the model writing
    the event stream on, :func:`comet_agents.events.cut_at_record`), stripped."""
    return cut_at_record(text)[0].strip()


def stream_text(tokenizer: Any, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode ``token_ids`` incrementally into text pieces whose concatenation is :func:`answer_text` of the
    full decode.

    The generated tokens so far are re-decoded after each token: a piece is emitted only once the text no
    longer ends in an incomplete character (U+FFFD, as byte-level tokenizers decode a partial UTF-8
    sequence), so multi-byte characters are never split. Leading whitespace is dropped and trailing whitespace
    held back until more text follows, and so is a line that may be starting a rendered record; at a complete
    one the stream ends (no more tokens are drawn from ``token_ids``). So ``"".join(pieces)`` equals
    ``answer_text(decode(ids))``, what the non-streaming calls return. (That needs a decoder whose output for a
    prefix of the ids is a prefix of its output for all of them, as byte-level BPE decoders such as SmolLM2's
    are; a piece once yielded cannot be taken back.)
    """
    ids: list[int] = []
    sent = ""
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue
        kept, ended = cut_at_record(text)
        ready = kept.strip()
        if len(ready) > len(sent) and ready.startswith(sent):
            yield ready[len(sent) :]
            sent = ready
        if ended:
            return
    final = answer_text(tokenizer.decode(ids, skip_special_tokens=True))
    if final != sent and final.startswith(sent):
        yield final[len(sent) :]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as absorbed or asked (no special tokens added). ``verbose=False``: a stream longer
    than the base's window is the normal case here (it is cut into chunks), so the tokenizer's "longer than the
    specified maximum sequence length" warning would only mislead."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def token_index_at(tokenizer: Any, text: str, char_offset: int, num_tokens: int) -> int:
    """Index, among the ``num_tokens`` tokens :func:`encode_text` gives for ``text``, of the token where character
    ``char_offset`` starts: the count of tokens before it, exact up to a merge across the cut (one token)."""
    return min(len(encode_text(tokenizer, text[:char_offset])), num_tokens - 1)


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
        return encode_text(self.tokenizer, text)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes (as absorbed or asked: no special tokens added)."""
        return len(self.encode(text))

    @property
    def max_context_positions(self) -> int | None:
        """The base model's positions (``max_position_embeddings``), or None when its config does not say.

        The open chunk (memory slots + pending tail + prompt + answer, with compression tokens) must fit.
        """
        return int(getattr(self.model.inner.config, "max_position_embeddings", 0) or 0) or None

    # ---- absorbing --------------------------------------------------------------------------------------------

    def chunk_layout(self, state: MemoryState, b: int, text: Sequence[int], *, closed: bool):
        """Layout of session ``b``'s next chunk given its memory state."""
        cfg = self.config
        return next_chunk_layout(
            text, has_global=bool(state.has_global[b]), fifo_len=int(state.fifo_len[b]), num_global=cfg.m,
            fifo_budget=cfg.fifo, stride=cfg.stride if closed else cfg.open_stride, closed=closed,
            ids=self.model.special, global_from_compression=cfg.global_from_compression,
            global_from_fifo=cfg.global_from_fifo, context_ids=state.context[b],
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
                    states[i].context = piece.context
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

    def check_fits(self, state: MemoryState, n_text: int, max_new_tokens: int) -> None:
        """Raise ValueError when an open chunk of ``n_text`` text tokens plus the answer exceeds the positions.

        Counts the memory slots, the text, the ``max_new_tokens`` answer tokens and the compression tokens the
        open-chunk rule places between them.
        """
        limit = self.max_context_positions
        if limit is None:
            return
        cfg = self.config
        slots = (cfg.m if bool(state.has_global[0]) else 0) + int(state.fifo_len[0])
        overlap = len(state.context[0])
        total = n_text + max_new_tokens
        beacons = sum(compression_after(total, cfg.open_stride, closed=False))
        need = slots + overlap + total + beacons
        if need > limit:
            pending = len(state.pending[0])
            raise ValueError(
                f"the prompt does not fit the base model: the open chunk needs {need:,} positions (memory slots "
                f"{slots}{f' + overlap {overlap}' if overlap else ''} + pending tail {pending} + prompt "
                f"{n_text - pending:,} + max_new_tokens "
                f"{max_new_tokens:,} + compression tokens {beacons:,}) but the base model has {limit:,} "
                "(max_position_embeddings); shorten the prompt or lower max_new_tokens"
            )

    def generate_stream(
        self,
        state: MemoryState,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        stop_ids: Sequence[int] | None = None,
    ) -> Iterator[int]:
        """Greedy answer tokens for ``prompt_ids`` given the memory in ``state``, yielded one at a time.

        The input is checked now (a bad prompt raises here, not on the first ``next``); the forward passes
        run as the iterator is consumed. ``state`` is never modified, but it is read on the first ``next``:
        do not absorb into it before then (or pass ``state.clone()``). Stops at a stop token (not yielded)
        or after ``max_new_tokens`` tokens.
        """
        if state.batch_size != 1:
            raise ValueError("generate takes a single-session state")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.model.check_state(state)
        prompt = [int(t) for t in prompt_ids]
        vocab = self.model.first_special_id
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"the prompt holds ids outside the text vocabulary [0, {vocab}): {bad[:5]}")
        batch, next_pos, n_text = self.open_chunk(state, prompt)
        self.check_fits(state, n_text, max_new_tokens)
        stops = set(stop_ids if stop_ids is not None else self.default_stop_ids())
        return self._decode(state, batch, next_pos, n_text, max_new_tokens, stops)

    @torch.no_grad()
    def _decode(
        self, state: MemoryState, batch: LayoutBatch, next_pos: int, n_text: int, max_new_tokens: int, stops: set[int]
    ) -> Iterator[int]:
        """Prefill the open chunk, then decode greedily (the loop of :meth:`generate_stream`)."""
        stride = self.config.open_stride
        logits, cache = self.model.prefill_open_chunk(state, batch)
        has_memory = self.model.has_memory(batch)
        for step in range(max_new_tokens):
            token = int(logits[0].argmax())
            if token in stops:
                return
            yield token
            if step == max_new_tokens - 1:
                return  # the last token is never fed
            # With open_chunk_compression, a compression token follows each complete group of ``stride`` text
            # tokens once the next text token arrives: feed [<beacon>, token] as one step, keep ``token``'s logits.
            feed = [token]
            if stride and n_text % stride == 0:
                feed = [self.model.special.compression, token]
            ids = torch.tensor([feed])
            pos = torch.arange(next_pos, next_pos + len(feed))[None]
            past = torch.tensor([cache.get_seq_length()])
            logits = self.model.decode_step(cache, ids, pos, past, has_memory)[:, -1]
            next_pos += len(feed)
            n_text += 1

    def generate(
        self,
        state: MemoryState,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        stop_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Greedy answer tokens for ``prompt_ids`` given the memory in ``state`` (which is not modified)."""
        return list(self.generate_stream(state, prompt_ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids))

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

    def _prompt_ids(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; text that spells a reserved CoMeT token is refused."""
        ids = self.encode(text)
        bad = sorted({t for t in ids if t >= self.model.first_special_id})
        if bad:
            names = ", ".join(map(repr, self.tokenizer.convert_ids_to_tokens(bad[:5])))
            raise ValueError(f"the prompt contains the reserved CoMeT token(s) {names}, which only CoMeT may place")
        return ids

    def _answer(self, state: MemoryState, prompt: str, max_new_tokens: int) -> str:
        """The greedy answer to a rendered prompt, decoded, cut and stripped (:func:`answer_text`, what
        :func:`stream_text` joins to)."""
        out: list[int] = []
        for token in self.generate_stream(state, self._prompt_ids(prompt), max_new_tokens=max_new_tokens):
            out.append(token)
            if cut_at_record(self.tokenizer.decode(out, skip_special_tokens=True))[1]:
                break  # the answer ended a line ago; what follows is the stream written on
        return answer_text(self.tokenizer.decode(out, skip_special_tokens=True))

    def recall(self, state: MemoryState, question: str, *, max_new_tokens: int = 64) -> str:
        """Answer ``question`` from memory (the absorbed stream and the pending tail)."""
        if not question or not question.strip():
            raise ValueError("the question is empty")
        return self._answer(state, chat_question(self.tokenizer, question), max_new_tokens)

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """``messages`` (``[{"role": ..., "content": ...}]``) rendered with the base tokenizer's chat template,
        ending with the assistant's turn (see :func:`render_chat`)."""
        return render_chat(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def chat(self, state: MemoryState, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int = 64) -> str:
        """The assistant's next message after ``messages``, answered from memory plus the messages.

        ``state`` is not modified: the messages are read in the open chunk, not absorbed.
        """
        return self._answer(state, self.chat_prompt(messages), max_new_tokens)

    def chat_stream(
        self, state: MemoryState, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int = 64
    ) -> Iterator[str]:
        """:meth:`chat` as text pieces, yielded as they are decoded; ``"".join`` of them equals :meth:`chat`.

        Bad messages and prompts that do not fit raise here; the state is read on the first ``next`` (see
        :meth:`generate_stream`).
        """
        prompt = self._prompt_ids(self.chat_prompt(messages))
        return stream_text(self.tokenizer, self.generate_stream(state, prompt, max_new_tokens=max_new_tokens))
