"""``dmlkit eval`` and ``dmlkit embed``: a finished run's test metrics (single or MLRC) and its embeddings as .npy."""
from __future__ import annotations

import argparse
from pathlib import Path

METRIC_ORDER = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@20", "recall@30",
                "recall@40", "recall@50", "recall@100", "recall@1000", "nmi", "precision@1", "r_precision", "map@r")


def format_metrics(metrics: dict[str, float], title: str = "") -> str:
    """A markdown table of the metrics, in the field's order, as percentages."""
    keys = [k for k in METRIC_ORDER if k in metrics]
    lines = [f"\n{title}"] if title else []
    lines.append("| " + " | ".join(k.replace("precision@1", "P@1").replace("recall@", "R@").replace("r_precision", "RP")
                                    .replace("map@r", "MAP@R").replace("nmi", "NMI") for k in keys) + " |")
    lines.append("|" + "---|" * len(keys))
    lines.append("| " + " | ".join(f"{100 * metrics[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run or checkpoint",
                       description="Embed the test split with a trained run and print the metrics. With "
                                   "--protocol mlrc, give the four fold runs: prints 'separated' (mean of four) "
                                   "and 'concatenated' (joined L2-normalised embeddings).")
    p.add_argument("runs", nargs="+", help="run directory or checkpoint file (four of them for --protocol mlrc)")
    p.add_argument("--protocol", choices=["single", "mlrc"], default="single")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")


def run_checkpoint(path: str, which: str) -> Path:
    from dmlkit.engine.rundir import resolve_latest

    p = resolve_latest(Path(path))  # runs/latest, also where it is dmlkit's text file instead of a symlink
    return p / "checkpoints" / f"{which}.ckpt" if p.is_dir() else p


def cmd_eval(args: argparse.Namespace) -> int:
    from dmlkit.engine.checkpoint import atomic_write_json
    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation import evaluate
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods import method_class

    if args.protocol == "mlrc":
        if len(args.runs) != 4:
            raise ValueError(f"--protocol mlrc needs the four fold runs, got {len(args.runs)}")
        import numpy as np

        from dmlkit.evaluation.protocols import mlrc_from_embeddings

        per_fold, labels = [], None
        for path in args.runs:
            config, method, _ = load_run(run_checkpoint(path, args.checkpoint))
            data = prepare_data(config, method_class(config.method).uses_labels)
            per_fold.append(embed_dataset(method.embed, data.query, modules=(method,)))
            if labels is not None and not np.array_equal(labels, data.query.true_labels):
                raise ValueError(f"{path} was evaluated on another test set than {args.runs[0]}; "
                                 "MLRC runs must share dataset, protocol and --test-subset")
            labels = data.query.true_labels
        result = mlrc_from_embeddings(per_fold, labels)
        for name in ("separated", "concatenated"):
            print(format_metrics(result[name], title=f"MLRC {name}"))
    else:
        config, method, _ = load_run(run_checkpoint(args.runs[0], args.checkpoint))
        data = prepare_data(config, method_class(config.method).uses_labels)
        query = embed_dataset(method.embed, data.query, modules=(method,))
        if data.gallery is None:
            result = evaluate(query, data.query.true_labels, recall_at=data.query.recall_at, seed=config.seed)
        else:
            gallery = embed_dataset(method.embed, data.gallery, modules=(method,))
            result = evaluate(gallery, data.gallery.true_labels, recall_at=data.query.recall_at, seed=config.seed,
                              query_embeddings=query, query_labels=data.query.true_labels)
        print(format_metrics(result, title=f"{config.method} on {config.dataset} — test split"))
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="write embeddings of a split to .npy",
                       description="Embed a split with a trained run; writes OUT (embeddings) and OUT with "
                                   "'.labels.npy' (ground-truth labels).")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--split", choices=["train", "test", "gallery"], default="test")
    p.add_argument("--out", required=True, help="output .npy path")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")


def cmd_embed(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from dmlkit.engine.checkpoint import atomic_write_bytes
    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods import method_class

    config, method, _ = load_run(run_checkpoint(args.run, args.checkpoint))
    data = prepare_data(config, method_class(config.method).uses_labels)
    dataset = {"train": data.train, "test": data.query, "gallery": data.gallery}[args.split]
    if dataset is None:
        raise ValueError(f"{config.dataset} has no '{args.split}' split")
    embeddings = embed_dataset(method.embed, dataset, modules=(method,)).numpy()
    for path, array in ((args.out, embeddings), (labels_path(args.out), dataset.true_labels)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.out}")
    return 0


def labels_path(path: str) -> str:
    return str(Path(path).with_suffix("")) + ".labels.npy"
