"""Tiling into cells and per-cell accumulation of tile probabilities, against a dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clnet.inference.accumulator import CellAccumulator
from clnet.inference.sliding_window import softmax_
from clnet.inference.tiling import TileGrid


def test_softmax_in_place_matches_torch():
    x = torch.randn(2, 7, 5, 6, 3) * 20  # large logits: the max is subtracted first
    want = torch.softmax(x, dim=1)
    got = softmax_(x, dim=1)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("shape,patch,overlap", [
    ((40, 30, 50), (16, 16, 24), 0.5),
    ((16, 70, 33), (16, 32, 32), 0.2),
    ((100, 20, 20), (32, 20, 20), 0.25),
])
def test_cells_partition_the_volume_and_know_their_tiles(shape, patch, overlap):
    grid = TileGrid(shape, patch, overlap)
    owner = np.full(shape, -1)
    for i, cell in enumerate(grid.cells):
        assert (owner[cell.box()] == -1).all(), "cells overlap"
        owner[cell.box()] = i
        covering = [t for t, o in enumerate(grid.tiles)
                    if all(oa <= a and b <= oa + p for oa, a, b, p in zip(o, cell.start, cell.stop, patch))]
        assert list(cell.tiles) == covering
        assert all(i in grid.cells_of_tile[t] for t in covering)
    assert (owner >= 0).all(), "cells leave voxels out"
    lasts = [c.last_tile for c in grid.cells]
    assert lasts == sorted(lasts)


def test_open_cells_are_far_less_than_a_row_for_a_long_scan():
    # The 512×512×824 CT at 1.5 mm with the official patch and overlap.
    grid = TileGrid((824, 244, 244), (112, 96, 128), 0.2)
    assert grid.most_open_voxels() < 0.45 * 112 * 244 * 244


def _dense_reference(grid, plan, probs, importance, decoder):
    """Gaussian-weighted mean of the tiles' probabilities over the whole volume, the obvious way."""
    classes = next(iter(probs.values())).shape[0]
    acc = np.zeros((classes, *grid.shape))
    weight = np.zeros(grid.shape)
    for t, origin in enumerate(grid.tiles):
        if decoder not in plan[t]:
            continue
        box = tuple(slice(o, o + p) for o, p in zip(origin, grid.patch))
        acc[(slice(None), *box)] += probs[t] * importance
        weight[box] += importance
    return acc, weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_cells_decide_like_the_dense_weighted_mean(dtype):
    shape, patch = (30, 20, 26), (12, 10, 14)
    grid = TileGrid(shape, patch, 0.5)
    rng = np.random.default_rng(0)
    importance = torch.from_numpy(rng.uniform(0.1, 1.0, patch)).float()
    # Decoder "b" skips the first row of tiles (gating) and a tile is skipped for everyone (air).
    rows = {z: i for i, z in enumerate(grid.starts[0])}
    plan = [frozenset() if t == 5 else frozenset({"a"} if rows[o[0]] == 0 else {"a", "b"})
            for t, o in enumerate(grid.tiles)]
    classes = {"a": 4, "b": 3}
    probs = {d: {t: torch.softmax(torch.from_numpy(rng.normal(size=(k, *patch)) * 3).float(), 0)
                 for t in range(len(grid.tiles))} for d, k in classes.items()}
    real = (28, 20, 25)  # the last voxels are padding
    store = CellAccumulator(grid, plan, classes, importance, dtype, real)
    labels = {d: np.full(real, 255, np.uint8) for d in classes}
    conf = {d: np.zeros(real, np.uint8) for d in classes}
    covered = {d: np.zeros(real, int) for d in classes}
    for t in range(len(grid.tiles)):
        for d in sorted(plan[t]):
            store.add(t, d, probs[d][t].clone())  # add() scales its input in place
        for block in store.finished(t):
            for d in block.labels:
                labels[d][block.box] = block.labels[d]
                conf[d][block.box] = block.confidence[d]
                covered[d][block.box] += 1
    assert store.open_values == 0 and not store._values and not store._factors and not store._direct
    assert store.peak_open_values <= sum(classes.values()) * grid.most_open_voxels()
    for d in classes:
        acc, weight = _dense_reference(grid, plan, {t: p.numpy() for t, p in probs[d].items()},
                                       importance.numpy(), d)
        ran = weight[: real[0], : real[1], : real[2]] > 0
        np.testing.assert_array_equal(covered[d], ran.astype(int))  # each voxel once, where it ran
        mean = (acc / np.maximum(weight, 1e-12))[:, : real[0], : real[1], : real[2]]
        want = mean.argmax(0)
        agree = np.mean(labels[d][ran] == want[ran])
        diff = np.abs(conf[d][ran].astype(int) - np.round(mean.max(0)[ran] * 255))
        if dtype == torch.float32:
            assert agree == 1.0 and diff.max() <= 1
        else:  # rounded shares: near-ties may flip, the confidence is off by a few 1/255
            assert agree > 0.99 and diff.max() <= 4
    second_row = grid.starts[0][1]
    assert not covered["b"][:second_row].any() and covered["b"][second_row:].all()  # gated off on row 0 only


@pytest.mark.parametrize("rule", ["clnet", "official"])
def test_padding_around_the_volume_and_probabilities_on_request(rule):
    """The volume may sit inside the padded grid (centred padding): blocks come back in the volume's own
    coordinates, and with ``keep_probabilities`` they carry the weighted-mean probabilities themselves.
    The official importance map (weights down to 4e-11) keeps the normalisation exact."""
    from clnet.inference.importance import importance_map

    shape, patch = (30, 20, 26), (12, 10, 14)
    grid = TileGrid(shape, patch, 0.2, rule)
    importance = importance_map(patch, 0.125, "official")
    assert float(importance.min()) < 1e-9
    plan = [frozenset({"a"})] * len(grid.tiles)
    rng = np.random.default_rng(1)
    probs = {t: torch.softmax(torch.from_numpy(rng.normal(size=(3, *patch)) * 3).float(), 0)
             for t in range(len(grid.tiles))}
    start, real = (2, 0, 3), (25, 20, 21)  # padding before and after the volume
    store = CellAccumulator(grid, plan, {"a": 3}, importance, torch.float32, real, start, keep_probabilities=True)
    got = np.full((3, *real), np.nan, np.float32)
    labels = np.full(real, 255, np.uint8)
    for t in range(len(grid.tiles)):
        store.add(t, "a", probs[t].clone())
        for block in store.finished(t):
            got[(slice(None), *block.box)] = block.probabilities["a"]
            labels[block.box] = block.labels["a"]
    acc, weight = _dense_reference(grid, plan, {t: p.numpy() for t, p in probs.items()}, importance.numpy(), "a")
    window = tuple(slice(s, s + n) for s, n in zip(start, real))
    want = (acc / weight)[(slice(None), *window)]
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(labels, want.argmax(0))
