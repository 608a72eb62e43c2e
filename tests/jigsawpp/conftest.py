"""Shared stand-in caffemodels for the release tests (written once per session: AlexNet-size files take seconds).

The real release zips cannot be downloaded; `jigsawpp.fixtures` writes caffemodels with seeded weights from the
bundled prototxts and packs them into release-shaped zips. Nothing here is committed.
"""

from __future__ import annotations

import pytest

from jigsawpp.fixtures import write_release_caffemodel


@pytest.fixture(scope="session")
def conv_caffemodel(tmp_path_factory):
    """conv1..conv5 of the stride-4 AlexNet (~9 MB): the cheap stand-in for layout and label tests."""
    return write_release_caffemodel("conv", tmp_path_factory.mktemp("conv") / "conv.caffemodel", seed=3)


@pytest.fixture(scope="session")
def cfn_caffemodel(tmp_path_factory):
    """The 9-tower Jigsaw++ CFN (~340 MB, tied weights so the tower copies are identical)."""
    return write_release_caffemodel("jigsawpp", tmp_path_factory.mktemp("cfn") / "jigsawpp.caffemodel", seed=1)


@pytest.fixture(scope="session")
def cc_caffemodel(tmp_path_factory):
    """A cluster-classification AlexNet (conv1 stride 4, fc8 2000; ~250 MB)."""
    return write_release_caffemodel("cc", tmp_path_factory.mktemp("cc") / "jigsawpp_acc.caffemodel", seed=2)
