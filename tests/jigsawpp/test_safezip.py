"""Malicious and broken archives are refused with an error naming the member, and nothing is written."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zipfile

import pytest

from jigsawpp.release import convert_release, inspect_release
from jigsawpp.safezip import ArchiveError, SafeZip, UnsafeArchiveError, ZipLimits


def _zip(path, entries, *, compression=zipfile.ZIP_DEFLATED):
    """entries: (ZipInfo or name, bytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(path, "w", compression) as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return path


def _symlink(name: str, target: bytes):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


def _encrypted(path):
    """A member whose general-purpose flag says 'encrypted' (bit 0, local and central headers)."""
    data = bytearray(_zip(io.BytesIO(), [("a.caffemodel", b"secret")]).getvalue())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + offset] |= 0x1
    path.write_bytes(bytes(data))
    return path


def _overlapping(path):
    """Two central-directory entries pointing at the same local header (Fifield's overlapping-file bomb)."""
    data = _zip(io.BytesIO(), [("a.txt", b"x" * 1000)]).getvalue()
    eocd = data.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12:eocd + 20])
    record = data[cd_offset:cd_offset + cd_size]
    twin = record.replace(b"a.txt", b"b.txt")
    end = bytearray(data[eocd:])
    struct.pack_into("<HHI", end, 8, 2, 2, 2 * cd_size)
    path.write_bytes(data[:cd_offset] + record + twin + bytes(end))
    return path


CASES = {
    "traversal": (lambda p: _zip(p, [("model/../../evil.caffemodel", b"x")]), "escapes the archive folder"),
    "traversal_backslash": (lambda p: _zip(p, [("..\\evil.txt", b"x")]), "escapes the archive folder"),
    "absolute": (lambda p: _zip(p, [("/abs/evil.prototxt", b"x")]), "absolute path"),
    "absolute_drive": (lambda p: _zip(p, [("C:/evil.prototxt", b"x")]), "absolute path"),
    "symlink": (lambda p: _zip(p, [_symlink("jigsawpp/deploy.prototxt", b"/etc/passwd")]), "symbolic link"),
    "bomb_ratio": (lambda p: _zip(p, [("train.txt", bytes(32 << 20))]), r"expands \d+:1"),
    "overlap": (_overlapping, "share compressed data"),
    "duplicate": (lambda p: _zip(p, [("a.txt", b"1"), ("a.txt", b"2")]), "appears twice"),
    "encrypted": (_encrypted, "encrypted"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malicious_archive_is_refused(tmp_path, case):
    make, message = CASES[case]
    path = make(tmp_path / f"{case}.zip")
    with pytest.raises(UnsafeArchiveError, match=message) as err:
        SafeZip(path)
    assert path.name in str(err.value)
    out = tmp_path / "out" / "converted"
    with pytest.raises(UnsafeArchiveError, match=message):
        convert_release(path, out)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_total_size_and_member_count_limits(tmp_path):
    path = _zip(tmp_path / "big.zip", [(f"part{i}.bin", os.urandom(3 << 20)) for i in range(3)],
                compression=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match=r"more than 0.01 GiB uncompressed .*part\d.bin"):
        inspect_release(path, limits=ZipLimits(max_total_bytes=8 << 20))
    with pytest.raises(UnsafeArchiveError, match="3 entries, over the limit of 2"):
        SafeZip(path, ZipLimits(max_members=2))
    SafeZip(path).close()


def test_small_members_may_compress_well(tmp_path):
    path = _zip(tmp_path / "ok.zip", [("val.txt", b"0\n" * 200_000)])  # 400 kB of text, ratio > 200
    with SafeZip(path) as archive:
        assert archive.read("val.txt") == b"0\n" * 200_000


def test_corrupt_member_is_an_archive_error(tmp_path):
    path = _zip(tmp_path / "crc.zip", [("deploy.prototxt", b"layer { name: 'x' }" * 100)],
                compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the stored data
    path.write_bytes(bytes(data))
    with SafeZip(path) as archive, pytest.raises(ArchiveError, match="'deploy.prototxt' cannot be read"):
        archive.read("deploy.prototxt")


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(b"<html>404</html>")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        inspect_release(path)
