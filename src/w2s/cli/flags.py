"""argparse options generated from config dataclasses and :class:`w2s.models.ModelSpec`.

A field ``successors_per_beam`` becomes ``--successors-per-beam``, typed from its annotation (``int``,
``float``, ``str``, ``bool`` as ``--x/--no-x``, ``X | None`` taking ``none``, ``tuple[...]`` taking one
or more values), with the field's documentation and its default as help.  :data:`ALIASES` keeps the
short names that documented commands use.  Every flag of every command comes from here, so that a
test can check that each field has a flag and each flag a field (``parser.w2s_sources``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..backends.base import SAMPLING_PRESETS, SamplingParams
from ..configs import Param, build, declared_kind, param_names, params
from ..models import PER_ROLE, REMOTE_FIELDS, ROLE_OVERRIDES, ModelSpec

# field -> older flag names that stay accepted
ALIASES = {"successors_per_beam": ["--successors"], "timeout": ["--request-timeout"]}


def _sources(parser: argparse.ArgumentParser) -> list:
    if not hasattr(parser, "w2s_sources"):
        parser.w2s_sources = []
    return parser.w2s_sources


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar(kind, name: str, allow_none: bool):
    def parse(text: str):
        if allow_none and text.lower() in ("none", "inf", "infinity"):
            return None
        try:
            return kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(
                f"{flag_name(name)} must be {what}{' or none' if allow_none else ''}, got {text!r}") from None

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


class _Items(argparse.Action):
    """A tuple option: ``--x a b`` or ``--x a --x b``; the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, "w2s_given_items", set())
        namespace.w2s_given_items = given | {self.dest}
        before = tuple(getattr(namespace, self.dest, ()) or ()) if self.dest in given else ()
        setattr(namespace, self.dest, before + tuple(values))


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)


def add_param(parser, p: Param, *, dest: str | None = None, flag: str | None = None, default=dataclasses.MISSING,
              required: bool = False, suppress: bool = False, help: str | None = None) -> None:
    """One option for the parameter ``p`` (``dest`` and ``flag`` default to its name, ``help`` to its doc)."""
    dest = dest or p.name
    default = p.default if default is dataclasses.MISSING else default
    kind, allow_none = declared_kind(p.type)
    names = [flag or flag_name(p.name), *ALIASES.get(p.name, [])]
    kw: dict = {"dest": dest}
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        kw.update(action=_Items, nargs="+", type=_scalar(item, p.name, False))
    else:
        kw["type"] = _scalar(kind, p.name, allow_none)
    if p.choices:
        kw["choices"] = list(p.choices)
    shown = "" if default is None or default is dataclasses.MISSING or required else f" (default: {_show(default)})"
    text = p.doc if help is None else help
    kw["help"] = text.replace("``", "").replace("%", "%%") + shown
    if p.positional:  # no flag: the values follow the command (a tuple takes any number of them)
        kw.pop("dest")
        kw.update(nargs="*" if "nargs" in kw else None, default=default, metavar=p.name.upper())
        kw.pop("action", None)
        parser.add_argument(dest, **kw)
        return
    if required or default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = argparse.SUPPRESS if suppress else default
    parser.add_argument(*names, **kw)


def add_config_flags(parser, *classes, defaults: dict | None = None, required=(), suppress: bool | tuple = False,
                     skip=(), title: str | None = None) -> list[str]:
    """Options for the flat parameters of ``classes`` (a name shared by several classes once); returns
    their names.  ``defaults`` overrides the classes' defaults (the command's own, e.g. the demo task's
    lengths); ``suppress`` (True, or the names it applies to) leaves parameters that are not given out of
    the parsed args."""
    defaults, seen = defaults or {}, []
    group = parser.add_argument_group(title) if title else parser
    for cls in classes:
        for p in params(cls):
            if p.name in seen or p.name in skip:
                continue
            seen.append(p.name)
            add_param(group, p, default=defaults.get(p.name, dataclasses.MISSING), required=p.name in required,
                      suppress=suppress if isinstance(suppress, bool) else p.name in suppress)
    _sources(parser).append(("config", classes, tuple(seen)))
    return seen


# the sampling parameters, whose defaults --sampling-preset sets: a command with that flag suppresses them
SAMPLING_FLAGS = tuple(param_names(SamplingParams))


def config_from_args(cls, args, **overrides):
    """An instance of ``cls`` from the parsed options that belong to it (those not given take their
    defaults, or with ``--sampling-preset NAME`` the preset's values), with ``overrides`` on top."""
    values = {p.name: getattr(args, p.name) for p in params(cls) if hasattr(args, p.name)}
    preset = SAMPLING_PRESETS[args.sampling_preset] if getattr(args, "sampling_preset", None) else {}
    preset = {k: v for k, v in preset.items() if k in param_names(cls)}
    return build(cls, {**preset, **values, **overrides})


def add_model_flags(parser, roles: dict[str, str], *, remote: tuple[str, ...] = (), required=(),
                    helps: dict[str, str] | None = None) -> None:
    """``--ROLE`` (the model's path; ``roles`` maps each role to its flag's name), ``--ROLE-template``, and
    for the roles in ``remote`` ``--ROLE-model`` and ``--ROLE-tokenizer``; then the options all models
    share (``--dtype``, ``--device``, ``--device-map``) and, with a remote role, the engine's."""
    spec = {p.name: p for p in params(ModelSpec)}
    for role, name in roles.items():
        for field in _role_fields(role, remote):
            flag = f"--{name.replace('_', '-')}" + ("" if field == "path" else f"-{field}")
            who = role.replace("_", " ")
            text = (helps or {}).get(role) if field == "path" else None
            add_param(parser, spec[field], dest=role if field == "path" else f"{role}_{field}", flag=flag,
                      default=None, required=field == "path" and role in required,
                      help=text or f"the {who} model's {field}: {spec[field].doc}")
        for field in ROLE_OVERRIDES:
            add_param(parser, spec[field], dest=f"{role}_{field}", flag=f"--{name.replace('_', '-')}-{field}",
                      default=None, help=f"the {who} model's {field} (default: --{field}).")
    group = parser.add_argument_group("remote engine (a model given as an http(s):// URL)") if remote else None
    for name in _shared_fields(remote):
        add_param(group if name in REMOTE_FIELDS else parser, spec[name])
    _sources(parser).append(("models", tuple(roles), tuple(remote)))


def _role_fields(role: str, remote) -> list[str]:
    return [f for f in PER_ROLE if role in remote or f not in REMOTE_FIELDS]


def _shared_fields(remote) -> list[str]:
    return [p.name for p in params(ModelSpec)
            if p.name not in PER_ROLE and p.name != "role" and (remote or p.name not in REMOTE_FIELDS)]


def model_specs(args, roles) -> dict[str, ModelSpec]:
    """One :class:`ModelSpec` per role from the parsed model options (a role not given: its default model)."""
    shared = {name: getattr(args, name) for name in _shared_fields(True) if hasattr(args, name)}
    specs = {}
    for role in roles:
        own = {f: getattr(args, role if f == "path" else f"{role}_{f}", None) for f in PER_ROLE + ROLE_OVERRIDES}
        specs[role] = ModelSpec(role=role, **{**shared, **{k: v for k, v in own.items() if v is not None}})
    return specs


def expected_dests(parser) -> set[str]:
    """The options ``parser``'s sources generate (for the test that each field has a flag and each flag a field)."""
    found = set()
    for kind, what, extra in getattr(parser, "w2s_sources", []):
        if kind == "config":
            found |= set(extra)
            continue
        for role in what:
            found |= {role if f == "path" else f"{role}_{f}" for f in _role_fields(role, extra)}
            found |= {f"{role}_{f}" for f in ROLE_OVERRIDES}
        found |= set(_shared_fields(extra))
    return found
