"""Figures of the pretext task: puzzles as the network sees them (the paper's Figure of Jigsaw++ puzzles) and the
training curve. matplotlib with the Agg backend; files are written atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jigsawpp.puzzle import PuzzleBatch, PuzzleConfig, assemble


@dataclass(frozen=True)
class PuzzleFigure:
    path: Path
    puzzles: int
    labels: list[int]
    occluded_slots: list[list[int]]


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    return image[..., ::-1]


def _tile_image(tile: torch.Tensor) -> np.ndarray:
    """(3, T, T) BGR float 0..255 (after colour projection values may leave the range) -> (T, T, 3) RGB 0..1."""
    array = tile.detach().cpu().numpy().transpose(1, 2, 0)
    return np.clip(_bgr_to_rgb(array) / 255.0, 0.0, 1.0)


def draw_puzzles(crops: torch.Tensor, batch: PuzzleBatch, perms: torch.Tensor, path: str | os.PathLike[str], *,
                 config: PuzzleConfig | None = None, titles: list[str] | None = None) -> PuzzleFigure:
    """One row per puzzle: the 255 x 255 crop with its 3x3 cells, the 9 tiles in slot order (what the network
    sees; occluding tiles framed in red), and the tiles put back at their source cells by the label's permutation
    (occluders marked with a red cross over the cell they hide).

    crops: (B, 3, 255, 255) uint8 BGR; batch: the puzzles made from them; perms: (N, 9) 0-based.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from jigsawpp.io import write_atomic

    c = config or PuzzleConfig()
    n = crops.shape[0]
    fig = plt.figure(figsize=(12, 3.3 * n))
    grid = fig.add_gridspec(n, 3, width_ratios=[1, 1.1, 1], wspace=0.12, hspace=0.25)
    labels, occluded = [], []
    for row in range(n):
        label = int(batch.labels[row])
        perm = perms[label].cpu()
        slots = [int(s) for s in torch.nonzero(batch.occluded[row]).flatten()]
        labels.append(label)
        occluded.append(slots)
        mode = "grey" if bool(batch.grey[row]) else ("colour-projected" if bool(batch.projected[row]) else "colour")
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(_bgr_to_rgb(crops[row].cpu().numpy().transpose(1, 2, 0)))
        for k in range(1, c.grid):
            ax.axhline(k * c.cell - 0.5, color="white", lw=1)
            ax.axvline(k * c.cell - 0.5, color="white", lw=1)
        ax.set_title(titles[row] if titles else "crop (3x3 cells of 85 px)", fontsize=9)
        ax.axis("off")
        sub = grid[row, 1].subgridspec(c.grid, c.grid, wspace=0.05, hspace=0.05)
        for slot in range(c.tiles):
            tax = fig.add_subplot(sub[slot // c.grid, slot % c.grid])
            tax.imshow(_tile_image(batch.tiles[row, slot]))
            tax.set_xticks([])
            tax.set_yticks([])
            colour = "red" if slot in slots else "black"
            for spine in tax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if slot in slots else 0.5)
            if slot == 1:
                tax.set_title(f"slots: permutation {label}, {mode}, {len(slots)} occluded", fontsize=9)
        ax = fig.add_subplot(grid[row, 2])
        ax.imshow(_tile_image(assemble(batch.tiles[row], perm, config=c, fill=255.0)))
        for slot in slots:
            r, q = divmod(int(perm[slot]), c.grid)
            ax.add_patch(Rectangle((q * c.tile - 0.5, r * c.tile - 0.5), c.tile, c.tile, fill=False,
                                   edgecolor="red", lw=2))
            ax.plot([q * c.tile, (q + 1) * c.tile - 1], [r * c.tile, (r + 1) * c.tile - 1], color="red", lw=1.5)
        ax.set_title("solved: tiles at their cells (red: occluded)", fontsize=9)
        ax.axis("off")
    path = Path(path)
    try:
        write_atomic(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=90,
                                                      bbox_inches="tight"))
    finally:
        plt.close(fig)
    return PuzzleFigure(path, n, labels, occluded)


def show_puzzles(images: list[str | os.PathLike[str]], path: str | os.PathLike[str], *, perms: np.ndarray,
                 per_image: int = 2, seed: int = 0, train: bool = True,
                 config: PuzzleConfig | None = None) -> PuzzleFigure:
    """Draw `per_image` puzzles of each image (`draw_puzzles`). Occluders come from the next image in the list
    (from the image itself when there is only one). Crops and puzzles are seeded by `seed`."""
    from jigsawpp.data import read_image_bgr
    from jigsawpp.puzzle import crops_to_tensor, make_puzzles, puzzle_crop

    if not images:
        raise ValueError("show_puzzles: give at least one image.")
    c = config or PuzzleConfig()
    decoded = [read_image_bgr(p) for p in images]
    rng = np.random.default_rng(seed)
    crops, others, titles = [], [], []
    for i, image in enumerate(decoded):
        other = decoded[(i + 1) % len(decoded)]
        for k in range(per_image):
            crops.append(puzzle_crop(image, config=c, train=train, rng=rng))
            others.append(puzzle_crop(other, config=c, train=train, rng=rng))
            titles.append(f"{Path(images[i]).name} (puzzle {k + 1})")
    crop_tensor = crops_to_tensor(crops)
    table = torch.from_numpy(np.asarray(perms, dtype=np.int64))
    batch = make_puzzles(crop_tensor, table, generator=torch.Generator().manual_seed(seed), config=c,
                         occluder_crops=crops_to_tensor(others))
    return draw_puzzles(crop_tensor, batch, table, path, config=c, titles=titles)


def accuracy_by_occluders(record: dict) -> dict[int, float]:
    """{k: accuracy on puzzles with k occluders} of a training-log record (`hit_occ<k>` / `share_occ<k>`)."""
    out = {}
    for key, share in record.items():
        if key.startswith("share_occ") and share > 0:
            k = int(key[len("share_occ"):])
            out[k] = record.get(f"hit_occ{k}", 0.0) / share
    return out


def plot_pretext_curve(log_path: str | os.PathLike[str], path: str | os.PathLike[str], *,
                       config: PuzzleConfig | None = None, chance: float | None = None) -> Path:
    """Training loss (left) and puzzle accuracy overall and by number of occluders (right) against iterations,
    from the run's train_log.jsonl."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jigsawpp.engine.plots import read_log
    from jigsawpp.io import write_atomic

    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} has no records to plot.")
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    its = [r["iteration"] for r in records]
    left.plot(its, [r["loss"] for r in records], label="loss")
    left.set_xlabel("iteration")
    left.set_ylabel("softmax loss")
    left.grid(True, alpha=0.3)
    right.plot(its, [r["accuracy"] for r in records], color="black", label="all puzzles")
    ks = sorted({k for r in records for k in accuracy_by_occluders(r)})
    for k in ks:
        points = [(r["iteration"], accuracy_by_occluders(r)[k]) for r in records if k in accuracy_by_occluders(r)]
        right.plot([p[0] for p in points], [p[1] for p in points], label=f"{k} occluder{'s' if k != 1 else ''}")
    if chance is not None:
        right.axhline(chance, color="grey", ls=":", label="chance")
    right.set_xlabel("iteration")
    right.set_ylabel("puzzle accuracy (training batches)")
    right.set_ylim(0, 1)
    right.grid(True, alpha=0.3)
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Jigsaw++ pretext training: {Path(log_path).parent.name}")
    fig.tight_layout()
    return write_atomic(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=100))
