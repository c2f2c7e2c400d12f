"""The training stream, consumed as workers consume it: exact epochs, fresh
batches every epoch, identical after a resume, whatever the worker count."""

import numpy as np
import pytest

from charlm.data.stream import Permutation, Plan, round_batch, worker_stream
from charlm.data.windows import window_starts

MAXLEN, STEP = 8, 3


def numbered_parts(lengths):
    """Parts whose ids are their global character positions: a window's first
    id names its part and offset, and a window crossing a part would show."""
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [np.arange(lo, hi, dtype=np.int32)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def all_windows(parts):
    """First id of every window the seed's loop makes in each part."""
    return np.concatenate([p[window_starts(len(p), MAXLEN, STEP)] for p in parts])


def consume(parts, plan, start_epoch, epochs):
    """Every worker's batches, read as train_loop reads them; → [epoch][step] global
    batches (first ids), worker slices in rank order."""
    per_worker = []
    for w in range(plan.num_workers):
        stream = worker_stream(parts, plan, w, start_epoch, epochs)
        batches = [b["window"] for b in stream.iter_batches(
            batch_size=plan.per_worker, batch_format="numpy", prefetch_batches=2)]
        assert len(batches) == plan.steps * (epochs - start_epoch + 1)
        for b in batches:
            assert b.shape == (plan.per_worker, MAXLEN + 1)
            assert (b == b[:, :1] + np.arange(MAXLEN + 1)).all(), "a window crosses a part"
        per_worker.append(batches)
    steps = [np.concatenate([per_worker[w][i][:, 0] for w in range(plan.num_workers)])
             for i in range(len(per_worker[0]))]
    return [steps[i:i + plan.steps] for i in range(0, len(steps), plan.steps)]


@pytest.mark.parametrize("lengths,batch,workers", [
    ((2_000,), 60, 1), ((2_000,), 60, 3), ((500, 800, 50, 9, 1_300), 64, 2)])
def test_every_epoch_visits_every_window_once_except_a_varying_remainder(
        ray_local, lengths, batch, workers):
    parts = numbered_parts(lengths)
    plan = Plan(lengths, MAXLEN, STEP, batch, workers, seed=5)
    expected = set(all_windows(parts).tolist())
    assert plan.total == len(expected) and plan.steps == plan.total // batch
    epochs = consume(parts, plan, 1, 4)
    left_out = []
    for steps in epochs:
        seen = np.concatenate(steps)
        assert len(seen) == len(set(seen.tolist())) == plan.steps * batch  # once each
        left = expected - set(seen.tolist())
        assert len(left) == plan.total % batch
        left_out.append(left)
    if plan.total % batch:
        assert len({frozenset(s) for s in left_out}) > 1, "the same remainder every epoch"
    # A fresh order every epoch, and not the corpus order.
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    assert not np.array_equal(np.concatenate(epochs[0]), np.sort(np.concatenate(epochs[0])))
    # A stream started at epoch 3 (a resumed run) reads exactly epochs 3 and 4.
    resumed = consume(parts, plan, 3, 4)
    for a, b in zip(epochs[2:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)


def test_global_batches_do_not_depend_on_the_worker_count():
    plan1 = Plan((3_000,), MAXLEN, STEP, 96, 1, seed=2)
    plan4 = Plan((3_000,), MAXLEN, STEP, 96, 4, seed=2)
    one = plan1.windows_of(np.arange(plan1.rows_per_epoch * 2), 0, 1)
    four = np.stack([plan4.windows_of(np.arange(plan4.rows_per_epoch * 2), w, 1)
                     for w in range(4)])  # [worker, row]
    four = four.reshape(4, -1, 24).transpose(1, 0, 2).reshape(-1)  # step by step
    assert np.array_equal(one, four)


def test_max_steps_reads_the_first_steps_of_each_epochs_order():
    full = Plan((3_000,), MAXLEN, STEP, 32, 2, seed=4)
    capped = Plan((3_000,), MAXLEN, STEP, 32, 2, seed=4, max_steps=3)
    assert capped.steps == 3 < full.steps
    rows = np.arange(capped.rows_per_epoch)
    assert np.array_equal(capped.windows_of(rows, 1, 2), full.windows_of(rows, 1, 2))
    # Epoch 2 starts a new order, not where epoch 1's capped slice stopped.
    assert np.array_equal(capped.windows_of(rows + capped.rows_per_epoch, 1, 1),
                          full.windows_of(rows, 1, 2))


def test_pairs_sharing_a_batch_rarely_share_one_again_next_epoch():
    plan = Plan((60_003,), 40, 3, 1_000, 1, seed=0)
    n, batch = plan.total, plan.batch_size
    rows = np.arange(plan.rows_per_epoch)
    b1 = np.full(n, -1)
    b2 = np.full(n, -1)
    b1[plan.windows_of(rows, 0, 1)] = rows // batch
    b2[plan.windows_of(rows, 0, 2)] = rows // batch
    both = (b1 >= 0) & (b2 >= 0)
    # Pairs together in epoch 1 that are together again in epoch 2.
    _, joint = np.unique(b1[both] * plan.steps + b2[both], return_counts=True)
    again = (joint * (joint - 1) // 2).sum()
    _, sizes = np.unique(b1[b1 >= 0], return_counts=True)
    pairs = (sizes * (sizes - 1) // 2).sum()
    chance = (batch - 1) / (n - 1)
    assert again / pairs <= 2 * chance, (again / pairs, chance)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1_000, 3 * 1_000_003])
def test_each_epoch_order_is_a_bijection(n):
    """Including a window count that is a multiple of the old fixed stride
    (1,000,003; its fallback 1,000,005 shared a factor 3 with this count)."""
    order = Permutation(n, (7, 1))(np.arange(n))
    assert np.array_equal(np.bincount(order, minlength=n), np.ones(n, dtype=np.int64))
    if n > 5:
        assert not np.array_equal(order, Permutation(n, (7, 2))(np.arange(n)))


def test_a_batch_rounds_down_to_a_multiple_of_the_workers():
    assert round_batch(1024, 3) == 1023
    assert round_batch(1024, 4) == 1024
    assert round_batch(5, 8) == 8
    with pytest.raises(ValueError):
        Plan((100,), MAXLEN, STEP, 1024, 3, seed=0)


def test_gather_processes_hold_no_store_pages_between_blocks(ray_local):
    """A part read from the object store is read in place; after a block the
    gather process no longer maps its pages (or its RSS grew to the whole
    corpus), and the next block reads them again intact."""
    import psutil
    import ray

    from charlm.data.stream import _Gather

    n = 32 << 20
    ids = [(np.arange(n // 2) % k).astype(np.uint8) for k in (251, 241)]  # two parts
    plan = Plan(lengths=(n // 2, n // 2), maxlen=MAXLEN, step=STEP, batch_size=1024,
                num_workers=1, seed=0)
    rows = np.random.default_rng(0).choice(plan.rows_per_epoch, 100_000, replace=False)

    @ray.remote
    def gather_twice(parts):
        g = _Gather(parts, plan, 0, 1)
        before = psutil.Process().memory_info().shared
        first = g({"id": rows})["window"]
        grown = psutil.Process().memory_info().shared - before
        return grown, first, g({"id": rows})["window"]

    grown, first, second = ray.get(gather_twice.remote([ray.put(a) for a in ids]))
    part, starts = plan.starts(plan.windows_of(rows, 0, 1))
    expected = np.stack([ids[p][s:s + MAXLEN + 1] for p, s in zip(part, starts, strict=True)])
    assert (first == expected).all() and (second == expected).all()
    assert grown < n // 4, f"the gather process still maps {grown >> 20} MB of the store"
