"""``jigsawpp reproduce``: every evaluation of the paper the given datasets allow, for one model, in one resumable run
folder, and the report that sets the measured numbers beside the paper's.

Pieces: `jobs` (the registry: one `Job` per protocol), `protocols` (the registered jobs), `estimates` (expected
GPU-hours from published speeds), `plan` (what a run will do; ``RUN/reproduce.json``), `runner` (in this process or
as subprocesses over GPUs, resumable), `worker` (one job in its own process), `collect` (a run read from its files),
`report` and `document` (``report.md``, ``report.html``, ``report.json``), `figures`.
"""

from eval.reproduce import protocols  # noqa: F401  (registers the jobs)
from eval.reproduce.jobs import JOBS, Datasets, Job, register_job
from eval.reproduce.plan import Plan, make_plan, write_plan
from eval.reproduce.report import write_comparison, write_report

__all__ = ["JOBS", "Datasets", "Job", "Plan", "make_plan", "register_job", "write_comparison", "write_plan",
           "write_report"]
