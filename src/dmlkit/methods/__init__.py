"""Method registry. Each entry maps the CLI name to ``module:Class`` (built-in methods: modules import
lazily, so that one method's optional dependency never breaks another) or to a class registered from
Python with :func:`register_method`."""
from __future__ import annotations

import importlib

from dmlkit.methods.base import BuildInfo, Method, RefreshContext

REGISTRY: dict[str, str | type[Method]] = {
    "initial": "dmlkit.methods.reference:InitialMethod",
    "supervised": "dmlkit.methods.reference:SupervisedMethod",
    "stml": "dmlkit.methods.stml:STML",
    "plm": "dmlkit.methods.plm:PLM",
    "ssdml": "dmlkit.methods.ssdml:SSDML",
    "deep-lrml": "dmlkit.methods.classical:DeepLRML",
    "deep-seraph": "dmlkit.methods.classical:DeepSERAPH",
    "deep-isdml": "dmlkit.methods.classical:DeepISDML",
    "deep-apllr": "dmlkit.methods.classical:DeepAPLLR",
    "deep-apit": "dmlkit.methods.classical:DeepAPIT",
    "slade": "dmlkit.methods.slade:SLADE",
    "drml": "dmlkit.methods.drml:DRML",
    "deepcluster": "dmlkit.methods.deepcluster:DeepCluster",
    "instance": "dmlkit.methods.instance:InstanceDiscrimination",
}


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``; a clear error for unknown or unavailable methods."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    if not isinstance(entry, str):
        return entry
    module_name, class_name = entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise KeyError(f"method '{name}' is not implemented in this version of dmlkit") from None
        raise
    return getattr(module, class_name)


def register_method(name: str, cls: type[Method], *, overwrite: bool = False) -> None:
    """Make ``cls`` trainable as ``name`` (``dmlkit.train(name, ...)``, ``dmlkit methods``) in this process.

    ``cls`` subclasses :class:`Method`: it sets ``uses_labels``, optionally a ``Config`` dataclass of
    options, and implements ``training_loss`` and ``embed`` (see ``docs/adding_a_method.md``).
    Re-using a name raises ``ValueError`` unless ``overwrite=True``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method('{name}', ...) needs a subclass of dmlkit.methods.Method, got {cls!r}")
    if not name or name != name.strip() or any(ch.isspace() for ch in name):
        raise ValueError(f"method name {name!r} must be a non-empty word without spaces")
    if name in REGISTRY and not overwrite:
        raise ValueError(f"method '{name}' is already registered; pass overwrite=True to replace it")
    REGISTRY[name] = cls


def available_methods() -> dict[str, str]:
    """``name -> first docstring line`` for every method whose module imports."""
    out = {}
    for name in REGISTRY:
        try:
            cls = method_class(name)
        except KeyError:
            continue
        out[name] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    return out


__all__ = ["REGISTRY", "BuildInfo", "Method", "RefreshContext", "available_methods", "method_class", "register_method"]
