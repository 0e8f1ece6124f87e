"""One-at-a-time generation through ``model.generate`` for models that cannot join the batch.

Remote-code models such as ChatGLM3's keep their own cache format, so they run
here, on the same engine thread, behind the same interface: a streamer hands
each token to the sequence (which wakes the caller's event loop), and a stopping
criterion ends generation when the sequence finished or was cancelled.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

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


@torch.inference_mode()
def run_with_generate(model: Any, tokenizer: Any, seq: SequenceState, device: torch.device) -> None:
    """Generate for one sequence until it finishes; the sequence reports its own events."""
    params = seq.request.params
    ids = torch.tensor([seq.request.prompt_ids], device=device)
    # Only the request's own parameters: no top_k or repetition penalty from the model's generation config.
    sampling: dict[str, Any] = {"do_sample": False, "top_k": None, "repetition_penalty": None}
    if not params.greedy:
        sampling.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    with torch.random.fork_rng(devices=[]):  # a seed must not leak into the process-wide generator
        if params.seed is not None and not params.greedy:
            torch.manual_seed(params.seed & ((1 << 64) - 1))
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
