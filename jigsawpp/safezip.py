"""Read untrusted zip archives (the authors' release zips, or anything a user passes) without extracting them.

Nothing is ever written to disk from here: members are validated when the archive is opened and then read into
memory by name. Refused, each with an error naming the archive and the member:

* absolute names (`/etc/x`, `C:\\x`, `\\\\server\\x`) and `..` components (path traversal, "zip slip");
* symbolic links and other special files (Unix mode in the high 16 bits of `external_attr`);
* encrypted members, duplicate names, NUL bytes in names;
* zip bombs: more than `max_members` entries, a declared total over `max_total_bytes`, a member expanding more
  than `max_ratio` times its compressed size, and members whose data overlap (the overlapping-file construction
  of Fifield's "A better zip bomb", which no honest archiver writes);
* sizes are not taken on trust: reading counts the bytes actually produced and stops at the declared size, and
  the CRC is checked at the end (Python's `zipfile`), so a lying header ends in an error, not in a flood.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes (APPNOTE 4.3.7)


class ArchiveError(ValueError):
    """An archive that cannot be read (not a zip, corrupt member)."""


class UnsafeArchiveError(ArchiveError):
    """An archive refused for safety: path traversal, absolute path, link, bomb."""


@dataclass(frozen=True)
class ZipLimits:
    """Safety limits; the defaults leave room for the largest release zip (a ~250 MB caffemodel plus label lists)."""

    max_members: int = 10_000             # the release zips hold a handful of files
    max_total_bytes: int = 8 * 2**30      # declared uncompressed total
    max_ratio: float = 200.0              # uncompressed / compressed for one member; float32 weights barely compress
    ratio_floor_bytes: int = 1 << 20      # small members (text, headers) may compress better than max_ratio


@dataclass(frozen=True)
class Member:
    """One regular file of the archive."""

    name: str              # the stored name, validated ('/' separated, relative, no '..')
    size: int              # declared uncompressed size (enforced while reading)
    compressed_size: int

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def folder(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""


def _check_name(archive: str, name: str) -> str:
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a NUL byte in its name; refusing the archive.")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing the archive (a safe "
                                 "release zip only holds relative names).")
    if ".." in unified.split("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the archive folder with '..' (path "
                                 "traversal); refusing the archive.")
    return unified


class SafeZip:
    """A validated, read-only view of a zip archive: `members`, `read(name)`, `head(name)`, `sha256(name)`."""

    def __init__(self, path: str | os.PathLike[str], limits: ZipLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ZipLimits()
        label = self.path.name
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ArchiveError(f"{self.path}: no such file.") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveError(f"{self.path}: not a readable zip archive ({exc}).") from None
        try:
            self._infos = self._validate(label)
        except BaseException:
            self._zip.close()
            raise
        self.members: tuple[Member, ...] = tuple(
            Member(name, info.file_size, info.compress_size) for name, info in self._infos.items())

    def _validate(self, label: str) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        lim = self.limits
        if len(infos) > lim.max_members:
            raise UnsafeArchiveError(f"{label}: {len(infos)} entries, over the limit of {lim.max_members}; refusing "
                                     "the archive (a release zip holds a handful of files).")
        out: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = _check_name(label, info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise UnsafeArchiveError(f"{label}: member {info.filename!r} is a symbolic link; refusing the "
                                         "archive (links can point outside the output folder).")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{label}: member {info.filename!r} is a special file (mode {oct(mode)}); "
                                         "refusing the archive.")
            if info.flag_bits & 0x1:
                raise UnsafeArchiveError(f"{label}: member {info.filename!r} is encrypted; decrypt the archive first.")
            if info.is_dir() or kind == stat.S_IFDIR:
                continue
            if name in out:
                raise UnsafeArchiveError(f"{label}: member {info.filename!r} appears twice; refusing an ambiguous "
                                         "archive.")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > lim.ratio_floor_bytes and ratio > lim.max_ratio:
                raise UnsafeArchiveError(
                    f"{label}: member {info.filename!r} expands {ratio:.0f}:1 ({info.compress_size} -> "
                    f"{info.file_size} bytes), over the limit of {lim.max_ratio:.0f}:1 (zip bomb?); refusing the "
                    "archive.")
            total += info.file_size
            if total > lim.max_total_bytes:
                raise UnsafeArchiveError(
                    f"{label}: the members add up to more than {lim.max_total_bytes / 2**30:.2f} GiB uncompressed "
                    f"(limit reached at {info.filename!r}; zip bomb?); refusing the archive.")
            out[name] = info
        self._check_overlap(label, list(out.values()))
        return out

    def _check_overlap(self, label: str, infos: list[zipfile.ZipInfo]) -> None:
        """Each member's data must end before the next local header starts."""
        spans = []
        with open(self.path, "rb") as handle:
            for info in infos:
                handle.seek(info.header_offset)
                raw = handle.read(_LOCAL_HEADER.size)
                if len(raw) < _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
                    raise ArchiveError(f"{label}: member {info.filename!r} has no local header at offset "
                                       f"{info.header_offset}; the archive is corrupt.")
                fields = _LOCAL_HEADER.unpack(raw)
                data_start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
                spans.append((info.header_offset, data_start + info.compress_size, info.filename))
        spans.sort()
        for (_, end, name), (start, _, next_name) in zip(spans, spans[1:]):
            if end > start:
                raise UnsafeArchiveError(f"{label}: members {name!r} and {next_name!r} share compressed data "
                                         "(overlapping entries, a zip bomb construction); refusing the archive.")

    # -- reading -----------------------------------------------------------------------------------------------------
    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"{self.path.name}: no member {name!r}")

    def iter_bytes(self, name: str, *, limit: int | None = None) -> Iterator[bytes]:
        """The member's bytes in chunks, counted against the declared size (and `limit`, when given)."""
        info = self._infos[name]
        cap = info.file_size if limit is None else min(limit, info.file_size)
        produced = 0
        try:
            with self._zip.open(info) as handle:
                while produced < cap:
                    chunk = handle.read(min(_CHUNK, cap - produced))
                    if not chunk:
                        break
                    produced += len(chunk)
                    yield chunk
                if limit is None and handle.read(1):
                    raise UnsafeArchiveError(f"{self.path.name}: member {name!r} holds more data than its declared "
                                             f"{info.file_size} bytes; refusing the archive.")
        except (zipfile.BadZipFile, EOFError, NotImplementedError, OSError) as exc:
            raise ArchiveError(f"{self.path.name}: member {name!r} cannot be read ({exc}); the archive is corrupt or "
                               "uses an unsupported compression.") from None
        if limit is None and produced != info.file_size:
            raise ArchiveError(f"{self.path.name}: member {name!r} ends after {produced} of its declared "
                               f"{info.file_size} bytes; the archive is truncated or corrupt.")

    def read(self, name: str) -> bytes:
        return b"".join(self.iter_bytes(name))

    def head(self, name: str, n: int = 4096) -> bytes:
        """The first `n` bytes (content sniffing)."""
        return b"".join(self.iter_bytes(name, limit=n))

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.iter_bytes(name):
            digest.update(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
