"""The engine's scheduling policy on plain data: slot placement, eviction, preemption, limits (no model).

The decode loop carries these decisions out against llama.cpp; here each one is the
function's answer for slots and jobs built by hand.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from llamacpp_native import GenerationRequest
from llamacpp_native.engine.policy import (
    MIN_COPIED_PREFIX,
    Job,
    Slot,
    cells_in_use,
    common_prefix,
    eviction_candidate,
    generation_limit,
    next_media,
    place,
    position,
    preemption_victim,
    reusable,
)


@dataclass
class FakeMedia:
    """What the policy reads of a media chunk: how many tokens it takes and KV positions it uses."""

    n_tokens: int
    n_pos: int


def job(tokens: list[int], lora: Any = (), media: dict[int, Any] | None = None, max_tokens: int = 16) -> Job:
    request = GenerationRequest(list(tokens), max_tokens=max_tokens)
    made = Job(request, weakref.ref(request), None, max_tokens, lora, list(tokens))  # type: ignore[arg-type]
    if media:
        made.media = dict(media)
        made.shift = sum(chunk.n_tokens - chunk.n_pos for chunk in media.values())
    return made


def busy(slot: Slot) -> Slot:
    slot.job = job([0])
    return slot


def test_common_prefix_counts_equal_leading_tokens() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_a_slot_is_reusable_only_under_the_same_adapters() -> None:
    slot = Slot(0, tokens=[1, 2, 3, 4])
    assert reusable(slot, job([1, 2, 3, 9])) == 3
    assert reusable(slot, job([1, 2, 3, 9], lora=(("adapter", 1.0),))) == 0


def test_a_media_chunk_is_reused_whole_or_not_at_all() -> None:
    image = FakeMedia(n_tokens=4, n_pos=4)
    cached = Slot(0, tokens=[1, 2, 7, 7, 7])  # holds only part of the image's placeholders
    assert reusable(cached, job([1, 2, 7, 7, 7, 7, 3], media={2: image})) == 2
    whole = Slot(0, tokens=[1, 2, 7, 7, 7, 7, 3])
    assert reusable(whole, job([1, 2, 7, 7, 7, 7, 3, 4], media={2: image})) == 7


def test_positions_skip_the_tokens_an_m_rope_medium_saves() -> None:
    image = FakeMedia(n_tokens=4, n_pos=1)
    sequence = job([1, 2, 7, 7, 7, 7, 3], media={2: image})
    assert position(sequence, 2) == 2  # the image starts where its first placeholder is
    assert position(sequence, 6) == 3  # after it: 4 tokens, 1 position
    assert position(job([1, 2, 3]), 2) == 2
    assert next_media(sequence, 0) == 2
    assert next_media(sequence, 3) == len(sequence.tokens)


def test_the_generation_limit_is_max_tokens_within_the_window() -> None:
    assert generation_limit(100, GenerationRequest([1] * 10, max_tokens=16)) == 16
    assert generation_limit(20, GenerationRequest([1] * 10, max_tokens=16)) == 10
    assert generation_limit(20, GenerationRequest([1] * 10, max_tokens=None)) == 10
    assert generation_limit(10, GenerationRequest([1] * 10, max_tokens=4)) == 0


def test_no_placement_while_every_slot_is_busy() -> None:
    assert place([busy(Slot(0)), busy(Slot(1))], job([1, 2, 3])) is None


def test_a_request_continues_the_slot_holding_most_of_its_prompt() -> None:
    slots = [Slot(0, tokens=[1, 2, 3], last_used=5.0), Slot(1, tokens=[1, 2, 3, 4, 5], last_used=1.0)]
    placement = place(slots, job([1, 2, 3, 4, 5, 6]))
    assert placement is not None
    assert (placement.slot.seq_id, placement.shared, placement.fresh) == (1, 5, False)


def test_a_short_shared_start_does_not_take_over_another_conversation() -> None:
    conversation = Slot(0, tokens=[1, 50, 51, 52, 53, 54], last_used=2.0)
    empty = Slot(1)
    placement = place([conversation, empty], job([1, 60, 61]))  # only BOS in common
    assert placement is not None
    assert placement.slot is empty and placement.fresh and placement.shared == 0 and placement.donor is None


def test_without_an_empty_slot_the_least_recently_used_one_starts_afresh() -> None:
    older, newer = Slot(0, tokens=[8, 8, 8], last_used=1.0), Slot(1, tokens=[9, 9, 9], last_used=2.0)
    placement = place([older, newer], job([1, 2, 3]))
    assert placement is not None
    assert placement.slot is older and placement.fresh and placement.shared == 0


def test_a_long_prefix_held_by_a_busy_slot_is_copied() -> None:
    prefix = list(range(MIN_COPIED_PREFIX + 4))
    donor = busy(Slot(0, tokens=[*prefix, 99]))
    empty = Slot(1)
    placement = place([donor, empty], job([*prefix, 7, 8]))
    assert placement is not None
    assert placement.slot is empty and placement.donor is donor
    assert placement.fresh and placement.shared == len(prefix)


def test_a_prefix_shorter_than_the_copy_threshold_is_decoded_afresh() -> None:
    prefix = list(range(MIN_COPIED_PREFIX - 1))
    placement = place([busy(Slot(0, tokens=[*prefix, 99])), Slot(1)], job([*prefix, 7]))
    assert placement is not None
    assert placement.donor is None and placement.shared == 0


def test_cells_in_use_add_up_every_slots_tokens() -> None:
    assert cells_in_use([Slot(0, tokens=[1, 2]), Slot(1), Slot(2, tokens=[3])]) == 3


def test_eviction_takes_the_least_recently_used_idle_slot_with_a_cache() -> None:
    old = Slot(0, tokens=[1], last_used=1.0)
    recent = Slot(1, tokens=[2], last_used=3.0)
    running = busy(Slot(2, tokens=[3], last_used=0.0))
    empty = Slot(3, last_used=0.5)
    slots = [recent, old, running, empty]
    assert eviction_candidate(slots) is old
    assert eviction_candidate(slots, keep=old) is recent
    assert eviction_candidate([running, empty]) is None


def test_preemption_picks_the_youngest_job_holding_a_cache_never_a_lone_one() -> None:
    first, second, waiting = job([1]), job([2]), job([3])
    first.slot, second.slot = Slot(0, tokens=[1]), Slot(1, tokens=[2])
    waiting.slot = Slot(2)  # admitted, nothing decoded yet
    assert preemption_victim([first, second, waiting]) is second
    assert preemption_victim([first, waiting]) is None
    assert preemption_victim([]) is None
