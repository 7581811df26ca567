"""Shared pieces of the hypothesis fuzz tests: settings and degenerate point families."""
import torch
from hypothesis import HealthCheck, settings

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
KINDS = ("random", "duplicates", "identical", "zeros", "some_zero_rows", "huge", "tiny", "two_clusters")


def points(n: int, d: int, kind: str, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[n, d]`` points of one degenerate family (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    if kind == "duplicates":
        x = x[torch.randint(0, max(1, n // 2), (n,), generator=g)]
    elif kind == "identical":
        x = x[:1].expand(n, d).clone()
    elif kind == "zeros":
        x = torch.zeros(n, d, dtype=dtype)
    elif kind == "some_zero_rows":
        x[torch.rand(n, generator=g) < 0.4] = 0.0
    elif kind == "huge":
        x = x * 1e4
    elif kind == "tiny":
        x = x * 1e-6
    elif kind == "two_clusters":
        x = torch.where(torch.arange(n)[:, None] % 2 == 0, 1.0, -1.0).to(dtype) + 1e-3 * x
    return x


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())
