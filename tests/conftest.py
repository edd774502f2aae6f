"""Test settings: slow end-to-end tests run only when RS_RUN_SLOW=1."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RS_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: set RS_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
