"""One-at-a-time generation through ``model.generate`` for models that cannot join the batch.

Remote-code models such as ChatGLM3's keep their own cache format, so they run
here, on the same engine thread, behind the same interface: a streamer hands
each token to the sequence (which wakes the caller's event loop), and a stopping
criterion ends generation when the sequence finished or was cancelled. Tokens are
chosen by the same sampler as in the batched loop (a logits processor that leaves
``generate``'s greedy search one token to pick), so every sampling feature, seed
and log-probability behaves the same on both paths.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from .sampling import choose_tokens
from .sequence import SequenceState


class SequenceStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` whose hand-off is the sequence's event-loop channel.

    Text is produced by the sequence's own incremental detokenizer (the stock
    streamer drops spaces after newlines with SentencePiece tokenizers).
    """

    def __init__(self, tokenizer: Any, seq: SequenceState) -> None:
        super().__init__(tokenizer, skip_prompt=True)
        self._seq = seq
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            if not self._seq.finished:
                self._seq.accept(int(token_id))

    def end(self) -> None:
        pass


class _StopWhenDone(StoppingCriteria):
    def __init__(self, seq: SequenceState) -> None:
        self._seq = seq

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = self._seq.finished or self._seq.check_cancelled()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _ChooseWithSampler(LogitsProcessor):
    """Leaves only the token the sequence's own sampler chose, so greedy search takes exactly that one."""

    def __init__(self, seq: SequenceState) -> None:
        self._seq = seq

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = choose_tokens(scores[-1:], [self._seq.sampler])[0]
        if isinstance(token, Exception):
            raise token
        only = torch.full_like(scores, float("-inf"))
        only[:, token] = 0.0
        return only


@torch.inference_mode()
def run_with_generate(model: Any, tokenizer: Any, seq: SequenceState, device: torch.device) -> None:
    """Generate for one sequence until it finishes; the sequence reports its own events."""
    params = seq.request.params
    ids = torch.tensor([seq.request.prompt_ids], device=device)
    # Only the request's own parameters (applied by its sampler): none from the model's generation config.
    sampling: dict[str, Any] = {"do_sample": False, "top_k": None, "top_p": None, "temperature": None,
                                "repetition_penalty": None,
                                "logits_processor": LogitsProcessorList([_ChooseWithSampler(seq)])}
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=params.max_tokens,
        eos_token_id=None if params.ignore_eos else (sorted(seq.request.stop_token_ids) or None),
        streamer=SequenceStreamer(tokenizer, seq),
        stopping_criteria=StoppingCriteriaList([_StopWhenDone(seq)]),
        **sampling,
    )
    if not seq.finished:  # generate stopped on its own terms (e.g. a model-side length limit)
        seq.finish("length")
