"""Pseudo-label files: read whatever a release zip holds, write one documented format.

The release page says each zip holds "the Imagenet pseudo labels of both train and validation sets" without the
format. Caffe's `ImageData` layer reads list files of lines `path label`, splitting at the LAST space so paths may
contain spaces (BVLC `src/caffe/layers/image_data_layer.cpp`), and that is the first format we try; we also accept
tab- or comma-separated lists (with or without a header row), one label per line (no paths), `.npy` arrays and
`.npz` archives, and gzip-compressed text. Whatever was parsed is described in `PseudoLabels.format`.

Output: `{split}.npz` with `names` (str, the image path as in the list; the row number when the file had no paths)
and `labels` (int32 cluster id).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
MAX_DECOMPRESSED = 4 * 2**30   # a 1.28M-line ImageNet list is ~60 MB; anything near this is a bomb
_LABEL_KEYS = ("labels", "label", "pseudo_labels", "clusters", "cluster", "y", "targets")
_NAME_KEYS = ("names", "name", "paths", "path", "files", "images", "image")
_INT = re.compile(r"^[+-]?\d+$")


class LabelFileError(ValueError):
    """A file that looked like a label list but cannot be parsed as one."""


@dataclass(frozen=True)
class PseudoLabels:
    """Parsed labels: names[i] (image path) has cluster labels[i]."""

    names: np.ndarray        # (N,) str
    labels: np.ndarray       # (N,) int32
    format: str              # what was parsed, in words
    names_from_file: bool    # False: the file held labels only and names are row numbers

    @property
    def count(self) -> int:
        return int(self.labels.shape[0])

    def summary(self) -> dict[str, object]:
        labels = self.labels
        return {
            "count": self.count,
            "distinct_labels": int(np.unique(labels).size) if labels.size else 0,
            "min_label": int(labels.min()) if labels.size else None,
            "max_label": int(labels.max()) if labels.size else None,
            "format": self.format,
            "names_from_file": self.names_from_file,
        }


def gunzip_capped(data: bytes, *, source: str, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress gzip data, refusing output over `limit` (a gzip bomb) instead of exhausting memory."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    while pending:
        out += decomp.decompress(pending, 1 << 24)
        if len(out) > limit:
            raise LabelFileError(f"{source}: decompresses to more than {limit / 2**30:.1f} GiB; refusing it.")
        pending = decomp.unconsumed_tail
        if decomp.eof:
            break
    return bytes(out)


def looks_like_label_text(text: str) -> bool:
    """Cheap content sniff on the start of a text file: most lines end in an integer (or are one)."""
    lines = [ln.strip() for ln in text.splitlines()[:50] if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the head may cut the last line
    if not lines:
        return False
    hits = sum(1 for ln in lines if _INT.match(re.split(r"[\s,;]+", ln)[-1] or ""))
    return hits >= max(1, len(lines) - 1)  # one header line allowed


def parse_label_file(name: str, data: bytes) -> PseudoLabels:
    """Parse a pseudo-label file of any supported format (see the module docstring); errors name line numbers."""
    if data.startswith(GZIP_MAGIC):
        inner = gunzip_capped(data, source=name)
        parsed = parse_label_file(re.sub(r"\.gz$", "", name), inner)
        return PseudoLabels(parsed.names, parsed.labels, f"gzip of {parsed.format}", parsed.names_from_file)
    if data.startswith(NPY_MAGIC):
        return _from_npy(name, np.load(io.BytesIO(data), allow_pickle=False))
    if data.startswith(ZIP_MAGIC):
        return _from_npz(name, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{name}: neither text (UTF-8: {exc}) nor a numpy array.") from None
    return _from_text(name, text)


def _from_text(name: str, text: str) -> PseudoLabels:
    rows = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    rows = [(n, ln) for n, ln in rows if ln and not ln.startswith("#")]
    if not rows:
        raise LabelFileError(f"{name}: no label lines.")
    sample = [ln for _, ln in rows[1:200]] or [rows[0][1]]
    if all("\t" in ln for ln in sample):
        sep, label = "\t", "tab-separated"
    elif all("," in ln for ln in sample) or (name.lower().endswith(".csv") and any("," in ln for ln in sample)):
        sep, label = ",", "comma-separated"
    else:
        sep, label = None, "space-separated"
    header = None
    first = _split(rows[0][1], sep)
    if not _INT.match(first[-1]):
        header = first
        rows = rows[1:]
    label_col, name_col = -1, 0
    if header is not None and len(header) > 2:
        keys = [h.lower() for h in header]
        wanted = [i for i, h in enumerate(keys) if h in _LABEL_KEYS]
        if len(wanted) != 1:
            raise LabelFileError(f"{name}: header {header} has {len(header)} columns and no single label column "
                                 f"(one of {_LABEL_KEYS}).")
        label_col = wanted[0]
        name_col = next((i for i, h in enumerate(keys) if h in _NAME_KEYS), 0)
    names: list[str] = []
    labels: list[int] = []
    only_labels = None
    for lineno, ln in rows:
        parts = _split(ln, sep)
        single = len(parts) == 1
        if only_labels is None:
            only_labels = single
        elif single != only_labels:
            raise LabelFileError(f"{name}: line {lineno} {ln[:80]!r} mixes 'label' lines with 'path label' lines.")
        token = parts[label_col]
        if not _INT.match(token):
            raise LabelFileError(f"{name}: line {lineno}: label {token!r} is not an integer ({ln[:80]!r}).")
        labels.append(int(token))
        if single:
            continue
        if label_col != -1:
            names.append(parts[name_col])
        else:  # everything before the label is the path (it may contain the separator)
            names.append(parts[0] if sep is None else sep.join(parts[:-1]))
    arr = _labels_array(name, labels)
    head = f", header {header}" if header is not None else ""
    if only_labels:
        return PseudoLabels(_row_names(arr.size), arr, f"text, one label per line{head}", False)
    return PseudoLabels(np.asarray(names, dtype=str), arr, f"text 'path label' ({label}){head}", True)


def _split(line: str, sep: str | None) -> list[str]:
    if sep is None:  # Caffe ImageData: the label follows the last whitespace
        parts = line.rsplit(None, 1)
        return parts
    return [p.strip().strip('"') for p in line.split(sep)]


def _labels_array(name: str, labels: list[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.int64)
    if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        raise LabelFileError(f"{name}: labels do not fit int32 (range {arr.min()}..{arr.max()}).")
    return arr.astype(np.int32)


def _row_names(n: int) -> np.ndarray:
    return np.arange(n).astype(str)


def _from_npy(name: str, array: np.ndarray) -> PseudoLabels:
    if array.dtype.names:
        fields = {f.lower(): f for f in array.dtype.names}
        lab = next((fields[k] for k in _LABEL_KEYS if k in fields), None)
        nam = next((fields[k] for k in _NAME_KEYS if k in fields), None)
        if lab is None:
            raise LabelFileError(f"{name}: structured array with fields {array.dtype.names} has no label field.")
        names = np.asarray(array[nam]).astype(str) if nam else _row_names(array.shape[0])
        described = ", ".join(f for f in (nam, lab) if f)
        return PseudoLabels(names, _labels_array(name, array[lab]), f"npy structured array ({described})",
                            nam is not None)
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        return PseudoLabels(_row_names(array.size), _labels_array(name, array), f"npy {array.dtype} labels only",
                            False)
    raise LabelFileError(f"{name}: npy array of shape {array.shape} and dtype {array.dtype} is not a label vector.")


def _from_npz(name: str, data: bytes) -> PseudoLabels:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        declared = sum(i.file_size for i in zf.infolist())
    if declared > MAX_DECOMPRESSED:
        raise LabelFileError(f"{name}: npz members declare {declared} bytes uncompressed; refusing it.")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    lower = {k.lower(): k for k in arrays}
    lab = next((lower[k] for k in _LABEL_KEYS if k in lower), None)
    if lab is None:
        ints = [k for k, v in arrays.items() if v.ndim == 1 and np.issubdtype(v.dtype, np.integer)]
        if len(ints) != 1:
            raise LabelFileError(f"{name}: npz arrays {sorted(arrays)}: cannot tell which holds the labels.")
        lab = ints[0]
    labels = _labels_array(name, arrays[lab])
    nam = next((lower[k] for k in _NAME_KEYS if k in lower), None)
    if nam is None:
        strs = [k for k, v in arrays.items() if v.ndim == 1 and v.dtype.kind in "US" and v.shape == labels.shape]
        nam = strs[0] if len(strs) == 1 else None
    if nam is not None:
        names = arrays[nam]
        if names.shape != labels.shape:
            raise LabelFileError(f"{name}: npz '{nam}' has shape {names.shape} but '{lab}' has {labels.shape}.")
        names = np.char.decode(names, "utf-8") if names.dtype.kind == "S" else names.astype(str)
        return PseudoLabels(names, labels, f"npz arrays '{nam}' and '{lab}'", True)
    return PseudoLabels(_row_names(labels.size), labels, f"npz array '{lab}' (labels only)", False)


def guess_split(member: str, labels: PseudoLabels | None = None) -> tuple[str | None, str]:
    """('train' | 'val' | None, why) from the member's path, then from ImageNet file naming in the names."""
    tokens = set(re.split(r"[^a-z]+", member.lower()))
    train = bool(tokens & {"train", "training", "trn"})
    val = bool(tokens & {"val", "valid", "validation", "test"})
    if train != val:
        return ("train" if train else "val"), f"'{'train' if train else 'val'}' in the file path"
    if labels is not None and labels.names_from_file and labels.count:
        sample = labels.names[: min(200, labels.count)]
        if all("_val_" in str(n) for n in sample):
            return "val", "names are ILSVRC2012_val_* images"
        if all(re.search(r"n\d{8}[/_]", str(n)) for n in sample):
            return "train", "names are n<wnid>/ training images"
    return None, "neither the file path nor the image names tell train from val"


def save_pseudo_labels(path: str | os.PathLike[str], labels: PseudoLabels) -> Path:
    """Write `names` and `labels` to a compressed .npz (no pickles)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, names=np.asarray(labels.names, dtype=str),
                            labels=np.asarray(labels.labels, dtype=np.int32))
    return path


def load_pseudo_labels(path: str | os.PathLike[str]) -> PseudoLabels:
    """Read a `save_pseudo_labels` file back."""
    with np.load(path, allow_pickle=False) as npz:
        return PseudoLabels(npz["names"], npz["labels"], "npz names/labels", True)


def open_text_head(data: bytes) -> str | None:
    """The start of a member as text, or None for binary data (NUL bytes or invalid UTF-8 near the start)."""
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.GzipFile(fileobj=io.BytesIO(data)).read(4096)
        except (OSError, EOFError):
            return None
    if b"\x00" in data[:4096]:
        return None
    try:
        return data[:4096].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start >= len(data[:4096]) - 4:  # a multi-byte character cut by the head
            return data[: exc.start].decode("utf-8-sig", errors="ignore")
        return None
