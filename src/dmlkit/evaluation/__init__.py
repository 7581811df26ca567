"""Evaluation: one kNN search, every metric (EVALUATION.md).

* ``evaluate`` — Recall@K, P@K, R-Precision, MAP@R, NMI (+ ``num_lone_queries``);
* ``knn_search`` / ``neighbour_table`` — the exact chunked kNN the engine also uses;
* ``protocols`` — ``mlrc_aggregate``, ``mlrc_from_embeddings``;
* ``quality`` — pseudo-supervision purity / correlation (``quality_table``, ``format_quality_table``).
"""
from dmlkit.evaluation.clustering import kmeans, nmi_score
from dmlkit.evaluation.knn import knn_search, neighbour_table
from dmlkit.evaluation.metrics import evaluate, retrieval_scores
from dmlkit.evaluation.protocols import mlrc_aggregate, mlrc_from_embeddings
from dmlkit.evaluation.quality import format_quality_table, quality_table

__all__ = [
    "evaluate",
    "format_quality_table",
    "kmeans",
    "knn_search",
    "mlrc_aggregate",
    "mlrc_from_embeddings",
    "neighbour_table",
    "nmi_score",
    "quality_table",
    "retrieval_scores",
]
