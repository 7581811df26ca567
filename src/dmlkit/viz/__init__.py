"""Pictures of an embedding and a run (matplotlib Agg canvas; nothing touches pyplot's global state).

``embedding_map`` (t-SNE by class), ``pool_map`` (labeled items by class, the unlabeled pool in grey), ``retrieval_grid`` (queries and top-k, green = same class),
``similarity_grid`` (pseudo-similarity neighbours), ``metric_curves`` and ``write_report``.
"""
from dmlkit.viz.grids import retrieval_grid, similarity_grid
from dmlkit.viz.plots import embedding_map, metric_curves, pool_map
from dmlkit.viz.report import metrics_table, write_report

__all__ = ["embedding_map", "metric_curves", "metrics_table", "pool_map", "retrieval_grid", "similarity_grid", "write_report"]
