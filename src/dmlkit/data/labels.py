"""The one label map: visible class labels -> contiguous class ids 0..C-1 (for proxy and weight tables)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def label_map(labels: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    """A lookup table ``[max_label + 1]`` (long): ``table[y]`` is the rank of class ``y`` among the distinct
    labels ``>= 0`` of ``labels`` (sorted), and -1 for values that are not among them. Unlabeled items
    (-1) are ignored; ``labels`` without any label gives an empty table.

    Example: labels ``[7, -1, 3, 7]`` -> table ``[-1, -1, -1, 0, -1, -1, -1, 1]``.
    """
    values = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    classes = torch.unique(values[values >= 0])
    if len(classes) == 0:
        return torch.zeros(0, dtype=torch.long)
    table = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    table[classes] = torch.arange(len(classes))
    return table
