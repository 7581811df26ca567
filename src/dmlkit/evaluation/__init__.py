"""Evaluation: one kNN search, every metric (EVALUATION.md).

``evaluate`` returns Recall@K, P@1, R-Precision, MAP@R and NMI; ``knn_search`` is the exact chunked
kNN the engine also uses for neighbour tables; ``protocols`` holds the MLRC and zero-shot helpers and
``quality`` the pseudo-supervision quality report.
"""
from dmlkit.evaluation.clustering import kmeans, nmi_score
from dmlkit.evaluation.knn import knn_search
from dmlkit.evaluation.metrics import evaluate, retrieval_scores

__all__ = ["evaluate", "knn_search", "kmeans", "nmi_score", "retrieval_scores"]
