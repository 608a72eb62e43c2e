"""The Jigsaw++ puzzle sampler, faithful to the authors' Caffe fork (MehdiNoroozi/JigsawPuzzleSolver@8c7ec09):
`generate_jps_dataset/generate_jps_dataset.cpp` (image preparation), `caffe-master-jps++/src/caffe/
data_transformer.cpp` (tiles, permutation, jitter, colour) and `src/caffe/layers/merge_data_layer.cpp` (occluders),
with the constants of `train_val_cfn_jps++.prototxt@d18dace`.

One puzzle, as the fork builds it:
1. the image's shorter side is resized to 256 (`cvResize`, bilinear; the longer side is `(int)(float(long/short) *
   256)`), and the centre 255 x 255 window is cropped (see `train_crop` below);
2. the window is a 3x3 grid of 85-px cells, numbered row-major; a label `l` is drawn uniformly from the N
   permutations, and output slot s shows source cell `perms[l, s]`;
3. each slot's 64-px tile starts at a random offset `rand() % 19` (0..18, jitter_size 18) in x and in y inside its
   cell, plus an extra `rand() % 3` (0..2) per colour channel (against chromatic aberration);
4. per puzzle, with p = 1/2 all tiles become grey (0.3333 (B + G + R) in every channel); otherwise, with p = 1/2,
   the fork's colour projection is applied (`COLOUR_PROJECTION_BGR`);
5. `rand() % 3` slots (0, 1 or 2; merge_data_param min_substitute 0, max_substitute 3) are replaced by tiles of a
   second image, which went through steps 1-4 with its own draws; distinct slots, distinct source cells; the label
   is unchanged;
6. the network normalises each tile (MVN across channels, then x50): `jigsawpp.pretext.networks.TileNormalization`,
   the `mvn_i`/`scale_i` layers of the prototxt. The tiles here stay in 0..255 (BGR, no mean subtraction).

Steps 2-5 run batched in torch on whatever device the crops are on (one gather for all tiles of a batch), so a GPU
does the tile work and the data loader only decodes and crops.

Two things the fork leaves open or does differently, chosen here and recorded in `PuzzleConfig`:
- `train_crop`: the fork's Caffe crops 255 x 255 at a random offset at training, but the data it reads
  (`./jps_dataset/train`, written by `generate_jps_dataset`) already holds the *centre* 255 crop of each
  256-short-side image, so the offset is always 0: "center" (default) reproduces that; "random" crops at a random
  position of the 256-short-side image (more variety, not what the authors trained with).
- `occluder_source`: the CVPR 2018 paper takes occluders from "another random image"; the published fork reads
  `data_0` and `data_r` with two sequential readers of the same LMDB (`rand_jump` is declared in its caffe.proto
  but never read), so the n-th puzzle's occluders come from the *same* image. "other_image" (default) uses the next
  image of the shuffled batch; "same_image" reproduces the published code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from jigsawpp.config_fields import refuse_unknown

# data_transformer.cpp@8c7ec09: r' = .8333r + .3333g - .1667b; g' = .3333(r + g + b); b' = -.1667r + .3333g + .8333b,
# written here for BGR channel order (rows: output b, g, r; columns: input b, g, r).
COLOUR_PROJECTION_BGR = ((0.8333, 0.3333, -0.1667),
                         (0.3333, 0.3333, 0.3333),
                         (-0.1667, 0.3333, 0.8333))
GREY_BGR = ((0.3333,) * 3,) * 3  # data_transformer.cpp: g = .3333 r + .3333 g + .3333 b, copied to all channels


@dataclass(frozen=True)
class PuzzleConfig:
    """Puzzle geometry and augmentation; defaults are the authors' (sources in the comments)."""

    resize: int = 256               # generate_jps_dataset.cpp: shorter side -> 256
    crop: int = 255                 # train_val_cfn_jps++.prototxt transform_param.crop_size
    grid: int = 3                   # siamese_size 9 = 3 x 3 cells of crop // 3 = 85 px
    tile: int = 64                  # patch_size 64
    jitter: int = 18                # jitter_size 18 (the 2016 prototxt had 21): offset rand() % 19 in x and y
    channel_shift: int = 2          # data_transformer.cpp: + rand() % 3 per channel
    grey_prob: float = 0.5          # data_transformer.cpp: make_gray = rand() % 10 >= 5
    projection_prob: float = 0.5    # data_transformer.cpp: color_proj = rand() % 2 == 0 (when not grey)
    min_occluders: int = 0          # merge_data_param min_substitute 0; count = rand() % 3 + 0
    max_occluders: int = 2          # merge_data_param max_substitute 3 (exclusive bound of rand() % 3)
    train_crop: Literal["center", "random"] = "center"            # see the module docstring
    occluder_source: Literal["other_image", "same_image"] = "other_image"  # see the module docstring

    def __post_init__(self) -> None:
        if self.crop % self.grid:
            raise ValueError(f"PuzzleConfig: crop {self.crop} is not a multiple of grid {self.grid}.")
        if self.tile + self.jitter + self.channel_shift > self.cell:
            raise ValueError(f"PuzzleConfig: tile {self.tile} + jitter {self.jitter} + channel shift "
                             f"{self.channel_shift} exceeds the {self.cell}-px cell.")
        if not 0 <= self.min_occluders <= self.max_occluders < self.grid ** 2:
            raise ValueError(f"PuzzleConfig: occluders {self.min_occluders}..{self.max_occluders} must lie in "
                             f"0..{self.grid ** 2 - 1}.")
        if self.resize < self.crop:
            raise ValueError(f"PuzzleConfig: resize {self.resize} is smaller than the crop {self.crop}.")
        if self.train_crop not in ("random", "center") or self.occluder_source not in ("other_image", "same_image"):
            raise ValueError(f"PuzzleConfig: train_crop {self.train_crop!r} / occluder_source "
                             f"{self.occluder_source!r}; choose random|center and other_image|same_image.")

    @property
    def cell(self) -> int:
        return self.crop // self.grid

    @property
    def tiles(self) -> int:
        return self.grid ** 2

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PuzzleConfig:
        """Strict: unknown keys are an error naming them."""
        refuse_unknown(cls, data, what="PuzzleConfig key(s)")
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class PuzzleBatch:
    """A batch of puzzles. tiles (B, 9, 3, 64, 64) float32 BGR 0..255 in slot order; labels (B,) int64 permutation
    index; occluded (B, 9) bool (slot holds a tile of the other image); grey / projected (B,) bool colour mode of the
    puzzle's own tiles."""

    tiles: torch.Tensor
    labels: torch.Tensor
    occluded: torch.Tensor
    grey: torch.Tensor
    projected: torch.Tensor

    def to(self, device: torch.device | str) -> PuzzleBatch:
        return PuzzleBatch(*(t.to(device, non_blocking=True) for t in (self.tiles, self.labels, self.occluded,
                                                                       self.grey, self.projected)))

    @property
    def occluder_counts(self) -> torch.Tensor:
        """(B,) int64 number of occluded slots."""
        return self.occluded.sum(dim=1)


def resize_short_side(image_bgr: np.ndarray, size: int = 256) -> np.ndarray:
    """generate_jps_dataset.cpp: shorter side to `size`, longer side `(int)(((float)long / short) * size)`, bilinear.

    image_bgr: (H, W, 3) uint8 -> (h, w, 3) uint8.
    """
    import cv2

    h, w = image_bgr.shape[:2]
    if w <= h:
        new_w, new_h = size, int(np.float32(h) / np.float32(w) * np.float32(size))
    else:
        new_h, new_w = size, int(np.float32(w) / np.float32(h) * np.float32(size))
    if (new_h, new_w) == (h, w):
        return image_bgr
    return cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def puzzle_crop(image_bgr: np.ndarray, *, config: PuzzleConfig | None = None, train: bool,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The 255 x 255 window a puzzle is cut from: (H, W, 3) uint8 BGR -> (crop, crop, 3) uint8.

    Centred (the dataset tool's corner ((w - 255) / 2, (h - 255) / 2)) at test and, by default, at training; at a
    random position at training with `train_crop="random"` (needs `rng`).
    """
    c = config or PuzzleConfig()
    image = resize_short_side(image_bgr, c.resize)
    h, w = image.shape[:2]
    if train and c.train_crop == "random":
        if rng is None:
            raise ValueError("puzzle_crop: a random training crop needs a numpy Generator (rng=...).")
        top, left = int(rng.integers(0, h - c.crop + 1)), int(rng.integers(0, w - c.crop + 1))
    else:
        top, left = (h - c.crop) // 2, (w - c.crop) // 2
    return np.ascontiguousarray(image[top:top + c.crop, left:left + c.crop])


def crops_to_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """A list of (S, S, 3) uint8 HWC windows -> (B, 3, S, S) uint8 CHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))


def _tiles_at(crops: torch.Tensor, cells: torch.Tensor, jitter: torch.Tensor, shift: torch.Tensor,
              c: PuzzleConfig) -> torch.Tensor:
    """Gather tiles: crops (B, 3, S, S); cells (B, K) source cell per slot; jitter (B, K, 2) y/x offsets in the cell;
    shift (B, K, 3, 2) extra y/x offset per channel -> (B, K, 3, tile, tile) float32."""
    batch, k = cells.shape
    device = crops.device
    top = (cells // c.grid) * c.cell                                    # (B, K)
    left = (cells % c.grid) * c.cell
    y0 = (top + jitter[..., 0])[:, :, None] + shift[..., 0]             # (B, K, 3)
    x0 = (left + jitter[..., 1])[:, :, None] + shift[..., 1]
    # every T x T window of every channel as a view (no copy); indexing it copies whole tiles
    windows = crops.unfold(2, c.tile, 1).unfold(3, c.tile, 1)           # (B, 3, S-T+1, S-T+1, T, T)
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    ch = torch.arange(3, device=device).view(1, 1, 3)
    return windows[b, ch, y0, x0].to(torch.float32)


def _colour(tiles: torch.Tensor, grey: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """Apply each puzzle's colour mode to its tiles (B, K, 3, T, T) with one batched 3x3 matrix product."""
    batch = tiles.shape[0]
    eye = torch.eye(3, dtype=torch.float32, device=tiles.device).expand(batch, 3, 3)
    proj = torch.tensor(COLOUR_PROJECTION_BGR, dtype=torch.float32, device=tiles.device).expand(batch, 3, 3)
    mono = torch.tensor(GREY_BGR, dtype=torch.float32, device=tiles.device).expand(batch, 3, 3)
    matrix = torch.where(grey.view(-1, 1, 1), mono, torch.where(projected.view(-1, 1, 1), proj, eye))
    batch, k, _, h, w = tiles.shape
    return torch.matmul(matrix[:, None], tiles.reshape(batch, k, 3, h * w)).view(batch, k, 3, h, w)


def _draw_colour_modes(batch: int, c: PuzzleConfig, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    draws = torch.rand(batch, 2, generator=generator, device=device)
    grey = draws[:, 0] < c.grey_prob
    projected = ~grey & (draws[:, 1] < c.projection_prob)
    return grey, projected


def _draw_offsets(batch: int, k: int, c: PuzzleConfig, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    jitter = torch.randint(0, c.jitter + 1, (batch, k, 2), generator=generator, device=device)
    shift = torch.randint(0, c.channel_shift + 1, (batch, k, 3, 2), generator=generator, device=device)
    return jitter, shift


def _random_subsets(batch: int, n: int, k: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, k): k distinct values of 0..n-1 per row, in random order."""
    return torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)[:, :k]


def make_puzzles(crops: torch.Tensor, perms: torch.Tensor, *, generator: torch.Generator,
                 config: PuzzleConfig | None = None, occluder_crops: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, jitter: bool = True, colour: bool = True,
                 occlusion: bool = True) -> PuzzleBatch:
    """Puzzles from 255 x 255 windows, batched on `crops.device`.

    Args:
        crops: (B, 3, 255, 255) uint8 (or float) BGR windows from `puzzle_crop`.
        perms: (N, 9) int64 0-based permutation set, on the same device.
        generator: a torch.Generator on that device; every random draw comes from it.
        occluder_crops: (B, 3, 255, 255) windows whose tiles occlude puzzle b; default from
            `config.occluder_source`: the next image of the batch (`crops.roll(-1, 0)`) or the same image.
        labels: (B,) permutation indices to use instead of drawing them.
        jitter, colour, occlusion: switch off steps 3, 4, 5 (for tests and figures); defaults are the protocol.
    Returns:
        PuzzleBatch with tiles in 0..255 (see the module docstring for the steps).
    """
    c = config or PuzzleConfig()
    device = crops.device
    batch = crops.shape[0]
    if crops.shape[1:] != (3, c.crop, c.crop):
        raise ValueError(f"make_puzzles: crops must be (B, 3, {c.crop}, {c.crop}), got {tuple(crops.shape)}.")
    if perms.ndim != 2 or perms.shape[1] != c.tiles:
        raise ValueError(f"make_puzzles: perms must be (N, {c.tiles}), got {tuple(perms.shape)}.")
    if labels is None:
        labels = torch.randint(0, perms.shape[0], (batch,), generator=generator, device=device)
    cells = perms.to(device)[labels]                                                # (B, 9) source cell per slot
    zeros = torch.zeros((batch, c.tiles, 3, 2), dtype=torch.long, device=device)
    offsets = _draw_offsets(batch, c.tiles, c, generator, device) if jitter else (zeros[..., 0, :], zeros)
    tiles = _tiles_at(crops, cells, *offsets, c)
    grey, projected = _draw_colour_modes(batch, c, generator, device)
    if not colour:
        grey, projected = torch.zeros_like(grey), torch.zeros_like(projected)
    tiles = _colour(tiles, grey, projected)
    occluded = torch.zeros((batch, c.tiles), dtype=torch.bool, device=device)
    if occlusion and c.max_occluders > 0:
        count = torch.randint(c.min_occluders, c.max_occluders + 1, (batch,), generator=generator, device=device)
        k = c.max_occluders
        slots = _random_subsets(batch, c.tiles, k, generator, device)               # (B, k) slots to replace
        source_cells = _random_subsets(batch, c.tiles, k, generator, device)        # (B, k) cells of the other image
        if occluder_crops is None:
            occluder_crops = crops.roll(-1, dims=0) if c.occluder_source == "other_image" else crops
        other_offsets = _draw_offsets(batch, k, c, generator, device) if jitter else (zeros[:, :k, 0], zeros[:, :k])
        other = _tiles_at(occluder_crops, source_cells, *other_offsets, c)
        other_grey, other_projected = _draw_colour_modes(batch, c, generator, device)
        if colour:
            other = _colour(other, other_grey, other_projected)
        used = torch.arange(k, device=device)[None, :] < count[:, None]             # (B, k)
        rows = torch.arange(batch, device=device)[:, None].expand(batch, k)[used]
        tiles[rows, slots[used]] = other[used]
        occluded[rows, slots[used]] = True
    return PuzzleBatch(tiles=tiles, labels=labels, occluded=occluded, grey=grey, projected=projected)


def assemble(tiles: torch.Tensor, perm: torch.Tensor, *, config: PuzzleConfig | None = None,
             fill: float = 0.0) -> torch.Tensor:
    """Put one puzzle's tiles back at their source cells: tiles (9, 3, T, T), perm (9,) -> (3, G*T, G*T) image
    (slot s goes to cell perm[s]); the inverse of the permutation step, for figures and tests."""
    c = config or PuzzleConfig()
    out = torch.full((3, c.grid * c.tile, c.grid * c.tile), fill, dtype=tiles.dtype, device=tiles.device)
    for slot in range(c.tiles):
        cell = int(perm[slot])
        r, q = divmod(cell, c.grid)
        out[:, r * c.tile:(r + 1) * c.tile, q * c.tile:(q + 1) * c.tile] = tiles[slot]
    return out
