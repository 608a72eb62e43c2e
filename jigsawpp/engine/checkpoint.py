"""Training checkpoints that resume exactly, written atomically, never pickled.

Layout::

    <out>/checkpoints/latest.json              {"checkpoint": "iter_0010000", "iteration": 10000}
    <out>/checkpoints/iter_0010000/
        <group>.safetensors                     one file per named tensor group ("model", "solver", ...)
        rng_rank<r>.safetensors                 rank r's torch CPU (+ CUDA) generator states; numpy's and
                                                Python's global generator states as JSON in its metadata
        state.json                              iteration, world size, config, data fingerprint, data-source state

A checkpoint is assembled in ``.iter_NNNNNNN.partial`` and renamed when complete, then ``latest.json`` is replaced
(atomically), then all but the newest `keep` checkpoints are deleted: a run killed at any moment leaves the previous
checkpoint intact and named by ``latest.json``. Under torchrun every rank calls `save_checkpoint` (each writes its
RNG state; rank 0 writes the rest) and `load_checkpoint` (each restores its own RNG state).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jigsawpp.engine.distributed import barrier, world

__all__ = ["CHECKPOINT_DIR", "Checkpoint", "check_resumable", "latest_checkpoint", "load_checkpoint",
           "read_checkpoint_state", "save_checkpoint"]

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
STATE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    iteration: int
    tensors: dict[str, dict[str, torch.Tensor]]  # group -> name -> CPU tensor
    state: dict


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.safetensors"


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def _host_rng_metadata() -> dict[str, str]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": json.dumps({"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                                 "cached_gaussian": float(cached)}),
            "python": json.dumps({"version": version, "state": list(internal), "gauss_next": gauss_next})}


def save_checkpoint(out_dir: str | os.PathLike[str], *, iteration: int,
                    tensors: dict[str, dict[str, torch.Tensor]], state: dict, device: torch.device | str,
                    keep: int = 2) -> Path:
    """Write ``<out_dir>/checkpoints/iter_<iteration>/`` (collective under torchrun) and return its path.

    Args:
        tensors: group name -> state dict, each written as ``<group>.safetensors`` (rank 0's are used).
        state: JSON-able; ``iteration`` and ``world_size`` are added.
        keep: how many of the newest checkpoints to keep (>= 1).
    """
    from jigsawpp.io import save_state_dict_file, write_json_atomic

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}.")
    bad = sorted(g for g in tensors if g == "state" or g.startswith("rng_rank") or "/" in g or g.startswith("."))
    if bad:
        raise ValueError(f"tensor group names {bad} are reserved or not plain file names.")
    device = torch.device(device)
    rank, size = world()
    root = Path(out_dir) / CHECKPOINT_DIR
    name = f"iter_{iteration:07d}"
    staging = root / f".{name}.partial"
    if rank == 0:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    barrier()
    save_state_dict_file(_rng_tensors(device), staging / _rng_file(rank), metadata=_host_rng_metadata())
    if rank == 0:
        for group, values in tensors.items():
            save_state_dict_file(dict(values), staging / f"{group}.safetensors")
        write_json_atomic(staging / STATE, {"iteration": iteration, "world_size": size, **state})
    barrier()
    final = root / name
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        write_json_atomic(root / LATEST, {"checkpoint": name, "iteration": iteration})
        kept = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
        for old in kept[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when there is none (or it was removed)."""
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["checkpoint"]
    return path if path.is_dir() else None


def read_checkpoint_state(path: str | os.PathLike[str]) -> dict:
    """A checkpoint's ``state.json`` (cheap: to check it before loading tensors)."""
    file = Path(path) / STATE
    if not file.is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {STATE}); delete it and resume from another.")
    return json.loads(file.read_text())


def _restore_host_rng(metadata: dict[str, str]) -> None:
    if "numpy" in metadata:
        s = json.loads(metadata["numpy"])
        np.random.set_state((s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "python" in metadata:
        s = json.loads(metadata["python"])
        random.setstate((s["version"], tuple(s["state"]), s["gauss_next"]))


def load_checkpoint(path: str | os.PathLike[str], *, device: torch.device | str) -> Checkpoint:
    """Read a checkpoint's tensors and state, and restore this rank's RNG states (torch CPU/CUDA, numpy, Python).

    Raises:
        ValueError: the checkpoint is incomplete or has no RNG state for this rank.
    """
    from safetensors import safe_open

    from jigsawpp.io import load_state_dict_file

    path = Path(path)
    device = torch.device(device)
    rank, _ = world()
    state = read_checkpoint_state(path)
    rng_path = path / _rng_file(rank)
    if not rng_path.is_file():
        raise ValueError(f"{path} has no RNG state for rank {rank} (it was made by {state.get('world_size')} "
                         "processes); resume with that many.")
    tensors = {p.name[: -len(".safetensors")]: load_state_dict_file(p) for p in sorted(path.glob("*.safetensors"))
               if not p.name.startswith("rng_rank")}
    rng = load_state_dict_file(rng_path)
    with safe_open(str(rng_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    torch.set_rng_state(rng["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in rng:
        torch.cuda.set_rng_state(rng["torch_cuda"], device)
    _restore_host_rng(metadata)
    return Checkpoint(iteration=int(state["iteration"]), tensors=tensors, state=state)


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


def check_resumable(state: dict, *, config: dict, fingerprint: str, world_size: int, runtime_keys: set[str],
                    path: str | os.PathLike[str]) -> None:
    """Refuse to resume from a checkpoint made under other conditions.

    `config` is compared key by key with the saved one, except `runtime_keys` (settings that may change between
    launches, such as max_iters); then the data fingerprint; then the number of processes.

    Raises:
        ValueError: naming what changed and what to do.
    """
    saved = state.get("config", {})
    now = _jsonable(config)
    assert isinstance(now, dict)
    changed = sorted(k for k in set(saved) | set(now) if k not in runtime_keys and saved.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"checkpoint {path} was made with a different config ({diffs}); resume with the same "
                         "settings or start a new output folder.")
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"checkpoint {path} was made on different data (its fingerprint differs: images, labels, "
                         "their order or proposals changed); resume with the same data or start a new output folder.")
    if state.get("world_size") != world_size:
        raise ValueError(f"checkpoint {path} was made with {state.get('world_size')} processes, this run has "
                         f"{world_size}; an exact resume needs the same number.")
