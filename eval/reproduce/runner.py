"""Running a reproduce plan: each job in its own folder, resumable, either in this process one after the other, or as
subprocesses scheduled over GPUs (``--gpus``): one job per GPU at a time with ``CUDA_VISIBLE_DEVICES``, and
``torchrun --standalone`` for a job given several GPUs.

Every job's state is kept in ``RUN/status/<job>.json`` (written by this process only): ``running`` with the pid
while it runs, then ``done`` (with the digest of the settings it completed with), ``failed`` (with the error's
sentence) or ``interrupted``. A job is skipped when it is ``done`` with the current settings and its scores exist;
every other job is (re)started and its protocol resumes from the newest checkpoint in its folder, so a killed run
continues where it stopped. Subprocesses die with this process (Linux ``PR_SET_PDEATHSIG``), so a killed parent
leaves no job running. Their output goes to ``RUN/logs/<job>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eval.reproduce.jobs import JOBS, Datasets, JobContext
from eval.reproduce.plan import settings_digest

__all__ = ["ERROR_PREFIX", "JobOutcome", "RunLockedError", "die_with_parent", "execute_job", "is_complete",
           "read_status", "run_in_process", "run_lock", "run_scheduled", "worker_command"]

ERROR_PREFIX = "error: "  # a failing worker's last line: the error's sentence
Event = Callable[[str], None]


@dataclass(frozen=True)
class JobOutcome:
    name: str
    state: str  # done | failed | skipped (complete already) | interrupted
    seconds: float
    error: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _status_path(run_dir: Path, name: str) -> Path:
    return run_dir / "status" / f"{name}.json"


def read_status(run_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    import json

    path = _status_path(Path(run_dir), name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_status(run_dir: Path, name: str, status: Mapping[str, Any]) -> None:
    from jigsawpp.io import write_json_atomic

    write_json_atomic(_status_path(run_dir, name), dict(status))


def is_complete(run_dir: str | os.PathLike[str], record: Mapping[str, Any], name: str) -> bool:
    """Done with the settings the plan now holds, and its scores are there."""
    status = read_status(run_dir, name)
    entry = record["jobs"][name]
    return (status is not None and status.get("state") == "done"
            and status.get("settings_sha256") == settings_digest(entry["settings"])
            and (Path(run_dir) / name / JOBS[name].scores).is_file())


def _newest_mtime(folder: Path) -> float | None:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(times) if times else None


def _begin(run_dir: Path, name: str, record: Mapping[str, Any], *, pid: int, device: str,
           gpus: Sequence[str] | None, processes: int) -> dict[str, Any]:
    """Mark `name` running; an earlier attempt that died while running is counted (until its last file write)."""
    old = read_status(run_dir, name) or {}
    seconds = float(old.get("seconds", 0.0))
    interrupted = int(old.get("interrupted", 0))
    if old.get("state") == "running" and old.get("started_unix"):
        interrupted += 1
        last = _newest_mtime(run_dir / name)
        if last is not None and last > old["started_unix"]:
            seconds += last - old["started_unix"]
    status = {"state": "running", "attempts": int(old.get("attempts", 0)) + 1, "interrupted": interrupted,
              "seconds": seconds, "first_started": old.get("first_started") or _now(), "last_started": _now(),
              "started_unix": time.time(), "finished": None, "pid": pid, "device": device,
              "gpus": list(gpus) if gpus is not None else None, "processes": processes,
              "settings_sha256": settings_digest(record["jobs"][name]["settings"]), "error": None,
              "log": f"logs/{name}.log" if gpus is not None else None}
    _write_status(run_dir, name, status)
    return status


def _end(run_dir: Path, name: str, status: dict[str, Any], *, state: str, error: str | None = None) -> JobOutcome:
    status = {**status, "state": state, "error": error, "finished": _now(), "pid": None,
              "seconds": status["seconds"] + (time.time() - status["started_unix"]), "started_unix": None}
    _write_status(run_dir, name, status)
    return JobOutcome(name, state, status["seconds"], error)


def execute_job(run_dir: str | os.PathLike[str], record: Mapping[str, Any], name: str, *, device: Any,
                progress: bool) -> None:
    """Run job `name` of the plan `record` (``RUN/reproduce.json``) in this process, on `device`."""
    run = Path(run_dir)
    entry = record["jobs"][name]
    ctx = JobContext(model_dir=Path(record["model"]["dir"]), out_dir=run / name, settings=entry["settings"],
                     datasets=Datasets.from_dict(record["datasets"]), device=device, progress=progress,
                     cache_dir=run / "cache")
    JOBS[name].run(ctx)


def _sentence(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).strip() or type(exc).__name__


def run_in_process(run_dir: str | os.PathLike[str], record: Mapping[str, Any], names: Sequence[str], *, device: Any,
                   progress: bool = True, on_event: Event | None = None) -> list[JobOutcome]:
    """Run `names` one after the other in this process. A job that raises is recorded as failed (its sentence; an
    unexpected error's traceback in ``RUN/status/<job>.traceback.txt``) and the next job runs."""
    run = Path(run_dir)
    say = on_event or (lambda _: None)
    outcomes = []
    for k, name in enumerate(names, 1):
        if is_complete(run, record, name):
            outcomes.append(JobOutcome(name, "skipped", float(read_status(run, name)["seconds"])))
            say(f"[{k}/{len(names)}] {name}: complete, skipped")
            continue
        say(f"[{k}/{len(names)}] {name}: {JOBS[name].title}")
        status = _begin(run, name, record, pid=os.getpid(), device=str(device), gpus=None, processes=1)
        try:
            execute_job(run, record, name, device=device, progress=progress)
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
            expected = isinstance(exc, (FileNotFoundError, KeyError, ValueError, ImportError, FloatingPointError))
            if not expected:
                from jigsawpp.io import write_text_atomic

                write_text_atomic(run / "status" / f"{name}.traceback.txt", traceback.format_exc())
            outcome = _end(run, name, status, state="failed", error=_sentence(exc) if expected else
                           f"{type(exc).__name__}: {exc} (traceback in status/{name}.traceback.txt)")
            say(f"  {name} failed: {outcome.error}")
        else:
            outcome = _end(run, name, status, state="done")
            say(f"  {name} done in {outcome.seconds:.0f} s")
        outcomes.append(outcome)
    return outcomes


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (linux/prctl.h)


def worker_command(run_dir: Path, name: str, processes: int) -> list[str]:
    """The command running job `name` of the plan in ``run_dir``: the worker module, under torchrun if several."""
    worker = ["-m", "eval.reproduce.worker", str(run_dir), name]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                *worker]
    return [sys.executable, *worker]


def _last_error(log: Path) -> str | None:
    if not log.is_file():
        return None
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line[len(ERROR_PREFIX):] for line in lines if line.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else None


def run_scheduled(run_dir: str | os.PathLike[str], record: Mapping[str, Any], names: Sequence[str], *,
                  gpus: Sequence[str], command: Callable[[Path, str, int], list[str]] = worker_command,
                  on_event: Event | None = None, poll_seconds: float = 0.5) -> list[JobOutcome]:
    """Run `names` as subprocesses over `gpus`: the longest expected jobs first, each on as many free GPUs as its
    plan entry's ``processes`` (capped at ``len(gpus)``), started as soon as that many are free."""
    import eval as eval_package

    run = Path(run_dir)
    say = on_event or (lambda _: None)
    (run / "logs").mkdir(parents=True, exist_ok=True)
    outcomes = [JobOutcome(n, "skipped", float(read_status(run, n)["seconds"])) for n in names
                if is_complete(run, record, n)]
    for outcome in outcomes:
        say(f"{outcome.name}: complete, skipped")
    pending = sorted((n for n in names if not is_complete(run, record, n)),
                     key=lambda n: -float(record["jobs"][n]["estimate"]["gpu_hours"]))
    free = list(gpus)
    running: dict[str, tuple[subprocess.Popen, list[str], dict[str, Any]]] = {}
    root = str(Path(eval_package.__file__).resolve().parents[1])
    env_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        while pending or running:
            for name in list(pending):
                count = min(int(record["jobs"][name]["processes"]), len(gpus))
                if count > len(free):
                    continue
                taken, free = free[:count], free[count:]
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(taken), "PYTHONPATH": env_path}
                with open(run / "logs" / f"{name}.log", "ab") as log:
                    log.write(f"\n==== {_now()} {name} on GPU(s) {','.join(taken)}\n".encode())
                    proc = subprocess.Popen(command(run, name, count), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=die_with_parent)
                status = _begin(run, name, record, pid=proc.pid, device=f"cuda ({','.join(taken)})", gpus=taken,
                                processes=count)
                running[name] = (proc, taken, status)
                pending.remove(name)
                say(f"{name}: started on GPU(s) {','.join(taken)} (pid {proc.pid}, log logs/{name}.log)")
            time.sleep(poll_seconds)
            for name, (proc, taken, status) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                free.extend(taken)
                if code == 0:
                    outcome = _end(run, name, status, state="done")
                    say(f"{name}: done in {outcome.seconds:.0f} s")
                else:
                    error = _last_error(run / "logs" / f"{name}.log") or f"exit code {code} (see logs/{name}.log)"
                    outcome = _end(run, name, status, state="failed", error=error)
                    say(f"{name}: failed: {error}")
                outcomes.append(outcome)
    except BaseException:
        for name, (proc, _, status) in running.items():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            _end(run, name, status, state="interrupted", error="stopped by the user")
        raise
    return outcomes


class RunLockedError(RuntimeError):
    """Another process is running jobs in the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``RUN/.lock`` (an exclusive ``flock``) while jobs run, so two commands never write one run.

    Raises:
        RunLockedError: another process holds it (the message names its pid).
    """
    import fcntl

    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(f"{run_dir} is in use by another jigsawpp reproduce (pid {holder}); wait for it to "
                                 "finish or stop it first.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
