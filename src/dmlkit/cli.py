"""The ``dmlkit`` command line: train, eval, embed, quality, serve, methods, options, datasets, presets.

Exit codes: 0 success; 2 bad input (dataset, config, checkpoint, options, run directory) with one error
line that names the problem and the fix (``-v`` adds the traceback); 3 a non-finite loss (the message
names the step, the method and the last good checkpoint); 130 Ctrl-C (names the epoch, the step and the
last checkpoint). docs/troubleshooting.md lists every error line and its fix.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting steal the cores of a shared or busy CPU (EfficientNet-Lite0 ran
# 6-13x slower on a loaded 2-core machine); passive waiting costs nothing on an idle one. It must be
# set before torch (its OpenMP runtime) loads, so here, at the top of the entry point; a value the
# user exported wins (docs/speed.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dmlkit.cli_eval import add_embed, add_eval, cmd_embed, cmd_eval, format_metrics

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130

def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a method and evaluate it",
        description="Train METHOD on DATASET, evaluate on the test split every --eval-every epochs, and write "
                    "a run directory (config.yaml, checkpoints/, logs/, metrics.json, pictures/, report.md).",
        epilog="examples:\n"
               "  dmlkit train --preset demo --out runs/demo\n"
               "  dmlkit train --method stml --dataset fashion-mnist --epochs 20 --out runs/stml\n"
               "  dmlkit train --method ssdml --dataset fashion-mnist --labels-per-class 10 --out runs/ssdml\n"
               "  dmlkit train --method stml --dataset cub200 --data-root /data --set sigma=3 --out runs/cub",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", help="method name (`dmlkit methods`); default stml")
    p.add_argument("--dataset", help="fashion-mnist, mnist, cifar10, digits, cub200, cars196, sop, inshop, "
                                     "folder:PATH or csv:PATH (`dmlkit datasets`); default fashion-mnist")
    p.add_argument("--preset", help="a preset name (`dmlkit presets`) or YAML path; flags override it")
    p.add_argument("--protocol", choices=["standard", "zero-shot"],
                   help="standard: train split -> test split; zero-shot: first half of the classes -> second half")
    p.add_argument("--labels-per-class", type=int, help="keep N labels per class, the rest unlabeled (seeded)")
    p.add_argument("--fold", type=int, help="MLRC fold 0-3: train on the other folds, validate on this one")
    p.add_argument("--val-fraction", type=float, help="hold out this fraction of each class for validation")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", type=int, help="evaluate every N epochs (and after the last)")
    p.add_argument("--train-subset", type=int, help="train on a stratified subset of N items (quick runs)")
    p.add_argument("--test-subset", type=int, help="evaluate on a stratified subset of N test items")
    p.add_argument("--data-root", help="where datasets live (else $DMLKIT_DATA, system packages, ~/.cache/dmlkit)")
    p.add_argument("--out", help="run directory (default: a new runs/<date>-<time>-<method>-<dataset>, and "
                                 "runs/latest points at it); an existing non-empty one needs --resume or --overwrite")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default runs/latest) from its last checkpoint; --epochs may "
                        "raise the total, settings of the recipe cannot change")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dmlkit run in --out (only a directory dmlkit created; other files stay)")
    p.add_argument("--accelerator", help="auto, cpu or gpu")
    p.add_argument("--devices", type=int, help="number of devices/processes (DDP when > 1)")
    p.add_argument("--strategy", help="auto or ddp")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--on-nan", choices=["stop", "skip"], help="stop (default, exit 3) or skip a batch whose loss is not finite")
    p.add_argument("--no-pictures", action="store_true", help="skip the embedding map, retrieval grid and curves")
    p.add_argument("--picture-every", type=int, help="also draw the test embedding map every N epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting or a method option (e.g. --set sigma=2 --set epochs=5)")


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    from dmlkit.engine.config import parse_overrides

    settings: dict[str, Any] = {}
    mapping = {"method": "method", "dataset": "dataset", "preset": "preset", "protocol": "protocol",
               "labels_per_class": "labels_per_class", "fold": "fold", "val_fraction": "val_fraction",
               "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
               "eval_every": "eval_every", "train_subset": "train_subset", "test_subset": "test_subset",
               "data_root": "data_root", "out": "out", "accelerator": "accelerator", "devices": "devices",
               "strategy": "strategy", "threads": "threads", "on_nan": "on_nan", "picture_every": "picture_every"}
    for attr, key in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            settings[key] = value
    if args.no_pictures:
        settings["pictures"] = False
    if args.no_progress:
        settings["progress"] = False
    overrides = parse_overrides(args.set)
    options = overrides.pop("options", {})
    settings.update(overrides)
    if options:
        settings["options"] = options
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    from dmlkit.engine.config import ConfigError, resolve_config
    from dmlkit.engine.run import run

    settings = _train_settings(args)
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    if args.resume:
        from dmlkit.engine.resume import resume_config

        config = resume_config(settings.pop("out", None) or "runs/latest", settings)
    else:
        config = resolve_config(settings)
    result = run(config, resume=bool(args.resume), overwrite=args.overwrite)
    if result:
        print(format_metrics(result["test"], title=f"{config.method} on {config.dataset} ({config.protocol}), "
                                                    f"{result['seconds']:.0f} s — test split"))
        print(f"run directory: {config.out}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from dmlkit.methods import REGISTRY, available_methods

    available = available_methods()
    for name in REGISTRY:
        print(f"{name:14s} {available.get(name, '(not in this version)')}")
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    from dmlkit.engine.validate import method_options
    from dmlkit.methods.options import format_option_docs

    method_options(args.method, {})  # an unknown method: one error line with the nearest name
    print(format_option_docs(args.method))
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list the dataset readers, describe one, or build one",
                       description="Without NAME: list the dataset names. With NAME: each split's class and image "
                                   "counts. `build glyphs` / `build glyphs-large`: render that variant from its "
                                   "pinned font list (core / large).",
                       epilog="examples:\n  dmlkit datasets\n  dmlkit datasets fashion-mnist --json\n"
                              "  dmlkit datasets build glyphs\n  dmlkit datasets build glyphs-large --data-root /data\n"
                              "  dmlkit datasets folder:photos --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="NAME", help="a dataset name, or `build glyphs|glyphs-large`")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--data-root", help="where datasets live (else $DMLKIT_DATA, system packages, ~/.cache/dmlkit)")
    p.add_argument("--force", action="store_true", help="with build: rebuild even if a build exists")


def cmd_datasets(args: argparse.Namespace) -> int:
    from dmlkit.data import list_datasets, load_records
    from dmlkit.data.summary import summarize

    if not args.words:
        for name, description in list_datasets().items():
            print(f"{name:16s} {description}")
        return 0
    if args.words[0] == "build":
        from dmlkit.data.readers.glyphs import VARIANTS, build_variant

        if len(args.words) != 2 or args.words[1] not in VARIANTS:
            raise ValueError("usage: dmlkit datasets build glyphs|glyphs-large [--force] [--data-root PATH]; "
                             "only the glyphs variants are built")
        variant = args.words[1]
        folder, manifest = build_variant(variant, args.data_root, force=args.force)
        if manifest is None:
            print(f"{variant} is already built in {folder}; pass --force to rebuild")
        else:
            print(f"{variant}: {manifest['counts']['classes']} classes, {manifest['counts']['images']} images from "
                  f"{manifest['counts']['faces_used']} font faces in {manifest['seconds']:.0f} s -> {folder}")
        return 0
    if len(args.words) != 1:
        raise ValueError(f"dmlkit datasets takes one NAME (or `build glyphs`), got {' '.join(args.words)}")
    summary = summarize(load_records(args.words[0], args.data_root))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['name']}: {summary['images']} images, {summary['classes']} classes, "
              f"{summary['image_size']}x{summary['image_size']}x{summary['channels']}")
        for tag, counts in summary["splits"].items():
            print(f"  {tag:8s} {counts['classes']:6d} classes {counts['images']:8d} images")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from dmlkit.engine.config import list_presets

    for name, description in list_presets().items():
        print(f"{name:32s} {description}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from dmlkit.models.backbones import backbone_table

    print(backbone_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmlkit",
        description="Deep metric learning with few or no labels: STML, PLM, SSDML (+5 classical baselines), "
                    "SLADE, DRML; one engine, one evaluator (Recall@K, NMI, P@1, R-Precision, MAP@R).",
        epilog="Start with: dmlkit train --preset demo --out runs/demo")
    from dmlkit import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="more logging, and tracebacks with errors")
    parser.add_argument("--version", action="version", version=f"dmlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    add_eval(sub)
    add_embed(sub)
    _add_quality(sub)
    _add_serve(sub)
    sub.add_parser("methods", help="list the methods")
    sub.add_parser("options", help="list a method's options: type, default, meaning").add_argument(
        "method", help="method name (`dmlkit methods`)")
    _add_datasets(sub)
    sub.add_parser("presets", help="list the shipped YAML presets")
    sub.add_parser("backbones", help="list the backbones: parameters, input size, pretrained weights on this machine")
    return parser


def _add_quality(sub) -> None:
    p = sub.add_parser("quality", help="pseudo-supervision quality report",
                       description="Label purity and correlation with the ground-truth same-class indicator of "
                                   "pseudo-supervision (k-means, agglomerative, and the run's method where it "
                                   "defines one) on a run's training embeddings or an embedding file.")
    p.add_argument("source", help="run directory, or an embeddings .npy (labels from --labels or NAME.labels.npy)")
    p.add_argument("--labels", help="labels .npy for an embeddings file")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--max-items", type=int, default=5000, help="items drawn for the report (seeded)")
    p.add_argument("--batch-size", type=int, default=120, help="items per pseudo-supervision batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels-per-class", type=int, default=5,
                   help="labels revealed per class to estimators that read some (SSDML's propagation), unless "
                        "the run is semi-supervised: then its own labels (default 5, the papers' CUB setting)")
    p.add_argument("--over-epochs", action="store_true",
                   help="print the quality a run recorded during training (train with --set quality_every=1); "
                        "reads metrics.json, computes nothing")


def cmd_quality(args: argparse.Namespace) -> int:
    from dmlkit.engine.quality import over_epochs_report, run_quality

    print(over_epochs_report(args.source) if args.over_epochs else run_quality(args))
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local retrieval page over a trained run",
                       description="Embed a run's split and serve a page at http://HOST:PORT/: browse the images, "
                                   "click one to see its nearest neighbours (green = same class), its R@1 and AP, "
                                   "query with an uploaded image, filter by class, worst queries first, and the "
                                   "run's metrics and pictures. Works offline; serves only the run directory.")
    p.add_argument("run", help="run directory written by `dmlkit train`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port, printed)")
    p.add_argument("--split", choices=["test", "train", "gallery"], default="test")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")


def cmd_serve(args: argparse.Namespace) -> int:
    from dmlkit.serve import serve

    serve(args.run, host=args.host, port=args.port, split=args.split, checkpoint=args.checkpoint)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "embed": cmd_embed, "quality": cmd_quality,
            "methods": cmd_methods, "options": cmd_options, "datasets": cmd_datasets, "presets": cmd_presets,
            "serve": cmd_serve, "backbones": cmd_backbones}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except BaseException as error:  # each kind maps to one line and an exit code; others re-raise
        code = _error_line(error, args)
        if code is None or args.verbose or os.environ.get("DMLKIT_DEBUG"):
            raise
        return code


def _error_line(error: BaseException, args: argparse.Namespace) -> int | None:
    """Print the one line for ``error`` and return the exit code; None for an unexpected error."""
    from dmlkit.data.base import DatasetError
    from dmlkit.engine.checkpoint import CheckpointError
    from dmlkit.engine.config import ConfigError
    from dmlkit.engine.module import NonFiniteLossError
    from dmlkit.engine.rundir import RunInterrupted

    if isinstance(error, RunInterrupted):
        print(f"dmlkit: interrupted at epoch {error.epoch}, step {error.step}; {_last_checkpoint(error.out)}; "
              f"continue with `dmlkit train --resume --out {error.out}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, KeyboardInterrupt):
        print("dmlkit: interrupted before training started; nothing to continue, run the command again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, NonFiniteLossError):
        out = Path(getattr(error, "run_dir", None) or getattr(args, "out", None) or ".")
        print(f"dmlkit: error: {error}; {_last_checkpoint(out, good=True)}. Lower the learning rate, or pass "
              "--on-nan skip", file=sys.stderr)
        return EXIT_NONFINITE
    if isinstance(error, (DatasetError, ConfigError, CheckpointError, KeyError, ValueError, ImportError)):
        print(f"dmlkit: error: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, OSError):  # FileNotFoundError with our message, or a write the system refused
        text = f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
        print(f"dmlkit: error: {text}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return None


def _last_checkpoint(out: Path, good: bool = False) -> str:
    pointer = out / "checkpoints" / "latest.json"
    try:
        last = json.loads(pointer.read_text())
        return f"last{' good' if good else ''} checkpoint: {out}/checkpoints/{last['last']} (epoch {last['epoch']})"
    except (OSError, ValueError, KeyError):
        return "no checkpoint was written yet"


if __name__ == "__main__":
    sys.exit(main())
