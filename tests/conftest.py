"""Disk hygiene for the whole suite.

Many tests write real-size CaffeNet files (a caffemodel, a release zip, solver snapshots: 230 MB each). pytest's
``tmp_path_retention_policy = "failed"`` (pyproject.toml) removes a passing test's own ``tmp_path``; the folders that
module-scoped fixtures make with ``tmp_path_factory`` would stay until the session ends (several GB). Here every
folder ``tmp_path_factory.mktemp`` makes outside the setup of a session-scoped fixture is removed when its test module
has finished, unless a test of that module failed (then it is kept to look at, as pytest keeps failed tests' folders).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


class _TempFolders:
    """Registered on the plugin manager (not as conftest hooks), so that it also sees the setup of session-scoped
    fixtures, which pytest runs with the session's hooks rather than this folder's."""

    def __init__(self) -> None:
        self.module_dirs: list[Path] = []
        self.failed_modules: set[str] = set()
        self.session_setup = 0
        self.wrapped = False

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):  # noqa: ANN001, ANN201 (pytest hook signature)
        factory = request.config._tmp_path_factory  # noqa: SLF001 (the session's TempPathFactory)
        if not self.wrapped:
            self.wrap(factory)
        session = fixturedef.scope == "session"
        self.session_setup += session
        try:
            return (yield)
        finally:
            self.session_setup -= session

    def wrap(self, factory: pytest.TempPathFactory) -> None:
        make = factory.mktemp

        def mktemp(basename: str, numbered: bool = True) -> Path:
            path = make(basename, numbered=numbered)
            if not self.session_setup:
                self.module_dirs.append(path)
            return path

        factory.mktemp = mktemp  # type: ignore[method-assign]
        self.wrapped = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed_modules.add(report.nodeid.split("::", 1)[0])

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ANN201 (hook)
        try:
            return (yield)  # the module's fixtures are finalised here when `item` is its last test
        finally:
            if nextitem is None or nextitem.path != item.path:
                if item.nodeid.split("::", 1)[0] not in self.failed_modules:
                    for path in self.module_dirs:
                        shutil.rmtree(path, ignore_errors=True)
                self.module_dirs.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_TempFolders(), "jigsawpp-temp-folders")
