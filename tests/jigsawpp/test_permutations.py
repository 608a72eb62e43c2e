"""Permutation sets: the authors' 2016 file reproduced byte for byte, the greedy maximal property against brute
force, the Jigsaw++ distance rule, the .bin/.npy formats and their errors."""

from __future__ import annotations

import hashlib
import itertools
import struct

import numpy as np
import pytest

from jigsawpp.permutations import (
    PermutationFileError,
    encode_permutations_bin,
    generate_permutations,
    load_permutations,
    matlab_perms_order,
    parse_permutations,
    permutation_stats,
    read_permutation_file,
    remove_close_pairs,
    save_permutations,
)

# MehdiNoroozi/JigsawPuzzleSolver@8c7ec09 permutations_100_max.bin (3,608 bytes): its sha256 and first row (0-based)
AUTHORS_100_SHA256 = "c329e21a1dc7c5df5e0800cab6577285e7fad9e71ac31cab2e5a7914e52975bc"
AUTHORS_100_FIRST = [7, 6, 5, 8, 4, 3, 2, 1, 0]


def _hamming(a, b) -> int:
    return sum(x != y for x, y in zip(a, b))


def test_matlab_perms_order_small_cases():
    # MATLAB's classic recursive perms(1:3): [3 2 1; 3 1 2; 2 3 1; 2 1 3; 1 2 3; 1 3 2]
    assert (matlab_perms_order(3) + 1).tolist() == [[3, 2, 1], [3, 1, 2], [2, 3, 1], [2, 1, 3], [1, 2, 3], [1, 3, 2]]
    for n in (4, 5, 6):
        table = matlab_perms_order(n)
        assert sorted(map(tuple, table.tolist())) == sorted(itertools.permutations(range(n)))
        assert table[0].tolist() == list(range(n - 1, -1, -1))


def test_reproduces_the_authors_2016_set_byte_for_byte():
    perms = generate_permutations(100, min_hamming=0, start=AUTHORS_100_FIRST)
    data = encode_permutations_bin(perms)
    assert len(data) == 3608
    assert hashlib.sha256(data).hexdigest() == AUTHORS_100_SHA256


@pytest.mark.parametrize("tiles,n,min_hamming", [(4, 8, 0), (4, 4, 3), (5, 30, 2), (5, 12, 3), (5, 5, 4)])
def test_greedy_maximal_property_against_brute_force(tiles, n, min_hamming):
    perms = generate_permutations(n, min_hamming=min_hamming, seed=3, tiles=tiles)
    assert perms.shape == (n, tiles) and perms.dtype == np.int64
    rows = [tuple(r) for r in perms.tolist()]
    assert len(set(rows)) == n
    every = list(itertools.permutations(range(tiles)))
    for k in range(1, n):
        chosen = rows[:k]
        eligible = [p for p in every if p not in chosen and all(_hamming(p, q) >= min_hamming for q in chosen)]
        best = max(sum(_hamming(p, q) for q in chosen) for p in eligible)
        assert sum(_hamming(rows[k], q) for q in chosen) == best, f"row {k} is not a maximal choice"
        assert rows[k] in eligible
    assert min(_hamming(a, b) for a, b in itertools.combinations(rows, 2)) >= max(min_hamming, 1)


def test_too_many_for_the_distance_rule_is_a_clear_error():
    # 4 elements: at most 4 permutations are pairwise at distance 4 (a Latin square)
    assert len(generate_permutations(4, min_hamming=4, tiles=4, seed=0)) == 4
    with pytest.raises(ValueError, match="only 4 permutations"):
        generate_permutations(5, min_hamming=4, tiles=4, seed=0)
    with pytest.raises(ValueError, match="n = 0"):
        generate_permutations(0)


def test_jigsawpp_rule_on_nine_tiles_and_determinism():
    a = generate_permutations(150, seed=5)
    assert a.shape == (150, 9)
    distances = (a[:, None, :] != a[None, :, :]).sum(-1)[np.triu_indices(150, 1)]
    stats = permutation_stats(a)
    assert stats.min_distance == distances.min() >= 3
    assert stats.mean_distance == pytest.approx(distances.mean())
    assert sum(stats.histogram) == len(distances) and stats.histogram[:3] == (0, 0, 0)
    assert np.array_equal(a, generate_permutations(150, seed=5))
    assert not np.array_equal(a[0], generate_permutations(1, seed=6)[0])
    # the 2016 rule allows distance 2 (a transposition); the Jigsaw++ rule must have removed those
    assert permutation_stats(generate_permutations(150, min_hamming=0, seed=5)).min_distance == 2


def test_remove_close_pairs_drops_both_rows():
    perms = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [1, 0, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert remove_close_pairs(perms).tolist() == [[8, 7, 6, 5, 4, 3, 2, 1, 0]]


def test_bin_round_trip_is_byte_identical(tmp_path):
    perms = generate_permutations(40, seed=2)
    # an independent writer of the documented format: int32 LE N, 9, then 1-based rows
    expected = struct.pack("<2i", 40, 9) + b"".join(struct.pack("<9i", *(v + 1 for v in row)) for row in perms.tolist())
    path = save_permutations(perms, tmp_path / "perms.bin")
    assert path.read_bytes() == expected
    table = read_permutation_file(path)
    assert table.one_based and table.format == "bin" and np.array_equal(table.perms, perms)
    assert save_permutations(table.perms, tmp_path / "again.bin").read_bytes() == expected


def test_npy_zero_and_one_based(tmp_path):
    perms = generate_permutations(12, seed=4)
    path = save_permutations(perms, tmp_path / "perms.npy")
    assert np.array_equal(np.load(path, allow_pickle=False), perms)
    assert np.array_equal(load_permutations(path), perms)
    np.save(tmp_path / "vissl.npy", (perms + 1).astype(np.int32))
    table = read_permutation_file(tmp_path / "vissl.npy")
    assert table.one_based and "1-based" in table.note and np.array_equal(table.perms, perms)


def _bin(rows, count=None, width=9) -> bytes:
    rows = np.asarray(rows)
    return struct.pack("<2i", len(rows) if count is None else count, width) + rows.astype("<i4").tobytes()


@pytest.mark.parametrize("data,match", [
    (_bin([[1, 2, 3, 4, 5, 6, 7, 8, 9]], count=2), "truncated"),
    (_bin([[1, 2, 3, 4, 5, 6, 7, 8, 9]])[:-4], "truncated"),
    (_bin([[1, 2, 3, 4, 5, 6, 7, 8]], width=8), r"\[1, 8\]"),
    (_bin([[0, 1, 2, 3, 4, 5, 6, 7, 8]]), "1-based tile indices 1..9"),
    (_bin([[1, 2, 3, 4, 5, 6, 7, 9, 10]]), "1-based"),
    (_bin([[1, 1, 3, 4, 5, 6, 7, 8, 9]]), "row 0 .* is not a permutation"),
    (_bin([[1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9]]),
     "row 0 .* appears 2 times"),
    (b"\x01\x00", "2 bytes"),
])
def test_bad_bin_files_name_the_problem(data, match):
    with pytest.raises(PermutationFileError, match=match):
        parse_permutations(data, source="bad.bin", fmt="bin")


def test_bad_npy_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([[1, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(PermutationFileError, match="not a permutation file.*saved without pickling"):
        load_permutations(tmp_path / "objects.npy")
    np.save(tmp_path / "shape.npy", np.arange(16).reshape(2, 8))
    with pytest.raises(PermutationFileError, match=r"shape \(N, 9\)"):
        load_permutations(tmp_path / "shape.npy")
    np.save(tmp_path / "base.npy", np.arange(2, 11).reshape(1, 9))
    with pytest.raises(PermutationFileError, match="0..8 .* or 1..9"):
        load_permutations(tmp_path / "base.npy")
    with pytest.raises(PermutationFileError, match="no such permutation file"):
        load_permutations(tmp_path / "missing.bin")
