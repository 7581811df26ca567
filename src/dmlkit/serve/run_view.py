"""A trained run opened for looking: its split embedded once, thumbnails, outside images embedded.

The run is loaded the way ``dmlkit eval`` loads it (config.yaml + a weights-only checkpoint, the same
protocol split and test subset), so the page's neighbours are the evaluator's neighbours.
"""
from __future__ import annotations

import io
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit.data.base import DatasetError, DMLDataset
from dmlkit.serve.index import RetrievalIndex

SPLITS = ("test", "train", "gallery")
THUMB_MAX = 128


def png_bytes(image: torch.Tensor, max_side: int = THUMB_MAX) -> bytes:
    """``[C, H, W]`` float in [0, 1] -> PNG bytes, shrunk (never enlarged) to at most ``max_side``."""
    from PIL import Image

    array = (image.clamp(0, 1).mul(255).round().to(torch.uint8)).numpy()
    picture = Image.fromarray(array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0)))
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, channels: int, size: int) -> torch.Tensor:
    """Image file bytes -> ``[C, size, size]`` float in [0, 1], as the dataset readers store images
    (grey or RGB, bilinear resize to the stored side); :class:`DatasetError` when PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            array = np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read the uploaded file as an image ({type(error).__name__}); "
                           "send a PNG, JPEG or another format PIL reads") from None
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


class RunView:
    """Everything the page shows of one run directory.

    Args:
        run_dir: a directory written by ``dmlkit train``.
        split: ``test`` (the evaluated split; with In-shop, queries against the gallery), ``train`` or
            ``gallery``.
        checkpoint: ``last`` or ``best``.
    """

    def __init__(self, run_dir: str | Path, split: str = "test", checkpoint: str = "last") -> None:
        if split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.run_dir = Path(run_dir).resolve()
        if not (self.run_dir / "config.yaml").is_file():  # before the engine's (slow) imports
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); pass a directory "
                                    "written by `dmlkit train --out DIR`")
        from dmlkit.engine.run import load_run, prepare_data
        from dmlkit.evaluation.embedding import embed_dataset
        from dmlkit.methods import method_class

        self.config, self.method, _ = load_run(self.run_dir / "checkpoints" / f"{checkpoint}.ckpt")
        data = prepare_data(self.config, method_class(self.config.method).uses_labels)
        chosen = {"train": data.train, "test": data.query, "gallery": data.gallery}[split]
        if chosen is None:
            raise ValueError(f"{self.config.dataset} has no '{split}' split; use --split test or train")
        self.split = split
        self.queries: DMLDataset = chosen
        self.gallery: DMLDataset = data.gallery if split == "test" and data.gallery is not None else chosen
        self._lock = threading.Lock()  # one forward pass at a time (the page may send several)

        def embed(dataset: DMLDataset) -> torch.Tensor:
            return embed_dataset(self.method.embed, dataset, modules=(self.method,))

        query = embed(self.queries)
        gallery = None if self.gallery is self.queries else embed(self.gallery)
        self.index = RetrievalIndex(query, self.queries.true_labels, gallery,
                                    None if gallery is None else self.gallery.true_labels,
                                    class_names=self.queries.class_names)
        self.thumbnail = lru_cache(maxsize=4096)(self._thumbnail)

    def _thumbnail(self, side: str, i: int) -> bytes:
        dataset = self.queries if side == "q" else self.gallery
        if not 0 <= i < len(dataset):
            raise IndexError(f"item {i} is out of range (0..{len(dataset) - 1})")
        return png_bytes(dataset.image(i))

    def embed_image(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """An outside image file -> ``(image [C, S, S], embedding [D])`` with the run's backbone and
        test-time transform (the method's ``embed``), S the size the dataset's images are stored at."""
        from dmlkit.data.images import stored_size

        size = stored_size(self.queries.image_size) if not isinstance(self.queries.images, np.ndarray) \
            else int(self.queries.images.shape[-1])
        image = decode_image(data, self.queries.channels, size)
        with self._lock, torch.no_grad():
            self.method.eval()
            embedding = self.method.embed(image.unsqueeze(0)).float()[0]
        return image, embedding

    def summary(self) -> dict[str, Any]:
        """What the page's header and metrics panel show: run, split, sizes, classes, metrics, pictures."""
        metrics_path = self.run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        pictures = [p for p in metrics.get("pictures", []) if (self.run_dir / p).is_file()]
        extra = sorted(str(p.relative_to(self.run_dir)) for p in (self.run_dir / "pictures").glob("*.png")) \
            if (self.run_dir / "pictures").is_dir() else []
        return {
            "run": self.run_dir.name, "method": self.config.method, "dataset": self.config.dataset,
            "split": self.split, "num_items": len(self.queries), "num_gallery": len(self.gallery),
            "separate_gallery": self.gallery is not self.queries, "classes": self.index.classes(),
            "has_class_names": self.queries.class_names is not None, "score_name": self.index.score_name,
            "backend": self.index.backend, "page_means": self.index.means(),
            "test": metrics.get("test", {}), "history": metrics.get("history", []),
            "pictures": pictures + [p for p in extra if p not in pictures],
            "report": (self.run_dir / "report.md").is_file(),
        }
