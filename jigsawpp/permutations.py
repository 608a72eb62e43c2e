"""Permutation sets of the jigsaw task: generation, the authors' file format, statistics.

Generation is Algorithm 1 of Noroozi & Favaro, *Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles* (ECCV 2016), "maximal" variant: start from a random permutation, then repeatedly add the remaining
permutation whose summed Hamming distance to the ones chosen so far is largest. Jigsaw++ (Noroozi et al., CVPR
2018, Sec. 3) adds the rule that any two permutations differ in at least 3 positions, so that a puzzle with up to
2 occluded tiles keeps a unique solution; `min_hamming` enforces it during the selection (candidates closer than
`min_hamming` to a chosen permutation are never chosen).

Ties are broken exactly as the authors' MATLAB generator did, which makes their files reproducible:
- candidates are enumerated in the order of MATLAB's classic recursive `perms(1:9)` (`matlab_perms_order`);
- the distance is MATLAB's `pdist2(..., 'hamming')`, the *fraction* d/9 of differing positions, as float64, summed
  in the order the permutations were chosen;
- the first candidate with the largest float sum wins (`max` returns the first index).
With these three facts, `generate_permutations(100, min_hamming=0, start=<its first row>)` reproduces the authors'
`permutations_100_max.bin` (MehdiNoroozi/JigsawPuzzleSolver@8c7ec09) byte for byte; integer sums or another
candidate order do not (they pick other permutations from the ties after the first nine).

About `permutations_701.bin` (Jigsaw++, same repository, commit d18dace; 701 rows, minimum distance 3, mean
7.999, no identity): is it the 2016 algorithm's 1000-set with the close pairs removed? What we can establish:
- its first 14 rows are exactly rows 0-3 and 5-14 of this generator's 1000-set started from its first row (2016
  rule, no distance constraint), with the float tie-breaking above; a random set would share none of them. Row 4 of
  that set, at distance 9 from rows 0-3, is missing: a rule applied *while* choosing would have kept it, so the file
  was filtered after generation;
- after row 14 the sequences part (22 of the 701 rows are in our 1000-set), most likely because a tie among
  equal sums was broken differently (MATLAB's summation order differs between versions); the authors' generator
  script is not in the repository (only its outputs), so this cannot be checked further;
- the mean distance matches Table 1 of the 2016 paper (8.00 for 1000 "maximal" permutations); our 1000-set from
  the same start has mean 8.008, minimum 2, and removing both rows of every pair closer than 3 leaves 683 rows
  (keeping the first of each pair leaves 854), the same order as 701.
So the evidence supports "the 2016 1000-set with close pairs removed", though the exact 1000-set cannot be rebuilt.
`generate_permutations` applies the Jigsaw++ rule while choosing, as the CVPR 2018 paper describes it, and always
returns the requested count; `remove_close_pairs` is the after-the-fact construction.

Files: the authors' binary format (`data_transformer.cpp`: `fread` of an int32 header [N, 9], then N*9 int32
1-based indices, `hashes_[i] -= 1`) for a `.bin` suffix, NumPy `.npy` otherwise (VISSL's copies of the authors' sets
are .npy files that may be 0- or 1-based: both are read, and the base is reported).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TILES = 9                      # 3x3 puzzle (Noroozi & Favaro 2016)
JIGSAWPP_MIN_HAMMING = 3       # CVPR 2018 Sec. 3: "minimum Hamming distance between any two permutations is 3"
BIN_HEADER_WIDTH = 9           # the .bin header's second int32 (row width)


class PermutationFileError(ValueError):
    """A permutation file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class PermutationStats:
    """Pairwise Hamming statistics of a set; distances count differing positions (0..tiles)."""

    count: int
    tiles: int
    min_distance: int          # over distinct pairs; tiles + 1 when count < 2 (no pair)
    mean_distance: float       # over distinct pairs; 0.0 when count < 2
    has_identity: bool
    histogram: tuple[int, ...]  # number of pairs at distance 0..tiles


@dataclass(frozen=True)
class PermutationTable:
    """A parsed permutation file: `perms` (N, tiles) int64, 0-based (slot s shows source cell perms[i, s])."""

    perms: np.ndarray
    source: str
    format: str                # "bin" (the authors' format) or "npy"
    one_based: bool            # how the file stored the indices (the .bin format is always 1-based)
    note: str                  # what was detected, for the user


def matlab_perms_order(tiles: int = TILES) -> np.ndarray:
    """All permutations of 0..tiles-1 (shape (tiles!, tiles), int8) in the row order of MATLAB's classic `perms`.

    MATLAB's recursive `perms(1:n)` puts `[n, perms(1:n-1)]` first, then for i = n-1 down to 1 the block
    `[i, perms(1:n-1) with i replaced by n]`. It is not plain reverse-lexicographic order (for n = 3 it gives
    321, 312, 231, 213, 123, 132), and the authors' generator broke ties in this order.
    """
    if not 1 <= tiles <= 10:
        raise ValueError(f"tiles = {tiles}: permutation tables are built for 1..10 elements.")
    table = np.ones((1, 1), dtype=np.int8)
    for n in range(2, tiles + 1):
        blocks = [np.hstack([np.full((len(table), 1), n, np.int8), table])]
        for i in range(n - 1, 0, -1):
            swapped = np.where(table == i, np.int8(n), table)
            blocks.append(np.hstack([np.full((len(table), 1), i, np.int8), swapped]))
        table = np.vstack(blocks)
    return table - 1


def generate_permutations(n: int, *, min_hamming: int = JIGSAWPP_MIN_HAMMING, seed: int = 0, tiles: int = TILES,
                          start: np.ndarray | list[int] | None = None) -> np.ndarray:
    """The maximal-Hamming permutation set (Algorithm 1 of Noroozi & Favaro 2016) with the Jigsaw++ distance rule.

    Args:
        n: number of permutations.
        min_hamming: every pair differs in at least this many positions (3 for Jigsaw++; 0 or 2 for the 2016 rule,
            where any two distinct permutations already differ in >= 2 positions).
        seed: draws the first permutation uniformly (numpy default_rng), as the algorithm's `j ~ U[1, 9!]`.
        tiles: number of puzzle tiles (9; small values are for tests).
        start: the first permutation (0-based), instead of drawing it.

    Returns:
        (n, tiles) int64, 0-based; row order is the selection order. Deterministic given the arguments.
    Raises:
        ValueError: when fewer than n permutations satisfy the distance rule (the message gives how many did).
    """
    candidates = matlab_perms_order(tiles)
    total = len(candidates)
    if n < 1 or n > total:
        raise ValueError(f"n = {n}: choose 1..{total} permutations of {tiles} tiles.")
    if min_hamming < 0 or min_hamming > tiles:
        raise ValueError(f"min_hamming = {min_hamming}: must be in 0..{tiles}.")
    # rows of `candidates` having value v at position p: the distance update is 9 scatters, not a 9! x 9 compare
    by_value = [[np.flatnonzero(candidates[:, p] == v) for v in range(tiles)] for p in range(tiles)]
    fraction = np.arange(tiles + 1, dtype=np.float64) / tiles  # pdist2 'hamming' values d / tiles
    if start is None:
        current = int(np.random.default_rng(seed).integers(total))
    else:
        current = _index_of(candidates, np.asarray(start))
    score = np.zeros(total, dtype=np.float64)   # -inf marks chosen or too-close candidates
    chosen = [current]
    agreement = np.empty(total, dtype=np.int8)
    while True:
        agreement.fill(0)
        perm = candidates[current]
        for p in range(tiles):
            agreement[by_value[p][perm[p]]] += 1
        distance = tiles - agreement
        score += fraction[distance]
        score[distance < max(min_hamming, 1)] = -np.inf
        if len(chosen) == n:
            break
        current = int(np.argmax(score))
        if score[current] == -np.inf:
            raise ValueError(f"only {len(chosen)} permutations of {tiles} tiles keep a pairwise Hamming distance >= "
                             f"{min_hamming} with this start; ask for fewer or lower --min-hamming.")
        chosen.append(current)
    return candidates[np.asarray(chosen)].astype(np.int64)


def _index_of(candidates: np.ndarray, perm: np.ndarray) -> int:
    tiles = candidates.shape[1]
    if perm.shape != (tiles,) or sorted(perm.tolist()) != list(range(tiles)):
        raise ValueError(f"start {perm.tolist()} is not a 0-based permutation of {tiles} elements.")
    return int(np.flatnonzero((candidates == perm).all(axis=1))[0])


def hamming_matrix(perms: np.ndarray) -> np.ndarray:
    """(N, N) int64 number of differing positions between every pair of rows."""
    perms = np.asarray(perms)
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=-1)


def permutation_stats(perms: np.ndarray) -> PermutationStats:
    """Pairwise Hamming statistics of an (N, tiles) set (O(N^2) memory: fine for thousands of rows)."""
    perms = np.asarray(perms)
    count, tiles = perms.shape
    distances = hamming_matrix(perms)[np.triu_indices(count, 1)]
    histogram = np.bincount(distances, minlength=tiles + 1)
    return PermutationStats(
        count=count, tiles=tiles,
        min_distance=int(distances.min()) if count > 1 else tiles + 1,
        mean_distance=float(distances.mean()) if count > 1 else 0.0,
        has_identity=bool((perms == np.arange(tiles)).all(axis=1).any()),
        histogram=tuple(int(v) for v in histogram),
    )


def remove_close_pairs(perms: np.ndarray, *, min_hamming: int = JIGSAWPP_MIN_HAMMING) -> np.ndarray:
    """Drop every row that is closer than `min_hamming` to some other row (both rows of a close pair go), keeping
    the order: one way to turn a 2016 set into a Jigsaw++ set after the fact (see the module docstring)."""
    perms = np.asarray(perms)
    distances = hamming_matrix(perms)
    np.fill_diagonal(distances, perms.shape[1])
    return perms[(distances >= min_hamming).all(axis=1)]


# -- files ------------------------------------------------------------------------------------------------------------

def parse_permutations(data: bytes, *, source: str = "<bytes>", fmt: str | None = None) -> PermutationTable:
    """Parse a permutation file's bytes; `fmt` "bin" or "npy" (None: npy when the NumPy magic is present).

    Raises PermutationFileError naming `source` for: a size that does not match the header, a header that is not
    [N, 9], values outside 1..9 (.bin) or a base other than 0/1 (.npy), rows that are not permutations, duplicate rows.
    """
    if fmt is None:
        fmt = "npy" if data.startswith(b"\x93NUMPY") else "bin"
    if fmt == "bin":
        if len(data) < 8:
            raise PermutationFileError(f"{source}: {len(data)} bytes; the authors' permutation format starts with an "
                                       "int32 header [N, 9].")
        count, width = (int(v) for v in np.frombuffer(data[:8], "<i4"))
        if width != BIN_HEADER_WIDTH or count < 1:
            raise PermutationFileError(f"{source}: header [N, width] = [{count}, {width}]; expected [N >= 1, 9] "
                                       "(int32 little-endian). Is it a permutation file?")
        expected = 8 + 4 * count * width
        if len(data) != expected:
            raise PermutationFileError(f"{source}: {len(data)} bytes, but the header [{count}, 9] needs {expected} "
                                       "(8-byte header + N*9 int32); the file is truncated or not in this format.")
        table = np.frombuffer(data[8:], "<i4").reshape(count, width).astype(np.int64)
        if table.min() < 1 or table.max() > width:
            raise PermutationFileError(f"{source}: values {table.min()}..{table.max()}; the .bin format stores 1-based "
                                       "tile indices 1..9.")
        table = table - 1
        one_based, note = True, "authors' .bin format (1-based on disk)"
    elif fmt == "npy":
        try:
            table = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:  # numpy's own text suggests unpickling, which is never done with a user's file
            raise PermutationFileError(f"{source}: not a permutation file: expected the authors' .bin format "
                                       "(int32 header [N, 9], then N x 9 1-based indices) or a .npy integer array "
                                       "of shape (N, 9) saved without pickling.") from None
        if table.ndim != 2 or table.shape[1] != TILES or table.shape[0] < 1 or not np.issubdtype(table.dtype,
                                                                                               np.integer):
            raise PermutationFileError(f"{source}: array {table.dtype} {table.shape}; expected integers of shape "
                                       "(N, 9).")
        table = table.astype(np.int64)
        base = int(table.min())
        if base not in (0, 1) or int(table.max()) != base + TILES - 1:
            raise PermutationFileError(f"{source}: values {table.min()}..{table.max()}; expected 0..8 (0-based) or "
                                       "1..9 (1-based).")
        one_based = base == 1
        note = ("npy, 1-based indices (as the authors' .bin): converted to 0-based" if one_based else
                "npy, 0-based indices")
        table = table - base
    else:
        raise ValueError(f"unknown permutation file format {fmt!r}; use 'bin' or 'npy'.")
    _check_rows(table, source)
    return PermutationTable(np.ascontiguousarray(table), source, fmt, one_based, note)


def _check_rows(table: np.ndarray, source: str) -> None:
    tiles = table.shape[1]
    bad = np.flatnonzero((np.sort(table, axis=1) != np.arange(tiles)).any(axis=1))
    if len(bad):
        row = bad[0]
        raise PermutationFileError(f"{source}: row {row} ({table[row].tolist()}, 0-based) is not a permutation of "
                                   f"0..{tiles - 1}; {len(bad)} such row(s).")
    _, first, counts = np.unique(table, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = int(first[np.argmax(counts > 1)])
        raise PermutationFileError(f"{source}: row {dup} ({table[dup].tolist()}) appears {int(counts.max())} times; "
                                   "a permutation set holds distinct permutations (labels would be ambiguous).")


def read_permutation_file(path: str | os.PathLike[str]) -> PermutationTable:
    """Read a permutation file: the authors' format for a `.bin` suffix, NumPy `.npy` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PermutationFileError(f"{path}: no such permutation file.")
    return parse_permutations(path.read_bytes(), source=str(path), fmt="bin" if path.suffix == ".bin" else "npy")


def load_permutations(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, 9) int64, 0-based permutations from a `.bin` (the authors' format) or `.npy` file."""
    return read_permutation_file(path).perms


def encode_permutations_bin(perms: np.ndarray) -> bytes:
    """The authors' format: int32 LE header [N, 9], then N*9 int32 1-based indices, row-major."""
    perms = _validated(perms)
    header = np.asarray(perms.shape, dtype="<i4")
    return header.tobytes() + (perms + 1).astype("<i4").tobytes()


def save_permutations(perms: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write (N, 9) 0-based permutations: the authors' `.bin` format for a `.bin` suffix (byte-identical to theirs
    for the same rows), otherwise a 0-based int64 `.npy` at exactly `path`. Written atomically."""
    from jigsawpp.io import write_bytes_atomic

    path = Path(path)
    if path.suffix == ".bin":
        payload = encode_permutations_bin(perms)
    else:
        buffer = io.BytesIO()
        np.save(buffer, _validated(perms).astype(np.int64), allow_pickle=False)
        payload = buffer.getvalue()
    return write_bytes_atomic(path, payload)


def _validated(perms: np.ndarray) -> np.ndarray:
    table = np.asarray(perms)
    if table.ndim != 2 or table.shape[1] != TILES or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"permutations must be integers of shape (N, 9), got {table.dtype} {table.shape}.")
    table = table.astype(np.int64)
    _check_rows(table, "permutations to save")
    return table
