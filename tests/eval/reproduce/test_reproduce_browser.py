"""report.html of the tiny run rendered by a real browser: headless Chromium (Debian's ``chromium`` package, which
scripts/install.sh installs when it can) loads the self-contained page, decodes every embedded figure, and its DOM
holds the report's tables with the measured numbers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

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
