import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DMLKIT_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture()
def dataset_registry():
    """dmlkit's dataset registry, restored after the test (``register_dataset`` changes it process-wide)."""
    from dmlkit.data import registry
    from tests.data_fixtures import restored_dataset_registry

    with restored_dataset_registry():
        yield registry
