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
    train, val = before.get("rs_synthetic_train"), before.get("rs_synthetic_val")
    if train and val:
        builtin.register_rs_synthetic(root=train["root"], num_train=train["num_images"],
                                      num_val=val["num_images"], image_size=train["image_size"],
                                      seed=train["seed"])
