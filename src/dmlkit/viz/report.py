"""A short run report: ``report.md`` with the metrics table, the best/last epoch and the pictures."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

METRIC_ORDER = ("recall@", "precision@", "r_precision", "map@r", "nmi")


def ordered_metric_keys(keys: Sequence[str]) -> list[str]:
    """Recall@K by K, then P@K, RP, MAP@R, NMI, then anything else alphabetically."""
    def rank(k: str) -> tuple:
        head = next((i for i, p in enumerate(METRIC_ORDER) if k.startswith(p)), len(METRIC_ORDER))
        tail = k.split("@")[-1]
        return head, int(tail) if tail.isdigit() else 0, k

    return sorted(keys, key=rank)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{100 * v:.2f}" if 0 <= v <= 1 else f"{v:.4g}")
    return str(v)


def metrics_table(rows: Mapping[str, Mapping[str, object]]) -> str:
    """Markdown table, one row per named metric dict (fractions printed as percentages)."""
    keys = ordered_metric_keys(list(dict.fromkeys(k for m in rows.values() for k, v in m.items()
                                       if isinstance(v, (int, float)) and k.startswith(METRIC_ORDER))))
    lines = ["| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(k, "")) for k in keys) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def write_report(
    run_dir: str | Path,
    metrics: Mapping[str, object],
    history: Sequence[Mapping[str, float]] = (),
    pictures: Mapping[str, str | Path] | Sequence[str | Path] = (),
    title: str | None = None,
    select: str = "recall@1",
) -> Path:
    """Write ``run_dir/report.md`` and return its path.

    Args:
        metrics: the final metrics (``{"recall@1": ..}``) or the engine's ``{"test": {...}, ...}``.
        history: per-epoch dicts; adds "last epoch" and "best-on-test epoch by ``select``" rows
            (the latter is labelled as selection on test, EVALUATION.md §6).
        pictures: caption -> path (or a list of paths); a relative path is taken inside ``run_dir`` (as the
            engine's ``pictures/x.png``), and every link is written relative to ``run_dir``, so it opens
            from there whatever the working directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = metrics.get("test", metrics) if isinstance(metrics.get("test"), Mapping) else metrics
    rows: dict[str, Mapping[str, object]] = {"final": final}  # type: ignore[dict-item]
    scored = [h for h in history if select in h]
    if scored:
        rows[f"last epoch ({scored[-1].get('epoch', len(scored) - 1)})"] = scored[-1]
        best = max(scored, key=lambda h: h[select])
        rows[f"best-on-test by {select} (epoch {best.get('epoch', '?')}; selection on test)"] = best
    lines = [f"# {title or run_dir.name}", "", "Metrics in % (fractions × 100); Recall@K is the hit rate.", "",
             metrics_table(rows), ""]
    if isinstance(final, Mapping) and "num_lone_queries" in final:
        lines += [f"Lone queries (no other item of their class, excluded): {final['num_lone_queries']}", ""]
    if "seconds" in metrics:
        lines += [f"Wall time: {float(metrics['seconds']):.1f} s", ""]
    items = pictures.items() if isinstance(pictures, Mapping) else ((Path(p).stem, p) for p in pictures)
    for caption, p in items:
        picture = Path(p) if Path(p).is_absolute() else run_dir / p  # relative paths are the run's own
        rel = os.path.relpath(picture.resolve(), run_dir.resolve())
        lines += [f"## {caption}", "", f"![{caption}]({Path(rel).as_posix()})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
