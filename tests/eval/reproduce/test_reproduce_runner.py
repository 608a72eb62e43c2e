"""Running jobs as subprocesses over GPUs (`run_scheduled`) with real short-lived processes in place of the worker:
one job per GPU at a time, as many GPUs as the plan gives each job, the longest first, failures recorded with their
sentence; the worker and torchrun command lines; and subprocesses that die with a SIGKILLed parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from eval.reproduce import Datasets, make_plan, write_plan
from eval.reproduce.plan import read_plan_record
from eval.reproduce.runner import read_status, run_scheduled, worker_command

# records (job, CUDA_VISIBLE_DEVICES, processes, start, end) and exits 1 with an error line for the job "cls"
STAND_IN = """
import json, os, sys, time
run, name, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.time()
time.sleep(0.4)
with open(os.path.join(run, "trace.jsonl"), "a") as f:
    f.write(json.dumps({"name": name, "gpus": os.environ["CUDA_VISIBLE_DEVICES"].split(","), "processes": processes,
                        "start": start, "end": time.time()}) + "\\n")
if name == "cls":
    print("error: the stand-in for cls failed on purpose", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture()
def run(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}}))
    roots = {n: tmp_path / n for n in ("voc07", "voc12", "sbd")}
    for p in roots.values():
        p.mkdir()
    # det_ss on one process (1 image per batch), the others on two
    plan = make_plan(model, Datasets(**roots), overrides={"det_ss": {"ims_per_batch": 1}}, gpus_per_job=2)
    folder = tmp_path / "run"
    write_plan(folder, plan)
    return folder


def test_scheduler_runs_one_job_per_gpu(run):
    record = read_plan_record(run)
    assert {n: e["processes"] for n, e in record["jobs"].items()} == {"det_ss": 1, "det_ms": 2, "cls": 2, "seg": 2}
    events = []
    outcomes = run_scheduled(run, record, list(record["jobs"]), gpus=["0", "1", "2"], poll_seconds=0.02,
                             command=lambda r, n, k: [sys.executable, "-c", STAND_IN, str(r), n, str(k)],
                             on_event=events.append)
    trace = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    assert sorted(t["name"] for t in trace) == sorted(record["jobs"])  # each job once
    for t in trace:
        assert t["processes"] == len(t["gpus"]) == record["jobs"][t["name"]]["processes"], t
    for a in trace:  # jobs running at the same time never share a GPU
        for b in trace:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    # the longest job (segmentation, ~68 K40-hours) is started first
    assert events[0].startswith("seg: started on GPU(s) 0,1")
    states = {o.name: o.state for o in outcomes}
    assert states == {"seg": "done", "det_ms": "done", "det_ss": "done", "cls": "failed"}
    status = read_status(run, "cls")
    assert status["state"] == "failed" and status["error"] == "the stand-in for cls failed on purpose"
    assert read_status(run, "seg")["gpus"] == ["0", "1"] and read_status(run, "seg")["log"] == "logs/seg.log"


def test_worker_and_torchrun_commands(tmp_path):
    assert worker_command(tmp_path, "cls", 1) == [sys.executable, "-m", "eval.reproduce.worker", str(tmp_path), "cls"]
    assert worker_command(tmp_path, "seg", 4) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node=4", "-m", "eval.reproduce.worker", str(tmp_path),
                                                  "seg"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_job_processes_die_with_a_killed_parent(tmp_path):
    parent = (
        "import subprocess, sys, time\n"
        "from eval.reproduce.runner import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as stat:
                state = stat.read().split(")")[-1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            break
        if state == "Z":  # dead, awaiting its reaper
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the job's process outlived its killed parent")
