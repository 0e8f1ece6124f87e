"""Where the llama.cpp batch puts a new sequence: llama.cpp runs each group of adjacent busy slots as its own
pass over the weights, so a new sequence goes beside busy slots, and a reusable prefix held by a badly
placed slot is copied to a well placed one. A recording model stands in for llama.cpp here; the engine tests
(tests/test_engine_llama_cpp.py) run the same batch on the real one."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from llm_api.local_model.llama_cpp_model import slot_order
from llm_api.local_model.prefix_cache import MIN_MATCH_TOKENS
from llm_api.local_model.slot_batch import SlotBatch

VOCAB = 8


class RecordingModel:
    """What SlotBatch asks of a LlamaCppModel, recorded: the copies."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.copies: list[tuple[int, int]] = []

    def copy(self, source: int, target: int) -> None:
        self.copies.append((source, target))

    def forget(self, slot: int, start: int = 0) -> bool:
        return True

    def clear(self) -> None:
        pass

    def run(self, tokens, positions, slots, outputs) -> np.ndarray:
        return np.zeros((sum(outputs), VOCAB), dtype=np.float32)


@dataclass(eq=False)
class Seq:
    """The parts of a SequenceState that SlotBatch reads."""

    prompt: list[int]
    generated: list[int] = field(default_factory=lambda: [1])
    finish_reason: str = "stop"

    def __post_init__(self) -> None:
        self.request = SimpleNamespace(prompt_ids=self.prompt)
        self.position = len(self.prompt)

    @property
    def last_token(self) -> int:
        return self.generated[-1]


def start(batch: SlotBatch, prompt: list[int]) -> tuple[Seq, int]:
    """A new sequence, prefilled and joined; its slot."""
    seq = Seq(prompt)
    prefill = batch.start_prefill(seq)
    batch.step([prefill], chunk=64)
    return seq, prefill.slot


def distinct_prompt(first: int) -> list[int]:
    return list(range(first, first + MIN_MATCH_TOKENS + 4))


def test_slot_order_sorts_by_slot_then_position():
    assert slot_order([3, 0, 0, 2], [5, 1, 0, 9]) == [2, 1, 3, 0]
    assert slot_order([], []) == []


def test_a_new_sequence_fills_the_gap_a_finished_one_left():
    batch = SlotBatch(RecordingModel(slots=6), VOCAB)
    started = [start(batch, distinct_prompt(100 * i)) for i in range(4)]
    assert [slot for _, slot in started] == [0, 1, 2, 3]
    batch.retire([started[1][0]])  # slot 1 frees up between busy slots 0 and 2
    _, slot = start(batch, distinct_prompt(1000))
    assert slot == 1  # not 4 or 5, released longer ago: those would split the batch into two passes


def test_with_no_busy_slot_the_slot_released_longest_ago_is_taken():
    batch = SlotBatch(RecordingModel(slots=4), VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(4)]
    batch.retire([seqs[2], seqs[0], seqs[3], seqs[1]])
    assert start(batch, distinct_prompt(5000))[1] == 2


def test_a_prefix_in_a_slot_that_would_split_the_batch_is_copied_beside_the_busy_ones():
    model = RecordingModel(slots=6)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(4)]
    conversation = seqs[0].prompt + [7]  # the next turn of the sequence in slot 0
    batch.retire([seqs[0], seqs[2]])  # busy: 1 and 3; free: 4, 5, 0, 2
    seq, slot = start(batch, conversation)
    assert slot == 2 and model.copies == [(0, 2)]  # 2 joins 1 and 3 into one group; 0 would stand apart
    assert batch.prefixes.hits == 1 and batch.prefixes.reused_tokens == len(seqs[0].prompt)


def test_a_prefix_in_a_well_placed_free_slot_is_taken_in_place():
    model = RecordingModel(slots=4)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(3)]
    batch.retire([seqs[1]])
    _, slot = start(batch, seqs[1].prompt + [1, 9])  # continues exactly what slot 1 holds
    assert slot == 1 and model.copies == []
