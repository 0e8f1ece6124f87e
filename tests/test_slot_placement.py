"""Where the llama.cpp batch puts a new sequence: llama.cpp runs each group of adjacent busy slots as its own
pass over the weights, so a new sequence goes beside busy slots, and a reusable prefix held by a badly
placed slot is copied to a well placed one. A recording model stands in for llama.cpp here; the engine tests
(tests/test_engine_llama_cpp.py) run the same batch on the real one."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from llm_api.local_model.llama_cpp_model import TILED_ATTENTION_ROWS, decode_calls, prompt_piece, slot_order
from llm_api.local_model.prefix_cache import MIN_MATCH_TOKENS
from llm_api.local_model.slot_batch import MOVE_HORIZON_STEPS, SlotBatch

VOCAB = 8


class RecordingModel:
    """What SlotBatch asks of a LlamaCppModel, recorded: the copies."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.copies: list[tuple[int, int]] = []
        self.runs: list[list[int]] = []  # each run's slots, token by token

    def copy(self, source: int, target: int) -> None:
        self.copies.append((source, target))

    def forget(self, slot: int, start: int = 0) -> bool:
        return True

    def clear(self) -> None:
        pass

    def run(self, tokens, positions, slots, outputs) -> np.ndarray:
        self.runs.append(list(slots))
        return np.zeros((sum(outputs), VOCAB), dtype=np.float32)


@dataclass(eq=False)
class Seq:
    """The parts of a SequenceState that SlotBatch reads."""

    prompt: list[int]
    generated: list[int] = field(default_factory=lambda: [1])
    finish_reason: str = "stop"
    max_tokens: int = 100

    def __post_init__(self) -> None:
        self.request = SimpleNamespace(prompt_ids=self.prompt, params=SimpleNamespace(max_tokens=self.max_tokens))
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
    """A prompt long enough that, resent with a token more, more than a worthwhile match of it is reused (its
    last TILED_ATTENTION_ROWS tokens always run again)."""
    return list(range(first, first + MIN_MATCH_TOKENS + TILED_ATTENTION_ROWS + 4))


def test_slot_order_sorts_by_slot_then_position():
    assert slot_order([3, 0, 0, 2], [5, 1, 0, 9]) == [2, 1, 3, 0]
    assert slot_order([], []) == []


def test_parts_of_one_length_share_a_call_and_a_prompts_parts_run_in_order():
    """llama.cpp would otherwise put a prompt's first token with the rows and the rest after, so how its
    attention is computed would depend on what else runs in the step."""
    lengths = {2: 1, 0: 1, 1: 20, 3: 513, 4: 8, 5: 20}  # rows in slots 2 and 0; prompts in the others
    slots = [slot for slot, length in lengths.items() for _ in range(length)]
    positions = [position for length in lengths.values() for position in range(length)]
    calls = decode_calls(slots, positions)
    called = [[(slots[index], positions[index]) for index in call] for call in calls]
    assert called[0] == [(0, 0), (2, 0)]  # the rows, in slot order
    assert called[1] == [(4, p) for p in range(8)]
    assert called[2] == [(1, p) for p in range(20)] + [(5, p) for p in range(20)]  # one length, one call
    assert called[3] == [(3, p) for p in range(511)]  # 512 would leave one token, to run a row at a time
    assert called[4] == [(3, p) for p in range(511, 513)]  # after the part before it
    assert sorted(index for call in calls for index in call) == list(range(len(slots)))
    assert [len(call) for call in decode_calls([0] * 300 + [1] * 300, list(range(300)) * 2)] == [300, 300]


def test_a_prompts_part_leaves_enough_for_tiles_or_takes_it_all():
    assert TILED_ATTENTION_ROWS == 2
    assert prompt_piece(20, 64) == 20
    assert prompt_piece(100, 64) == 64
    assert prompt_piece(65, 64) == 63  # 64 would leave one token
    assert prompt_piece(3, 2) == 3  # one more than fits, rather than a part of two and one of one
    assert prompt_piece(100, 1) == 0  # no room for a part of two this step
    assert prompt_piece(1, 1) == 1  # a one-token prompt runs whole


@given(st.integers(TILED_ATTENTION_ROWS, 3000), st.lists(st.integers(-20, 600), min_size=1, max_size=50))
def test_however_a_prompt_is_cut_every_part_runs_in_tiles(prompt, budgets):
    remaining, parts = prompt, []
    for budget in [*budgets, prompt]:  # the last step has room for all of it
        taken = prompt_piece(remaining, budget)
        assert 0 <= taken <= remaining and taken <= max(budget, 0) + TILED_ATTENTION_ROWS - 1
        if taken:
            parts.append(taken)
            remaining -= taken
        if not remaining:
            break
    assert sum(parts) == prompt and min(parts) >= TILED_ATTENTION_ROWS


def six_rows_then_three_left() -> tuple[RecordingModel, SlotBatch, list[Seq]]:
    """Six rows in slots 0-5; those in 0, 5 and 1 finish, in that order: busy 2-4, free 0, 5, 1 (released
    longest ago first)."""
    model = RecordingModel(slots=6)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(6)]
    for index in (0, 5, 1):
        batch.retire([seqs[index]])
    assert model.copies == [] and sorted(batch._busy) == [2, 3, 4]
    return model, batch, seqs


def test_a_new_sequence_goes_beside_the_busy_slots():
    _, batch, _ = six_rows_then_three_left()
    assert start(batch, distinct_prompt(1000))[1] == 5  # not 0, released longest ago: it would stand apart


def test_with_no_busy_slot_the_slot_released_longest_ago_is_taken():
    batch = SlotBatch(RecordingModel(slots=4), VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(4)]
    batch.retire([seqs[2], seqs[0], seqs[3], seqs[1]])
    assert start(batch, distinct_prompt(5000))[1] == 2


def test_a_prefix_in_a_slot_apart_from_the_busy_ones_is_moved_beside_them_before_it_runs():
    model, batch, seqs = six_rows_then_three_left()
    seq = Seq(seqs[0].prompt + [7])  # the next turn of what slot 0 holds
    prefill = batch.start_prefill(seq)
    assert prefill.slot == 0 and model.copies == []  # taken in place: another new prompt may fill the gap
    batch.step([prefill], chunk=64)
    assert prefill.slot == 5 and model.copies == [(0, 5)]  # 0 itself would stand apart from 2-4
    assert batch.prefixes.hits == 1 and batch.prefixes.reused_tokens == len(seq.prompt) - TILED_ATTENTION_ROWS


def test_a_prefix_in_a_well_placed_free_slot_is_taken_in_place():
    model = RecordingModel(slots=4)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(3)]
    batch.retire([seqs[2]])
    _, slot = start(batch, seqs[2].prompt + [1, 9])  # continues exactly what slot 2 holds, beside 0-1
    assert slot == 2 and model.copies == []


def test_scattered_rows_are_moved_together_once_rows_between_them_finish():
    model = RecordingModel(slots=6)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(5)]
    batch.retire([seqs[1], seqs[3]])  # busy 0, 2 and 4: three groups, three passes over the weights a step
    assert model.copies == []  # not yet: a new prompt admitted before the next step may fill a gap
    batch.step([], chunk=64)
    assert model.copies == [(0, 5), (2, 3)]  # into free slots beside the others, released longest ago first
    assert sorted(batch._busy) == [3, 4, 5]
    assert {batch._slot_of[seq] for seq in (seqs[0], seqs[2], seqs[4])} == {5, 3, 4}
    seq, slot = start(batch, seqs[0].prompt + [1, 9])  # slot 0 still holds what seqs[0] had: reused
    assert batch.prefixes.hits == 1 and slot == 2  # copied beside the busy ones, not taken apart in slot 0


def test_rows_apart_that_end_within_a_few_steps_are_left_where_they_are():
    """Answers that end together, one of them a step earlier: moving the others together would overwrite the
    cells the early one left, which its client may resend a moment later; the gap closes by itself."""
    model = RecordingModel(slots=6)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(5)]
    for seq in seqs:
        seq.request.params.max_tokens = len(seq.generated) + MOVE_HORIZON_STEPS
    batch.retire([seqs[1], seqs[3]])
    batch.step([], chunk=64)
    assert model.copies == []
    for seq in seqs:
        seq.request.params.max_tokens += 1  # longer answers: the groups apart would cost a pass for many steps
    batch.step([], chunk=64)
    assert model.copies == [(0, 5), (2, 3)]


def test_rows_wait_a_step_while_more_prompts_than_rows_complete():
    """The rows' tokens and the prompts' parts run in separate llama_decode calls, each a pass over the weights:
    a burst of prompts behind one row completes in one pass without it, and then all decode together."""
    model = RecordingModel(slots=8)
    batch = SlotBatch(model, VOCAB)
    first, slot = start(batch, distinct_prompt(0))
    burst = [batch.start_prefill(Seq(distinct_prompt(100 * i))) for i in range(1, 4)]
    result = batch.step(burst, chunk=128)
    assert result.rows == [] and result.logits is None and len(result.completed) == 3
    assert slot not in model.runs[-1] and first.position == len(first.prompt)  # the row did not move on
    result = batch.step([], chunk=64)
    assert len(result.rows) == 4 and len(model.runs[-1]) == 4
    late = batch.start_prefill(Seq(distinct_prompt(900)))
    result = batch.step([late], chunk=64)  # one prompt beside four rows: they decode as usual
    assert len(result.rows) == 4 and len(result.completed) == 1


def test_rows_that_sit_together_are_not_moved():
    model = RecordingModel(slots=6)
    batch = SlotBatch(model, VOCAB)
    seqs = [start(batch, distinct_prompt(100 * i))[0] for i in range(4)]
    batch.retire([seqs[0], seqs[3]])
    assert model.copies == [] and sorted(batch._busy) == [1, 2]


def test_a_short_prefix_of_a_long_history_runs_again_rather_than_copy_the_history():
    """A copy moves every cell its source holds: a system prompt shared with a long conversation is cheaper to
    run again than to copy with the conversation; a longer share of it is copied."""
    model = RecordingModel(slots=3)
    batch = SlotBatch(model, VOCAB)
    system = distinct_prompt(0)  # 22 tokens
    conversation, _ = start(batch, system + list(range(1000, 1000 + 39 * len(system))))  # 40x the system prompt
    _, slot = start(batch, system + [7, 7])  # shares 22 of the conversation's 880 cells: under 1/32
    assert model.copies == [] and slot != batch._slot_of[conversation] and batch.prefixes.hits == 0
    seq, slot = start(batch, conversation.prompt[:21 + len(system)] + [7])  # 42 of 880: worth a copy
    assert len(model.copies) == 1 and batch.prefixes.hits == 1
    assert batch.prefixes.reused_tokens == len(seq.prompt) - TILED_ATTENTION_ROWS == 42


def test_a_free_slot_holding_a_little_more_than_the_match_is_taken_in_place():
    """Another question on the same long history: the slot's last few cells (the earlier question) are dropped
    rather than the whole history copied to keep them; a slot holding a long other branch is kept and copied."""
    model = RecordingModel(slots=3)
    batch = SlotBatch(model, VOCAB)
    history = list(range(1000, 1800))
    first, slot = start(batch, history + list(range(5000, 5018)))  # 800 cells of history, an 18-token question
    batch.retire([first])
    _, again = start(batch, history + [7, 7])
    assert again == slot and model.copies == []
    assert batch.prefixes.reused_tokens == len(history) + 2 - TILED_ATTENTION_ROWS
    other, slot = start(batch, history[:400] + list(range(6000, 6400)))  # shares half, then 400 of its own
    batch.retire([other])
    _, last = start(batch, other.prompt[:420] + [9])  # 420 of the 800 cells: the other 380 are worth keeping
    assert model.copies[-1] == (slot, last) and last != slot


def test_prompts_resent_in_another_order_each_take_their_own_slot_even_apart_from_the_busy_ones():
    """Eight requests resent at once, as a burst of clients sends them: the first is admitted alone, the other
    seven in the next round, in another order than their slots. A copy to keep each one beside the busy slots
    would overwrite the prompt of one admitted next, which would then run whole (and in a call of its own
    length, another pass over the weights): each takes its own slot, and together they leave no gap."""
    model = RecordingModel(slots=8)
    batch = SlotBatch(model, VOCAB)
    seqs, slots = zip(*(start(batch, distinct_prompt(100 * i)) for i in range(8)), strict=True)
    batch.retire(seqs)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    first = batch.start_prefill(Seq(list(seqs[order[0]].prompt)))
    batch.step([first], chunk=64)  # alone: nothing to move it beside
    rest = [batch.start_prefill(Seq(list(seqs[i].prompt))) for i in order[1:]]
    batch.step(rest, chunk=64)
    assert model.copies == [] and [p.slot for p in [first, *rest]] == [slots[i] for i in order]
    assert batch.prefixes.reused_tokens == sum(len(seq.prompt) - TILED_ATTENTION_ROWS for seq in seqs)


def test_prompts_sent_again_together_each_take_their_own_slot_rather_than_copy_over_each_other():
    """Four requests resent at once find their prompts in four free slots, each followed by a long answer. A copy
    to keep one answer would overwrite another slot's prompt, which the next request then runs again: each
    takes its own slot in place instead, and runs only its last few tokens."""
    model = RecordingModel(slots=4)
    batch = SlotBatch(model, VOCAB)
    seqs, slots = zip(*(start(batch, distinct_prompt(100 * i)) for i in range(4)), strict=True)
    for seq in seqs:
        seq.generated = list(range(5000, 5100))  # a long answer, worth keeping were the slot's cells not needed
        seq.position += len(seq.generated)
    batch.retire(seqs)
    again = [batch.start_prefill(Seq(list(seq.prompt))) for seq in seqs]
    assert model.copies == [] and [prefill.slot for prefill in again] == list(slots)
    assert batch.prefixes.reused_tokens == sum(len(seq.prompt) - TILED_ATTENTION_ROWS for seq in seqs)
