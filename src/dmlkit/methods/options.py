"""A method's options as documentation: name, type, default and one-line meaning.

The meaning is the comment after the field in the method's option dataclass (for a field written over
several lines, the comment inside it): the dataclass is the single source, for ``dmlkit options``
and for the run's config.yaml alike.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from typing import NamedTuple


class OptionDoc(NamedTuple):
    name: str
    type: str
    default: object
    meaning: str


def _field_comments(cls: type) -> dict[str, str]:
    """``field -> comment`` for the annotated fields of ``cls`` and its dataclass bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined where no source file exists (an interactive session)
            continue
        comments: dict[int, str] = {}
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string.lstrip("#").strip()
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found = [comments[line] for line in range(node.lineno, node.end_lineno + 1) if line in comments]
                if found:
                    out[node.target.id] = " ".join(found)
    return out


def _type_name(hint: object) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def option_docs(method: str) -> list[OptionDoc]:
    """Every option of ``method`` in declaration order."""
    from dmlkit.methods import method_class

    cls = method_class(method)
    if cls.Config is None:
        return []
    hints = typing.get_type_hints(cls.Config)
    comments = _field_comments(cls.Config)
    docs = []
    for field in dataclasses.fields(cls.Config):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        docs.append(OptionDoc(field.name, _type_name(hints[field.name]), default, comments.get(field.name, "")))
    return docs


def format_option_docs(method: str) -> str:
    """The table ``dmlkit options METHOD`` prints."""
    docs = option_docs(method)
    if not docs:
        return f"method '{method}' takes no options"
    rows = [(d.name, d.type, repr(d.default), d.meaning) for d in docs]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:{widths[0]}}  {r[1]:{widths[1]}}  {r[2]:{widths[2]}}  {r[3]}" for r in rows)
