"""How much of raw pixels' R@1 on ``glyphs`` comes from near-clone faces (analysis, no change to the data)?

How much of raw pixels' R@1 on ``glyphs`` comes from near-clone faces (analysis, no change to the data).

The build keeps one of any two renders of a class closer than ``clean.NEAR`` = 0.05 (relative L1,
``sum|a - b| / mean ink``), but metric-compatible clones (Times/Helvetica/Courier in URW, TeX Gyre,
Liberation, FreeFont ...) differ by a little more and survive. For every test query of ``glyphs`` this
measures the relative L1 distance to its raw-pixel nearest neighbour, and R@1 of raw pixels when the
neighbours within 0.10 / 0.15 / 0.20 / 0.30 of the query (any class), or those drawn by the query's own
font family (its other styles), are excluded from its ranking.

    python experiments/glyphs_near_duplicates.py [--data-root PATH] [--shortlist 100]

Raw pixels as in the harness: the 64x64 test images flattened, L2-normalised, Euclidean. Exclusion looks
at each query's ``--shortlist`` nearest neighbours (a query all of whose shortlist is excluded counts as
a miss and is reported). Writes ``benchmarks/results/glyphs_near_duplicates.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import save_rows

from dmlkit.data import load_records, make_split
from dmlkit.data.glyphs.clean import NEAR

THRESHOLDS = (NEAR, 0.10, 0.15, 0.20, 0.30)


def shortlist(images: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` indices of each item's k nearest others (L2-normalised pixels, Euclidean)."""
    x = torch.nn.functional.normalize(torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)), dim=1)
    out = []
    for start in range(0, len(x), 1024):
        sim = x[start:start + 1024] @ x.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0  # not itself
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out).numpy()


def relative_l1(images: np.ndarray, query: int, others: np.ndarray) -> np.ndarray:
    """``clean.relative_distance`` of item ``query`` to each of ``others``, vectorised."""
    a = images[query].astype(np.int32).ravel()
    b = images[others].astype(np.int32).reshape(len(others), -1)
    ink = (a.sum() + b.sum(axis=1)) / 2
    return np.abs(b - a).sum(axis=1) / np.maximum(ink, 1e-9)


def analyse(images: np.ndarray, labels: np.ndarray, k: int, families: list[str] | None = None) -> dict:
    """R@1 of raw pixels as is, and with the shortlist's neighbours within each threshold (and, given
    ``families``, those of the query's own font family) excluded; nearest-neighbour distances."""
    near = shortlist(images, k)
    dist = np.stack([relative_l1(images, q, near[q]) for q in range(len(images))])
    same = labels[near] == labels[:, None]
    first = dist[:, 0]
    out = {"queries": len(images), "recall@1": float(same[:, 0].mean()),
           "nn_distance_median": float(np.median(first)),
           "nn_distance_quartiles": [float(np.quantile(first, q)) for q in (0.25, 0.75)],
           "nn_same_class_median_distance": float(np.median(first[same[:, 0]])),
           "nn_other_class_median_distance": float(np.median(first[~same[:, 0]]))}
    for t in THRESHOLDS:
        allowed = dist >= t
        pick = allowed.argmax(axis=1)
        hit = same[np.arange(len(images)), pick] & allowed.any(axis=1)
        out[f"nn_within_{t:.2f}"] = float((first < t).mean())
        out[f"hits_with_nn_within_{t:.2f}"] = float((same[:, 0] & (first < t)).mean())
        out[f"recall@1_excluding_{t:.2f}"] = float(hit.mean())
        out[f"shortlist_exhausted_{t:.2f}"] = int((~allowed.any(axis=1)).sum())
    if families is not None:
        family = np.unique(families, return_inverse=True)[1]
        other = family[near] != family[:, None]
        for name, allowed in (("same_family", other), ("same_family_or_0.15", other & (dist >= 0.15))):
            pick = allowed.argmax(axis=1)
            out[f"recall@1_excluding_{name}"] = float((same[np.arange(len(images)), pick] & allowed.any(axis=1)).mean())
            out[f"shortlist_exhausted_{name}"] = int((~allowed.any(axis=1)).sum())
    return out


def query_families(root: str | None) -> tuple[list[str], np.ndarray]:
    """The family of each test query's face and the query images, in the order of the test split."""
    import json

    from dmlkit.data.readers.glyphs import load_build, select

    folder, manifest = load_build("glyphs", root, build=False)
    rows = select(manifest, np.load(folder / "labels.npy"), "glyphs")
    _, labels = np.unique(np.load(folder / "labels.npy")[rows], return_inverse=True)
    test = rows[labels % 2 == 1]  # odd class positions are the test split
    names = [f["family"] for f in json.loads((folder / "manifest.json").read_text())["faces"]]
    return [names[f] for f in np.load(folder / "faces.npy")[test]], np.load(folder / "images.npy", mmap_mode="r")[test]


def clone_pairs(images: np.ndarray, families: list[str], within: float = 0.15, top: int = 8) -> list:
    """The most frequent (query family, neighbour family) pairs among nearest neighbours within ``within``."""
    near = shortlist(images, 1)[:, 0]
    counts: dict[tuple[str, str], int] = {}
    for q, n in enumerate(near):
        if relative_l1(images, q, near[q:q + 1])[0] < within:
            key = tuple(sorted((families[q], families[n])))
            counts[key] = counts.get(key, 0) + 1
    return sorted(([*key, v] for key, v in counts.items()), key=lambda r: -r[2])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root")
    parser.add_argument("--shortlist", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    query = make_split(load_records("glyphs", args.data_root)).query
    images = np.asarray(query.images)[:, 0]
    families, same_images = query_families(args.data_root)
    assert np.array_equal(same_images[:, 0], images)  # the faces belong to these queries
    result = analyse(images, np.asarray(query.true_labels), args.shortlist, families)
    result["nn_within_0.15_family_pairs"] = clone_pairs(images, families)
    from dmlkit.evaluation import evaluate

    pixels = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    whole = evaluate(torch.nn.functional.normalize(pixels, dim=1), query.true_labels, recall_at=(1, 2, 4, 8), seed=0)
    row = {"method": "raw-pixels", "dataset": "glyphs", "protocol": "standard", "seed": 0,
           "metrics": {**{k: float(whole[k]) for k in ("recall@2", "recall@4", "recall@8", "nmi", "map@r")},
                       **{k: v for k, v in result.items() if k.startswith("recall@1")}},
           "analysis": result, "seconds": round(time.perf_counter() - start, 1),
           "notes": f"test split; neighbours within a relative L1 distance t of the query excluded from a "
                    f"shortlist of {args.shortlist} raw-pixel neighbours"}
    save_rows("glyphs_near_duplicates", [row])
    for key, value in {**row["metrics"], **result}.items():
        print(f"{key:40s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
