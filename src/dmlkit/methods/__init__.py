"""Method registry. Each entry maps the CLI name to ``module:Class``; modules import lazily so that
one method's optional dependency never breaks another."""
from __future__ import annotations

import importlib

from dmlkit.methods.base import BuildInfo, Method, RefreshContext

REGISTRY: dict[str, str] = {
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
    module_name, class_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise KeyError(f"method '{name}' is not implemented in this version of dmlkit") from None
        raise
    return getattr(module, class_name)


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


__all__ = ["REGISTRY", "BuildInfo", "Method", "RefreshContext", "available_methods", "method_class"]
