"""The batch/slot state machine, driven without a model."""

from __future__ import annotations

import pytest

from espalier.service.engine.scheduler import QueueFull, Scheduler, Seq, SeqState, TooLong, common_prefix_len


def make(slots=2, prefix_slots=2, n_ctx=1000, n_batch=16, prefill_chunk=4, max_waiting=2) -> Scheduler:
    return Scheduler(slots=slots, prefix_slots=prefix_slots, n_ctx=n_ctx, n_batch=n_batch,
                     prefill_chunk=prefill_chunk, max_waiting=max_waiting)


def run_to_sample(s: Scheduler, *seqs: Seq, limit: int = 50) -> None:
    """Step until every given sequence awaits sampling (or is a ready prefix)."""
    for _ in range(limit):
        if all(q.state in (SeqState.SAMPLE, SeqState.READY) for q in seqs):
            return
        s.after_decode(s.schedule())
    raise AssertionError([q.state for q in seqs])


def test_prefill_then_decode_positions_are_consecutive():
    s = make()
    a = Seq(1, tokens=list(range(10)), max_new=5)
    s.add(a)
    plan = s.schedule()
    assert [(e.seq.key, list(e.tokens), e.pos, e.wants_logits) for e in plan.entries] == [
        (1, list(range(10)), 0, True)]  # nothing decodes yet: the whole prompt goes in one batch
    assert s.after_decode(plan) == [a]
    s.accept(a, 77)
    plan = s.schedule()
    assert [(list(e.tokens), e.pos) for e in plan.entries] == [([77], 10)]


def test_decode_tokens_first_and_prefill_chunked_while_others_decode():
    s = make(n_batch=16, prefill_chunk=4)
    a = Seq(1, tokens=[1, 2, 3], max_new=5)
    s.add(a)
    run_to_sample(s, a)
    s.accept(a, 9)
    b = Seq(2, tokens=list(range(20)), max_new=5)
    s.add(b)
    plan = s.schedule()
    assert plan.entries[0].seq is a and list(plan.entries[0].tokens) == [9]
    assert plan.entries[1].seq is b and len(plan.entries[1].tokens) == 4  # chunked: a keeps decoding
    assert not plan.entries[1].wants_logits


def test_slots_bound_and_reuse_after_finish():
    s = make(slots=2)
    seqs = [Seq(i, tokens=[1, 2], max_new=3) for i in range(1, 4)]
    for q in seqs:
        s.add(q)
    plan = s.schedule()
    assert {e.seq.key for e in plan.entries} == {1, 2}
    assert s.slots_busy == 2 and s.queue_depth == 1
    s.after_decode(plan)
    freed = seqs[0].slot
    s.finish(seqs[0])
    plan = s.schedule()
    assert plan.frees == [freed]  # KV removed before the slot is given to the waiting sequence
    assert seqs[2].slot == freed and seqs[2].state is SeqState.PREFILL


def test_queue_bound_raises_queue_full():
    s = make(slots=1, max_waiting=1)
    s.add(Seq(1, tokens=[1], max_new=1))
    s.add(Seq(2, tokens=[1], max_new=1))  # one free slot + one waiting place
    with pytest.raises(QueueFull):
        s.add(Seq(3, tokens=[1], max_new=1))


def test_too_long_and_empty_prompts_are_refused():
    s = make(n_ctx=10)
    with pytest.raises(TooLong):
        s.add(Seq(1, tokens=list(range(10)), max_new=1))
    with pytest.raises(TooLong):
        s.add(Seq(2, tokens=[], max_new=1))


def test_fork_copies_parent_prefix_and_prefills_only_the_suffix():
    s = make()
    p = Seq(1, tokens=list(range(8)), is_prefix=True)
    s.add(p)
    c1 = Seq(2, tokens=list(range(8)) + [50, 51], max_new=2, parent=p)
    c2 = Seq(3, tokens=list(range(8)) + [60], max_new=2, parent=p)
    s.add(c1)
    s.add(c2)
    plan = s.schedule()
    assert [e.seq for e in plan.entries] == [p]  # children wait for the parent to be ready
    s.after_decode(plan)
    assert p.state is SeqState.READY
    plan = s.schedule()
    assert [(f.src, f.dst, f.n_tokens) for f in plan.forks] == [(p.slot, c1.slot, 8), (p.slot, c2.slot, 8)]
    assert [(list(e.tokens), e.pos) for e in plan.entries] == [([50, 51], 8), ([60], 8)]
    assert c1.reused == 8


def test_fork_with_empty_suffix_still_prefills_one_token():
    s = make()
    p = Seq(1, tokens=[5, 6, 7], is_prefix=True)
    s.add(p)
    s.after_decode(s.schedule())
    c = Seq(2, tokens=[5, 6, 7], max_new=2, parent=p)
    s.add(c)
    plan = s.schedule()
    assert plan.forks[0].n_tokens == 2
    assert [(list(e.tokens), e.pos, e.wants_logits) for e in plan.entries] == [([7], 2, True)]


def test_a_prefix_equal_to_an_open_one_prefills_its_last_token():
    s = make()
    p = Seq(1, tokens=[5, 6, 7], is_prefix=True)
    s.add(p)
    s.after_decode(s.schedule())
    twin = Seq(2, tokens=[5, 6, 7], is_prefix=True, parent=p)
    s.add(twin)
    plan = s.schedule()
    assert plan.forks[0].n_tokens == 2 and [list(e.tokens) for e in plan.entries] == [[7]]
    s.after_decode(plan)
    assert twin.state is SeqState.READY


def test_released_prefix_is_freed_after_its_last_waiting_child_forks():
    s = make()
    p = Seq(1, tokens=[1, 2, 3], is_prefix=True)
    s.add(p)
    c = Seq(2, tokens=[1, 2, 3, 4], max_new=2, parent=p)
    s.add(c)
    s.release_prefix(p)
    assert p.state is not SeqState.DONE  # a child still needs it
    s.after_decode(s.schedule())
    plan = s.schedule()  # the child forks here, which releases the parent
    assert plan.forks and p.state is SeqState.DONE
    assert s.schedule().frees == []  # the child still runs: cells are removed once idle
    s.abort(c)
    assert sorted(s.schedule().frees) == sorted([p.slot, c.slot])


def test_child_of_a_vanished_parent_is_reported_as_orphan():
    s = make()
    p = Seq(1, tokens=[1, 2, 3], is_prefix=True)
    s.add(p)
    c = Seq(2, tokens=[1, 2, 3, 4], max_new=2, parent=p)
    s.add(c)
    s.abort(p)
    plan = s.schedule()
    assert plan.orphans == [c] and c.state is SeqState.DONE


def test_abort_waiting_and_active():
    s = make(slots=1)
    a = Seq(1, tokens=[1, 2], max_new=3)
    b = Seq(2, tokens=[1, 2], max_new=3)
    s.add(a)
    s.add(b)
    s.schedule()
    s.abort(b)
    assert s.queue_depth == 0 and b.state is SeqState.DONE
    s.abort(a)
    assert s.slots_busy == 0 and s.schedule().frees == [a.slot]


def test_kv_budget_holds_back_admission_in_order():
    s = make(slots=4, n_ctx=30)
    a = Seq(1, tokens=list(range(10)), max_new=10)  # reserves 20
    b = Seq(2, tokens=list(range(10)), max_new=10)  # would need 40 in all
    c = Seq(3, tokens=[1], max_new=1)  # fits, but must not overtake b
    for q in (a, b, c):
        s.add(q)
    plan = s.schedule()
    assert [e.seq for e in plan.entries] == [a]
    s.after_decode(plan)
    s.finish(a)
    assert {e.seq.key for e in s.schedule().entries} == {2, 3}


def test_decode_failure_retires_the_batch():
    s = make()
    a = Seq(1, tokens=[1, 2], max_new=3)
    s.add(a)
    plan = s.schedule()
    assert s.decode_failed(plan) == [a]
    assert a.state is SeqState.DONE and s.slots_busy == 0
    assert s.schedule().frees == [a.slot] and s.kv_reserved == 0


def test_finished_cells_stay_while_others_run_and_go_when_needed_or_idle():
    s = make(slots=2, n_ctx=100)
    a = Seq(1, tokens=[1, 2], max_new=3)
    b = Seq(2, tokens=[3, 4], max_new=3)
    s.add(a)
    s.add(b)
    run_to_sample(s, a, b)
    s.accept(b, 5)
    s.finish(a)
    assert s.slots_busy == 1  # the slot counts as free at once
    plan = s.schedule()
    assert plan.frees == []  # b still decodes: removing a's cells now would reorder b's
    c = Seq(3, tokens=[6], max_new=2)
    s.add(c)
    plan = s.schedule()
    assert plan.frees == [a.slot] and c.slot == a.slot  # the slot is needed: cleaned, then reused
    s.after_decode(plan)
    s.finish(b)
    s.finish(c)
    assert sorted(s.schedule().frees) == sorted([b.slot, c.slot])  # idle: everything is removed
    assert s.kv_reserved == 0


def test_dirty_cells_are_reclaimed_for_the_kv_budget():
    s = make(slots=4, n_ctx=30)
    a = Seq(1, tokens=list(range(10)), max_new=10)
    keep = Seq(2, tokens=[1], max_new=5)
    s.add(a)
    s.add(keep)
    run_to_sample(s, a, keep)
    s.accept(keep, 1)
    s.finish(a)
    big = Seq(3, tokens=list(range(10)), max_new=10)
    s.add(big)
    plan = s.schedule()
    assert a.slot in plan.frees and big.state is SeqState.PREFILL


def test_a_released_parent_is_not_freed_in_the_step_that_forks_its_last_child():
    s = make(slots=2, prefix_slots=1)
    p = Seq(1, tokens=[1, 2, 3], is_prefix=True)
    s.add(p)
    s.after_decode(s.schedule())
    c = Seq(2, tokens=[1, 2, 3, 4], max_new=2, parent=p)
    s.add(c)
    s.release_prefix(p)
    q = Seq(3, tokens=[7, 8], is_prefix=True)  # wants the only prefix slot, which p still holds
    s.add(q)
    plan = s.schedule()
    assert [(f.src, f.dst) for f in plan.forks] == [(p.slot, c.slot)]
    assert p.slot not in plan.frees  # frees run before forks: the child would copy nothing


def test_fork_from_a_parent_that_differs_after_a_point_copies_only_the_common_start():
    # A revised streamed prompt: the new text shares 5 tokens with the prefix it forks from.
    s = make()
    p = Seq(1, tokens=[1, 2, 3, 4, 5, 6, 7, 8], is_prefix=True)
    s.add(p)
    s.after_decode(s.schedule())
    child = Seq(2, tokens=[1, 2, 3, 4, 5, 90, 91], is_prefix=True, parent=p,
                shared=common_prefix_len(p.tokens, [1, 2, 3, 4, 5, 90, 91]))
    s.add(child)
    plan = s.schedule()
    assert [(f.n_tokens, list(f.tokens)) for f in plan.forks] == [(5, [1, 2, 3, 4, 5])]
    assert [(list(e.tokens), e.pos) for e in plan.entries] == [([90, 91], 5)]
    assert child.reserved == 2  # only the unshared tokens take new cells


@pytest.mark.parametrize(("a", "b", "n"), [
    ([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2, 3], [1, 9, 3], 1),
    ([7], [8], 0), (list(range(1000)), list(range(999)) + [5], 999),
])
def test_common_prefix_len(a, b, n):
    assert common_prefix_len(a, b) == n == common_prefix_len(b, a)


def test_a_first_sequence_takes_the_next_free_slot_ahead_of_waiting_points():
    s = make(slots=1, max_waiting=4)
    running = Seq(1, tokens=[1, 2], max_new=3)
    s.add(running)
    run_to_sample(s, running)
    points = [Seq(k, tokens=[1, 2], max_new=3) for k in (2, 3)]
    skeletons = [Seq(k, tokens=[1, 2], max_new=3, priority=0) for k in (4, 5)]
    for seq in (points[0], skeletons[0], points[1], skeletons[1]):
        s.add(seq)
    admitted = []
    for _ in range(4):
        s.finish(next(q for q in [running, *points, *skeletons] if q.state is SeqState.SAMPLE))
        s.after_decode(s.schedule())
        (now,) = [q for q in [*points, *skeletons] if q.state is SeqState.SAMPLE]
        admitted.append(now.key)
        running = now
    assert admitted == [4, 5, 2, 3]  # both skeletons first, each kind in arrival order


def test_a_first_sequence_that_does_not_fit_the_kv_budget_holds_back_the_rest():
    s = make(slots=2, n_ctx=10, max_waiting=4)
    running = Seq(1, tokens=[1, 2], max_new=4)
    s.add(running)
    run_to_sample(s, running)
    point = Seq(2, tokens=[1], max_new=1)
    skeleton = Seq(3, tokens=[1, 2, 3], max_new=3, priority=0)  # 6 cells: 6 + 6 > 10
    s.add(point)
    s.add(skeleton)
    s.schedule()
    assert point.state is SeqState.WAITING and skeleton.state is SeqState.WAITING  # no overtaking
