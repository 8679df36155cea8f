"""Fixtures: the real switchboard binary (``SWITCHBOARD_BIN``, as ``.ci/python`` sets it),
started once per test module on free loopback ports with a throwaway database."""

import os
from typing import Iterator

import pytest

from switchboard_client.testing import Switchboard, run_switchboard


@pytest.fixture(scope="session")
def binary() -> str:
    path = os.environ.get("SWITCHBOARD_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("set SWITCHBOARD_BIN to a built switchboard binary (.ci/python BINARY does)")
    return path


@pytest.fixture(scope="module")
def switchboard(binary: str) -> Iterator[Switchboard]:
    with run_switchboard(binary) as server:
        yield server
