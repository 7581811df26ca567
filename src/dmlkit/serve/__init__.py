"""``dmlkit serve RUN_DIR``: a local retrieval page over a trained run (standard-library HTTP server,
vanilla HTML/JS/CSS shipped with the package, no network needed).

Example::

    from dmlkit.serve import open_run, make_server
    server = make_server(open_run("runs/demo"), port=0)
    print(server.server_address)
    server.serve_forever()
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from dmlkit.serve.index import RetrievalIndex
from dmlkit.serve.run_view import RunView
from dmlkit.serve.server import make_server

__all__ = ["RetrievalIndex", "RunView", "make_server", "open_run", "serve"]


def open_run(run_dir: str | Path, split: str = "test", checkpoint: str = "last") -> RunView:
    """Load a run directory and embed its split (see :class:`RunView`)."""
    return RunView(run_dir, split, checkpoint)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, split: str = "test",
          checkpoint: str = "last") -> None:
    """Serve ``run_dir`` until interrupted; prints the URL (with the real port when ``port`` is 0)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    view = open_run(run_dir, split, checkpoint)
    server = make_server(view, host, port)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    print(f"dmlkit serve: {view.config.method} on {view.config.dataset}, {len(view.queries)} {split} items "
          f"({view.index.backend} kNN)", flush=True)
    print(f"open http://{shown}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dmlkit serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
