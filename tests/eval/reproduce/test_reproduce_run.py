"""`jigsawpp reproduce` end to end on CPU at --scale tiny (the seeded release model, the packaged VOC photos): the
report's numbers are each protocol's scores.json, its deviations are verify's, a run killed mid-way resumes to the
same numbers, a finished run is not run again, `jigsawpp report` rebuilds the same files, and several runs go side by
side in the form of Table 3; and report.html as a real browser renders it: headless Chromium (Debian's ``chromium``
package, which scripts/install.sh installs when it can) loads the self-contained page, decodes every embedded figure,
and its DOM holds the report's tables with the measured numbers. One module, so that the runs' checkpoints and weights
(several GB at CaffeNet size) are removed as soon as it ends."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from jigsawpp.cli import main

TABLE3 = ("det_ss", "det_ms", "cls", "seg")
PROBES = ("linear_imagenet", "nonlinear_conv5")
JOBS = TABLE3 + PROBES  # as the tiny_run fixture runs them
HEADLINE = {"det_ss": "map_11point", "det_ms": "map_11point", "cls": "map_sklearn", "seg": "mean_iu"}
COLUMN = {"det_ss": "detection_ss", "det_ms": "detection_ms", "cls": "classification", "seg": "segmentation"}


def _scores(run: Path, job: str) -> dict:
    return json.loads((run / job / "scores.json").read_text())


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _md_row(md: str, first_cell: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {first_cell} |") or x.startswith(f"| **{first_cell}"))
    return [c.strip().strip("*") for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_report_numbers_are_the_protocols_scores(tiny_run):
    data = _report(tiny_run)
    assert data["scale"] == "tiny" and data["method"] == "CC+Jigsaw++"
    cells = {c["job"]: c for c in data["cells"] if c["job"] in TABLE3}
    assert {c["job"] for c in data["cells"]} == set(JOBS)
    md = (tiny_run / "report.md").read_text()
    page = (tiny_run / "report.html").read_text()
    header = _md_row(md, "")
    measured = _md_row(md, "measured")  # the first table: Table 3
    for job in TABLE3:
        scores = _scores(tiny_run, job)
        value = 100.0 * scores[HEADLINE[job]]
        assert cells[job]["measured"] == value and cells[job]["column"] == COLUMN[job]
        assert data["jobs"][job]["state"] == "done" and data["jobs"][job]["complete"]
        assert data["jobs"][job]["per_class"] == scores["per_class"]
        assert data["jobs"][job]["headline"]["value"] == scores[HEADLINE[job]]
        shown = measured[next(k for k, h in enumerate(header) if h.startswith(
            {"detection_ss": "Det. SS", "detection_ms": "Det. MS", "classification": "Class.",
             "segmentation": "Segm."}[COLUMN[job]]))]
        assert shown == f"{value:.1f}"
        assert f"<td class=\"num\">{value:.1f}</td>" in page
    # the probes: one cell per layer, the top-1 of their scores.json, in Tables 4 and 6 with the paper's rows
    sections = md.split("\n### ")
    for job, table, paper in (("linear_imagenet", "Table 4", ["18.9", "30.5", "35.7", "35.4", "32.2"]),
                              ("nonlinear_conv5", "Table 6", ["41.1"])):
        top1 = _scores(tiny_run, job)["top1"]
        mine = [c for c in data["cells"] if c["job"] == job]
        assert [c["column"] for c in mine] == list(top1) and [c["measured"] for c in mine] == list(top1.values())
        assert data["jobs"][job]["complete"] and all(c["table"] == table.replace("Table ", "table") for c in mine)
        part = next(x for x in sections if x.startswith(table))
        assert _md_row(part, "measured")[1:] == [f"{v:.1f}" for v in top1.values()]
        assert _md_row(part, "paper (CC+Jigsaw++)")[1:] == paper
    assert "](figures/table4_paper_vs_measured.png)" in md and "](linear_imagenet/layer_accuracy.png)" in md
    # the paper's row (Table 3, CC+Jigsaw++) and a per-class table of every job
    assert _md_row(md, "paper (CC+Jigsaw++)")[1:] == ["69.9", "55.0", "55.8", "40.0"]
    sections = {part.split(":", 1)[0]: part for part in md.split("\n## ")[1:]}
    for job, key in (("seg", "iu"), ("cls", "ap_sklearn"), ("det_ss", "ap_11point")):
        per_class = _scores(tiny_run, job)["per_class"]
        for name, values in per_class.items():
            cell = _md_row(sections[job], name)[1]
            assert cell == ("–" if values[key] is None else f"{100 * values[key]:.1f}"), (job, name)
    for name in ("det_ss/pr_curves.png", "cls/pr_curves.png", "seg/iu.png", "figures/table3_paper_vs_measured.png",
                 "figures/cls_training.png", "figures/seg_training.png"):
        assert f"]({name})" in md and (tiny_run / name).is_file(), name
    assert re.search(r"\]\(seg/overlays/[^)]+\.jpg\)", md) and re.search(r"\]\(det_ss/detections/[^)]+\.jpg\)", md)


@pytest.mark.slow
def test_report_lists_what_verify_finds(tiny_run):
    from eval.verify import verify

    md = (tiny_run / "report.md").read_text()
    assert "Scale tiny" in md and "run: --scale tiny" in md
    for job in JOBS:
        try:
            _, rows = verify(tiny_run / "model", [tiny_run / job / "scores.json"], method="CC+Jigsaw++")
        except Exception as exc:  # noqa: BLE001 - the report must show verify's failure as it is
            assert f"not verified: {type(exc).__name__}" in md, job
            continue
        for row in rows:
            assert row.deviations, job  # tiny cuts the iterations at least
            for d in row.deviations:
                assert d in md, (job, d)
    # the provenance table: versions and seeds from the stamps
    env = json.loads((tiny_run / "seg" / "scores.json").read_text())["provenance"]["protocol"]["environment"]
    seg_row = [line for line in md.splitlines() if line.startswith("| seg | ")][-1]
    assert env["torch"] in seg_row and env["numpy"] in seg_row and "data_seed 1337" in seg_row


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(tiny_run, killed_run):
    a, b = _report(tiny_run)["jobs"]["seg"], _report(killed_run)["jobs"]["seg"]
    assert b["attempts"] == 2 and b["interrupted"] == 1 and b["complete"]
    assert b["headline"]["value"] == pytest.approx(a["headline"]["value"], rel=1e-6, abs=1e-9)
    assert b["headline"]["value"] > 0  # the fine-tuned net labels some pixels right
    for name, values in a["per_class"].items():
        for key, value in values.items():
            got = b["per_class"][name][key]
            assert got == value if value is None else got == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    assert b["last_training_record"]["loss"] == pytest.approx(a["last_training_record"]["loss"], rel=1e-6)
    # the same numbers in the two reports' Table 3
    seg_a = [c for c in _report(tiny_run)["cells"] if c["job"] == "seg"][0]
    seg_b = [c for c in _report(killed_run)["cells"] if c["job"] == "seg"][0]
    assert f"{seg_a['measured']:.1f}" == f"{seg_b['measured']:.1f}" and seg_a["deviations"] == seg_b["deviations"]
    # only segmentation was asked for; the other jobs are in neither its plan nor its report
    assert set(json.loads((killed_run / "reproduce.json").read_text())["jobs"]) == {"seg"}


@pytest.mark.slow
def test_rerun_skips_finished_jobs_and_report_rebuilds_the_same(tiny_run, reproduce_inputs):
    before = {n: (tiny_run / n).read_bytes() for n in ("report.md", "report.html", "report.json")}
    status = (tiny_run / "status" / "cls.json").read_text()
    res = CliRunner().invoke(main, reproduce_inputs.args(tiny_run, "--only", ",".join(JOBS)))
    assert res.exit_code == 0, res.output
    assert res.output.count("complete, skipped") == len(JOBS)
    assert (tiny_run / "status" / "cls.json").read_text() == status  # not run again
    res = CliRunner().invoke(main, ["report", str(tiny_run)])
    assert res.exit_code == 0, res.output
    for name, data in before.items():
        assert (tiny_run / name).read_bytes() == data, name


def test_refuses_other_settings_scale_or_folder(tiny_run, reproduce_inputs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, reproduce_inputs.args(tiny_run, "--only", "cls", "--set", "cls.batch_size=4"))
    assert res.exit_code != 0 and "cls was started with other settings" in res.output
    assert "batch_size 2 -> 4" in res.output and "Traceback" not in res.output
    args = reproduce_inputs.args(tiny_run, "--only", "cls")
    args[args.index("tiny")] = "paper"
    res = runner.invoke(main, args)
    assert res.exit_code != 0 and "--scale tiny" in res.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    res = runner.invoke(main, reproduce_inputs.args(tmp_path / "other"))
    assert res.exit_code != 0 and "holds no reproduce run" in res.output


@pytest.mark.slow
def test_runs_side_by_side_in_the_form_of_table3(tiny_run, killed_run, tmp_path):
    out = tmp_path / "compare"
    res = CliRunner().invoke(main, ["report", str(tiny_run), str(killed_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    paper = lines.index(next(x for x in lines if x.startswith("| CC+Jigsaw++ |")))
    measured = [x for x in lines[paper + 1:paper + 3] if "measured" in x]
    assert len(measured) == 2 and "full (tiny)" in measured[0] and "killed (tiny)" in measured[1]
    full = [c.strip().strip("*") for c in measured[0].strip("|").split("|")]
    cells = {c["column"]: c["measured"] for c in _report(tiny_run)["cells"]}
    assert full[2:] == [f"{cells[c]:.1f}" for c in ("classification", "detection_ss", "detection_ms", "segmentation")]
    killed = [c.strip().strip("*") for c in measured[1].strip("|").split("|")]
    assert killed[2:5] == ["–", "–", "–"]  # the killed run evaluated segmentation only
    assert any(x.startswith("| Jigsaw++ | ") and "69.8" in x for x in lines)  # every paper row, as in Table 3
    assert "../" in md and (out / "figures" / "table3_runs.png").is_file()
    res = CliRunner().invoke(main, ["report", str(tiny_run), str(killed_run)])
    assert res.exit_code != 0 and "--out" in res.output


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.slow
def test_chromium_renders_the_report(tiny_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium; scripts/install.sh does it as root)")
    page = tiny_run / "report.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "src=\"data:image/" in html  # self-contained
    images = html.count("<img ")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # the page's load handler counted the images the browser decoded: all of them
    assert re.search(r'data-images-decoded="(\d+)/(\d+)"', dom).groups() == (str(images), str(images))
    assert images >= 12  # paper bars, PR curves, detections, overlays, probe bars per layer, training curves
    # Tables 3, 4 and 6, the jobs, the provenance, and the per-class tables of Table 3's four jobs
    assert dom.count("<table") == html.count("<table") == 3 + 2 + 4
    cells = json.loads((tiny_run / "report.json").read_text())["cells"]
    for c in cells:
        assert f'<td class="num">{c["measured"]:.1f}</td>' in dom, c["job"]
    assert "CC+Jigsaw++" in dom and "Scale tiny" in dom
