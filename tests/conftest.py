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


@pytest.fixture(autouse=True)
def _restore_builtin_dataset_registration():
    """Tests (and the scripts they run in-process) re-register the built-in datasets with
    tiny sizes; put back what was registered before each test."""
    from rs_detectron2.data import builtin

    before = {name: dict(args) for name, args in builtin._REGISTERED.items()}
    yield
    if {name: dict(args) for name, args in builtin._REGISTERED.items()} == before:
        return
    for family, (train, val) in {
        "rs_synthetic": ("rs_synthetic_train", "rs_synthetic_val"),
        "rs_synthetic_hard": ("rs_synthetic_hard_train", "rs_synthetic_hard_val"),
        "rs_synthetic_lvis": ("rs_synthetic_lvis_train", "rs_synthetic_lvis_val"),
    }.items():
        if train in before and val in before:
            t, v = before[train], before[val]
            builtin.register_rs_synthetic_family(family, t["root"], t["num_images"],
                                                 v["num_images"], t["image_size"], t["seed"])
