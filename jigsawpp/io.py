"""Weight files: safetensors only (never pickle), written atomically, with tied parameters stored once; atomic
writes of any file (`write_atomic`, `write_bytes_atomic`, `write_text_atomic`, `write_json_atomic`).

A Caffe net with `param { name }` sharing (the 9-tower Jigsaw++ network) has tied nn.Parameters, which appear
under several state_dict keys. safetensors refuses tensors that share memory, so we store each storage once and
record the aliases in the file's metadata; `load_state_dict_file` expands them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ALIASES_KEY = "jigsawpp.aliases"


def atomic_path(path: Path) -> tuple[int, Path]:
    """A new temp file beside `path` (same filesystem, so os.replace is atomic), open for writing.

    Created with mode 0o666 minus the umask, as a plain ``open`` would (``tempfile.mkstemp`` makes 0600 files,
    which would leave every output readable by its owner only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(handle)`` on a binary temp file beside `path` (the user's umask), then rename it to `path`: a
    reader never sees half a file, and a failure leaves nothing behind. Every file the project writes goes through
    this (or `staged_output` for folders)."""
    path = Path(path)
    fd, tmp = atomic_path(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: object) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_state_dict_file(state: dict[str, torch.Tensor], path: str | os.PathLike[str],
                         metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as safetensors; keys sharing storage are stored once and listed as aliases."""
    path = Path(path)
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        unique[key] = tensor.contiguous().clone() if not tensor.is_contiguous() else tensor
    meta = dict(metadata or {})
    meta[ALIASES_KEY] = json.dumps(aliases)
    fd, tmp = atomic_path(path)
    mode = os.fstat(fd).st_mode & 0o777  # 0o666 minus the umask
    os.close(fd)
    try:
        save_file(unique, str(tmp), metadata=meta)
        os.chmod(tmp, mode)  # safetensors re-creates the file owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict written by `save_state_dict_file`, re-creating the aliased keys."""
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        for key in handle.keys():
            state[key] = handle.get_tensor(key)
    for alias, target in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        state[alias] = state[target]
    return state


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
