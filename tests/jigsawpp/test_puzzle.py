"""The puzzle sampler against numpy references of the fork's data_transformer.cpp / merge_data_layer.cpp: tile
geometry, jitter ranges, colour matrices, occluder bookkeeping and rates over many draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jigsawpp.permutations import generate_permutations
from jigsawpp.puzzle import (
    PuzzleConfig,
    assemble,
    crops_to_tensor,
    make_puzzles,
    puzzle_crop,
    resize_short_side,
)

CONFIG = PuzzleConfig()
PERMS = torch.from_numpy(generate_permutations(20, seed=1))
# data_transformer.cpp@8c7ec09, RGB order as written there: r' = .8333r + .3333g - .1667b, g' = .3333(r+g+b),
# b' = -.1667r + .3333g + .8333b
PROJ_RGB = np.array([[0.8333, 0.3333, -0.1667], [0.3333, 0.3333, 0.3333], [-0.1667, 0.3333, 0.8333]])


def _crops(batch: int, seed: int = 0) -> torch.Tensor:
    """Random texture, so that every 64-px window is unique."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, 3, 255, 255), dtype=np.uint8))


def _cell(crop: np.ndarray, cell: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    r, q = divmod(cell, 3)
    return crop[:, r * 85 + dy:r * 85 + dy + 64, q * 85 + dx:q * 85 + dx + 64].astype(np.float64)


def test_shapes_labels_and_recorded_occluders():
    crops = _crops(6)
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(0))
    assert batch.tiles.shape == (6, 9, 3, 64, 64) and batch.tiles.dtype == torch.float32
    assert batch.labels.dtype == torch.int64 and ((batch.labels >= 0) & (batch.labels < 20)).all()
    assert batch.occluded.shape == (6, 9) and set(batch.occluder_counts.tolist()) <= {0, 1, 2}
    # the occlusion draws come last: the same generator without occlusion gives the same puzzle elsewhere
    plain = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(0), occlusion=False)
    assert torch.equal(plain.labels, batch.labels) and not plain.occluded.any()
    same = (plain.tiles == batch.tiles).flatten(2).all(dim=2)
    assert torch.equal(same, ~batch.occluded)


def test_unpermuting_reassembles_the_crop_exactly():
    crops = _crops(8, seed=1)
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(3), jitter=False, colour=False)
    for b in range(8):
        perm = PERMS[batch.labels[b]]
        image = assemble(batch.tiles[b], perm).numpy()
        crop = crops[b].numpy()
        for slot in range(9):
            if batch.occluded[b, slot]:
                continue
            cell = int(perm[slot])
            r, q = divmod(cell, 3)
            np.testing.assert_array_equal(image[:, r * 64:(r + 1) * 64, q * 64:(q + 1) * 64], _cell(crop, cell))


def test_occluders_are_distinct_cells_of_the_other_image():
    crops, others = _crops(16, seed=2), _crops(16, seed=3)
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(4), jitter=False, colour=False,
                         occluder_crops=others)
    for b in range(16):
        cells = []
        for slot in torch.nonzero(batch.occluded[b]).flatten().tolist():
            tile = batch.tiles[b, slot].numpy()
            found = [c for c in range(9) if np.array_equal(tile, _cell(others[b].numpy(), c))]
            assert len(found) == 1, "an occluding tile must be one cell of the other image"
            cells += found
        assert len(cells) == len(set(cells))
    # by default the next image of the batch occludes
    rolled = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(4), jitter=False, colour=False)
    explicit = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(4), jitter=False, colour=False,
                            occluder_crops=crops.roll(-1, 0))
    assert torch.equal(rolled.tiles, explicit.tiles)


def test_jitter_offsets_and_per_channel_shift_ranges():
    crops = _crops(6, seed=5)
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(6), colour=False, occlusion=False)
    for b in range(6):
        crop = crops[b].numpy()
        for slot in range(0, 9, 2):
            cell = int(PERMS[batch.labels[b], slot])
            offsets = []
            for ch in range(3):
                want = batch.tiles[b, slot, ch].numpy()
                hits = [(dy, dx) for dy in range(21) for dx in range(21)
                        if np.array_equal(want, _cell(crop, cell, dy, dx)[ch])]
                assert len(hits) == 1
                offsets.append(hits[0])
            for axis in (0, 1):
                values = [o[axis] for o in offsets]
                # some common offset base in 0..18 (rand() % 19) with each channel at base + 0..2 (rand() % 3)
                assert any(all(0 <= v - base <= 2 for v in values) for base in range(19)), values


def test_colour_projection_and_grey_match_the_forks_formulas():
    crops = _crops(64, seed=7)
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(8), jitter=False, occlusion=False)
    assert batch.grey.any() and batch.projected.any() and (~batch.grey & ~batch.projected).any()
    assert not (batch.grey & batch.projected).any()
    for b in range(64):
        tile = batch.tiles[b, 0].numpy().astype(np.float64)
        bgr = _cell(crops[b].numpy(), int(PERMS[batch.labels[b], 0]))
        rgb = bgr[::-1]
        if batch.grey[b]:
            expected = np.repeat((0.3333 * rgb.sum(0))[None], 3, axis=0)
        elif batch.projected[b]:
            expected = np.einsum("ij,jhw->ihw", PROJ_RGB, rgb)[::-1]
        else:
            expected = bgr
        np.testing.assert_allclose(tile, expected, atol=1e-3)


def test_rates_over_many_draws():
    # the draws do not depend on the geometry: a small grid keeps 2048 puzzles cheap
    small = PuzzleConfig(resize=48, crop=48, tile=8, jitter=4)
    n = 2048  # binomial sd of a rate near 0.5: ~0.011; tolerances are ~4 sd
    crops = torch.from_numpy(np.random.default_rng(9).integers(0, 256, (n, 3, 48, 48), dtype=np.uint8))
    batch = make_puzzles(crops, PERMS, generator=torch.Generator().manual_seed(0), config=small)
    grey, projected = int(batch.grey.sum()), int(batch.projected.sum())
    occluders = np.bincount(batch.occluder_counts.numpy(), minlength=3)
    labels = np.bincount(batch.labels.numpy(), minlength=20)
    assert grey / n == pytest.approx(0.5, abs=0.045)
    assert projected / n == pytest.approx(0.25, abs=0.04)
    np.testing.assert_allclose(occluders / n, [1 / 3] * 3, atol=0.045)
    assert labels.min() > 0.5 * n / 20


def test_resize_and_crop_follow_the_dataset_tool():
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    resized = resize_short_side(image)
    assert resized.shape == (256, int(np.float32(500) / np.float32(375) * np.float32(256)), 3) == (256, 341, 3)
    import cv2

    np.testing.assert_array_equal(resized, cv2.resize(image, (341, 256), interpolation=cv2.INTER_LINEAR))
    centre = puzzle_crop(image, train=False)
    np.testing.assert_array_equal(centre, resized[0:255, 43:298])
    rng = np.random.default_rng(1)
    random = PuzzleConfig(train_crop="random")
    windows = {tuple(puzzle_crop(image, config=random, train=True, rng=rng)[0, :3, 0]) for _ in range(20)}
    assert len(windows) > 5  # random positions along the long side
    assert np.array_equal(puzzle_crop(image, train=True), centre)  # the authors' data: always the centre crop
    tall = np.zeros((640, 300, 3), np.uint8)
    assert resize_short_side(tall).shape[:2] == (int(np.float32(640) / np.float32(300) * np.float32(256)), 256)


def test_invalid_configs_and_inputs():
    with pytest.raises(ValueError, match="exceeds the 85-px cell"):
        PuzzleConfig(jitter=21)
    with pytest.raises(ValueError, match="occluders"):
        PuzzleConfig(max_occluders=9)
    with pytest.raises(ValueError, match="unknown PuzzleConfig key"):
        PuzzleConfig.from_dict({"jiter": 3})
    with pytest.raises(ValueError, match=r"crops must be \(B, 3, 255, 255\)"):
        make_puzzles(torch.zeros(2, 3, 200, 200, dtype=torch.uint8), PERMS, generator=torch.Generator())
    assert crops_to_tensor([np.zeros((255, 255, 3), np.uint8)] * 2).shape == (2, 3, 255, 255)


def test_offset_draws_cover_exactly_the_forks_ranges():
    from jigsawpp.puzzle import _draw_offsets

    jitter, shift = _draw_offsets(2000, 9, CONFIG, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (int(jitter.min()), int(jitter.max())) == (0, 18)       # rand() % (jitter_size + 1)
    assert (int(shift.min()), int(shift.max())) == (0, 2)          # rand() % 3
    counts = torch.bincount(jitter.flatten(), minlength=19).float()
    assert float(counts.min() / counts.max()) > 0.8                # uniform
