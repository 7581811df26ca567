"""The training engine: one loop (Lightning) for every method, run directories, checkpoints."""
from dmlkit.engine.config import ConfigError, RunConfig, resolve_config
from dmlkit.engine.run import load_run, run, train

__all__ = ["ConfigError", "RunConfig", "load_run", "resolve_config", "run", "train"]
