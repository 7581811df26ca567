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
