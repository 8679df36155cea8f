"""The switchboard binary under test (``SWITCHBOARD_BIN``, as ``.ci/python`` sets it)."""

import os

import pytest


@pytest.fixture(scope="session")
def binary() -> str:
    path = os.environ.get("SWITCHBOARD_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("set SWITCHBOARD_BIN to a built switchboard binary (.ci/python BINARY does)")
    return path
