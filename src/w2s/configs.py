"""Config dataclasses as flat parameters: what ``w2s``'s flags and the server's ``"w2s"`` block are made of.

Every method is a frozen dataclass whose fields are documented in its docstring's ``Attributes:``
section.  A field holding a dataclass (``sampling: SamplingParams``) is *embedded*: its fields appear
flat beside the others (``temperature``, not ``sampling.temperature``), so a command line, a TOML
table or a request gives ``{"beam_width": 4, "temperature": 0.7}`` and :func:`build` puts each value
where it belongs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from functools import lru_cache


# older method names still accepted (Python, command line, server), with a deprecation warning
METHOD_ALIASES = {"base": "sampling"}


def canonical_method(name):
    """The method's name for ``name``; an old one (:data:`METHOD_ALIASES`) is warned about."""
    if isinstance(name, str) and name in METHOD_ALIASES:
        import warnings

        warnings.warn(f"method {name!r} is now called {METHOD_ALIASES[name]!r}; the old name will go.",
                      DeprecationWarning, stacklevel=3)
        return METHOD_ALIASES[name]
    return name


def _documented(cls) -> dict[str, str]:
    """``name: text`` entries of the ``Attributes:`` sections of ``cls`` and its bases (the nearest wins);
    ``a, b: text`` documents both."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        match = re.search(r"^(\s*)Attributes:\s*\n(.*?)(?=^\1\S|\Z)", doc, re.S | re.M)
        if not match:
            continue
        entry_indent, name, lines = None, None, []
        for line in match.group(2).splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            head = re.match(r"\s*([a-z_][a-z0-9_]*(?:\s*,\s*[a-z_][a-z0-9_]*)*)\s*:\s*(.*)", line)
            if head and (entry_indent is None or indent <= entry_indent):
                if name:
                    docs.update(dict.fromkeys(name, " ".join(lines)))
                entry_indent, name = indent, [n.strip() for n in head.group(1).split(",")]
                lines = [head.group(2).strip()]
            elif name:
                lines.append(line.strip())
        if name:
            docs.update(dict.fromkeys(name, " ".join(lines)))
    return docs


def field_docs(cls) -> dict[str, str]:
    """Each init field of the dataclass ``cls`` -> its documentation; a field left undocumented is an error."""
    docs = _documented(cls)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in docs]
    if missing:
        raise TypeError(f"{cls.__name__} does not document its fields {missing} in its Attributes: section.")
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.init}


@dataclasses.dataclass(frozen=True)
class Param:
    """One flat parameter of a config class."""

    name: str
    type: object  # the resolved annotation, e.g. int | None
    default: object  # dataclasses.MISSING when required
    doc: str
    owner: type  # the dataclass that holds the field (the config, or an embedded one)
    choices: tuple = ()  # the allowed values, when the field's metadata names them
    positional: bool = False  # a command-line argument without a flag (metadata {"positional": True})


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


@lru_cache(maxsize=None)  # read at every build (each server request): the annotations are resolved once
def embedded(cls) -> dict[str, type]:
    """The fields of ``cls`` that hold an embedded config dataclass -> that class."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if f.init and isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}


@lru_cache(maxsize=None)
def params(cls) -> tuple[Param, ...]:
    """The flat parameters of the config class ``cls``, in field order (an embedded class's in its place)."""
    hints, docs, inner, out = _hints(cls), field_docs(cls), embedded(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in inner:
            out += params(inner[f.name])
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        out.append(Param(f.name, hints[f.name], default, docs[f.name], cls, tuple(f.metadata.get("choices", ())),
                         bool(f.metadata.get("positional"))))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}'s flat parameters repeat a name: {names}.")
    return tuple(out)


def param_names(cls) -> list[str]:
    return [p.name for p in params(cls)]


def build(cls, values: dict, where: str = ""):
    """An instance of ``cls`` from flat ``values`` (missing ones take their defaults); an unknown name is
    a ``ValueError`` naming it and the allowed ones."""
    unknown = sorted(set(values) - set(param_names(cls)))
    if unknown:
        raise ValueError(f"{where or cls.__name__} has no parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; its parameters are {', '.join(param_names(cls))}.")
    return _build(cls, values)


def _build(cls, values: dict):
    kw = {}
    inner = embedded(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in inner:
            mine = {k: v for k, v in values.items() if k in param_names(inner[f.name])}
            if mine:
                kw[f.name] = _build(inner[f.name], mine)
        elif f.name in values:
            kw[f.name] = _as_declared(f, values[f.name])
    return cls(**kw)


def _as_declared(f: dataclasses.Field, value):
    """An integer given for a float parameter (JSON ``1`` for ``1.0``), as the float the code computes with:
    torch refuses Python integers beyond 64 bits.  One too large for a float is a ValueError naming it."""
    if isinstance(value, int) and not isinstance(value, bool) and str(f.type).split(" | ")[0] == "float":
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{f.name} must be a finite number, got an integer of {len(str(abs(value)))} "
                             "digits.") from None
    return value


def flatten(config) -> dict:
    """The flat parameter values of a config instance (the inverse of :func:`build`)."""
    out = {}
    inner = embedded(type(config))
    for f in dataclasses.fields(config):
        if f.init:
            value = getattr(config, f.name)
            out.update(flatten(value) if f.name in inner else {f.name: value})
    return out


def declared_kind(kind) -> tuple[object, bool]:
    """(the type inside ``X | None``, whether None is allowed) of a parameter's annotation."""
    import types

    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return kind, False


def parse_value(p: Param, value, name: str | None = None):
    """``value`` as the declared type of parameter ``p``, from text (``key=value`` lists: lm-evaluation-harness's
    ``--model_args``) or from a value a caller already parsed out of such text (``"2"`` may arrive as ``2``,
    ``"none"`` as ``None``).  ``none`` (and ``inf`` for a number) is None where the parameter allows it; a tuple
    takes a list, or one value (numbers: several separated by spaces).  A value that is none of these is a
    ``ValueError`` naming the parameter (``name``, by default ``p.name``); ranges are checked by the config."""
    name = name or p.name
    kind, allow_none = declared_kind(p.type)
    numeric = kind in (int, float)
    if allow_none and (value is None or (isinstance(value, str) and value.strip().lower() in
                                         (("none", "inf", "infinity") if numeric else ("none",)))
                       or (numeric and isinstance(value, float) and value == float("inf"))):
        return None
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(value, str):
            value = value.split() if item in (int, float) else [value]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_parse_scalar(item, v, name, False) for v in value)
    return _parse_scalar(kind, value, name, allow_none)


def _parse_scalar(kind, value, name: str, allow_none: bool):
    none = " or none" if allow_none else ""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    if kind in (int, float):
        what = "an integer" if kind is int else "a number"
        if isinstance(value, bool):
            raise ValueError(f"{name} must be {what}{none}, got {value!r}.")
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name} must be {what}{none}, got {value!r}.")
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):  # JSON text (extra_body) that the caller parsed
            import json

            return json.dumps(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{name} must be text{none}, got {value!r}.")
    return value
