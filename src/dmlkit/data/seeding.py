"""The one recipe for seeded randomness: a torch Generator from a seed and any integer salts."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def seeded_generator(seed: int | Sequence[int], *salt: int) -> torch.Generator:
    """A torch Generator seeded from ``seed`` (an int or a sequence of ints) and any integers (epoch,
    round, rank ...), mixed by :class:`numpy.random.SeedSequence` so nearby seeds give unrelated streams."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    value = int(np.random.SeedSequence([*seeds, *salt]).generate_state(1)[0])
    gen = torch.Generator()
    gen.manual_seed(value)
    return gen
