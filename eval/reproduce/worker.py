"""One job of a reproduce plan in its own process: ``python -m eval.reproduce.worker RUN JOB`` (or under
``torchrun --standalone --nproc_per_node=N -m eval.reproduce.worker RUN JOB``), as `eval.reproduce.runner` starts it.

The job's settings come from ``RUN/reproduce.json``; the device is this rank's GPU among ``CUDA_VISIBLE_DEVICES``
(the CPU without CUDA). On failure the last line printed is ``error: <sentence>`` and the exit code is 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from eval.reproduce import protocols  # noqa: F401  (registers the jobs)
    from eval.reproduce.plan import read_plan_record
    from eval.reproduce.runner import ERROR_PREFIX, die_with_parent, execute_job

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(f"{ERROR_PREFIX}usage: python -m eval.reproduce.worker RUN_DIR JOB", file=sys.stderr)
        return 2
    die_with_parent()  # under torchrun the parent is its agent, which dies with jigsawpp reproduce
    run_dir, name = args
    try:
        from jigsawpp.engine.distributed import init_distributed, resolve_device

        record = read_plan_record(run_dir)
        if name not in record.get("jobs", {}):
            raise KeyError(f"{run_dir}/reproduce.json plans no job {name!r}; it plans {sorted(record['jobs'])}.")
        init_distributed()
        execute_job(run_dir, record, name, device=resolve_device(None), progress=False)
    except (FileNotFoundError, KeyError, ValueError, ImportError, FloatingPointError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"{ERROR_PREFIX}{text}", file=sys.stderr, flush=True)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
