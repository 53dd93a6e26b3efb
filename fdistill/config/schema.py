"""Typed configs: dataclass schemas with help strings, YAML presets, dotted overrides and one-line errors.

Every command's settings are one dataclass schema whose fields are declared with :func:`opt` (default + help).
:func:`load` (= :func:`merge_layers` then :func:`to_dataclass`) merges, in order, the schema defaults, a YAML preset
and ``key=value`` overrides; an unknown key or a value of the wrong type raises :class:`ConfigError` with one line
naming the key and what is accepted. :func:`options_help` lists every key with its help and default (``--help``
epilogs are generated from it, so they cannot disagree with the schema). Commands whose command line is ``--flags``
use :func:`add_flags` / :func:`from_flags` instead of ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING as DC_MISSING
from dataclasses import Field, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

__all__ = [
    "MISSING",
    "ConfigError",
    "add_flags",
    "checkpoint_every_opt",
    "from_flags",
    "known_keys",
    "load",
    "merge_layers",
    "opt",
    "options_help",
    "resume_opt",
    "to_dataclass",
]


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line meant for the user."""


def opt(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002
    """A dataclass field with a help string (``--help``); lists and dicts are copied per instance. ``default`` may be
    ``MISSING`` (a required key / flag). Extra ``metadata`` is kept, e.g. ``choices=(...)`` or ``flag="--data"``
    (:func:`add_flags`)."""
    meta = {"help": help, **metadata}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def checkpoint_every_opt(default: int = 200) -> Any:
    """``checkpoint_every`` of the plain-PyTorch ``--flags`` trainers that resume (:mod:`fdistill.train.resumable`)."""
    return opt(
        default, "steps between resumable checkpoints in OUT.run (also at a SIGTERM stop and at the end); 0 = only then"
    )


def resume_opt() -> Any:
    """``resume`` of the plain-PyTorch ``--flags`` trainers that resume (:mod:`fdistill.train.resumable`)."""
    return opt(
        None,
        "continue an interrupted run: 'latest' (OUT.run's newest checkpoint) or a checkpoint folder; None = start"
        " fresh (refused while OUT.run holds an interrupted run's checkpoints)",
    )


def _keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if is_dataclass(value) else [prefix + f.name]
    return out


def _instance(schema: type) -> Any:
    """``schema()`` with required (``MISSING``) fields left as the ``"???"`` marker."""
    required = {f.name: MISSING for f in fields(schema) if f.default is DC_MISSING and f.default_factory is DC_MISSING}
    return schema(**required)


def known_keys(schema: type) -> list[str]:
    """Every dotted key of the config dataclass ``schema``."""
    return _keys(_instance(schema))


def options_help(schema: type, width: int = 26) -> str:
    """One line per dotted key of ``schema``: ``  key   help (default: value)``, in declaration order."""
    lines: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            shown = "required" if value == MISSING else f"default: {value!r}"
            help_ = f.metadata.get("help", "")
            lines.append(f"  {prefix + f.name:<{width}} {help_} ({shown})")

    walk(_instance(schema), "")
    return "\n".join(lines)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _friendly(err: OmegaConfBaseException, where: str, schema: type) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = (getattr(err, "msg", None) or str(err) or type(err).__name__).strip().splitlines()[0]
    if "not in" in msg or "Missing key" in msg or "Key '" in msg:
        keys = known_keys(schema)
        close = difflib.get_close_matches(key, keys, n=3)
        section = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [k[len(section) :] for k in keys if k.startswith(section) and "." not in k[len(section) :]]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ConfigError(
            f"{where}: unknown config key {key!r}.{hint} Accepted in this section: {', '.join(siblings)}"
        )
    return ConfigError(f"{where}: bad value for {key!r}: {msg}")


def merge_layers(schema: type, path: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- YAML preset ``path`` <- ``key=value`` overrides; one-line :class:`ConfigError`s."""
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            layers.append((str(p), OmegaConf.load(p)))
        except Exception as e:  # yaml errors
            raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    sections = {k.split(".", 1)[0]: k for k in reversed(known_keys(schema)) if "." in k}  # section -> its first key
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=500)")
        if (key := item.split("=", 1)[0].strip()) in sections:
            raise ConfigError(f"override {item!r}: {key} is a section; set its keys, e.g. {sections[key]}=...")
        try:
            layers.append((f"override {item!r}", OmegaConf.from_dotlist([item])))
        except Exception as e:  # OmegaConf grammar errors, and anything else it raises on odd text
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
    merged = OmegaConf.structured(schema)
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise _friendly(e, where, schema) from None
        except (TypeError, ValueError) as e:  # e.g. a list merged into a dict field
            raise ConfigError(f"{where}: {_first_line(e)}") from None
    return merged


def to_dataclass(merged: DictConfig, schema: type) -> Any:
    """The merged tree as a ``schema`` instance; a missing required key or a failed conversion is a ConfigError."""
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _friendly(e, "config", schema) from None
    except (TypeError, ValueError) as e:  # a resolver or conversion failing outside OmegaConf's own errors
        raise ConfigError(f"config: {_first_line(e)}") from None


def load(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Schema defaults <- YAML preset ``path`` <- ``key=value`` overrides, as a ``schema`` instance (no validation
    beyond types: each command checks its own ranges)."""
    return to_dataclass(merge_layers(schema, path, overrides), schema)


# ---- the --flags bridge ------------------------------------------------------------------------------------------


def _scalar_type(annotation: Any) -> tuple[Any, bool]:
    """``(element type, is_list)`` of a field annotation: ``int | None`` -> (int, False), ``list[float]`` ->
    (float, True)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _scalar_type(rest[0]) if len(rest) == 1 else (str, False)
    if origin in (list, tuple, Sequence):
        return (args[0] if args else str), True
    return annotation, False


def _flag(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def add_flags(parser: argparse.ArgumentParser, schema: type) -> argparse.ArgumentParser:
    """One ``--field-name`` option per (flat) field of ``schema``: type, default and help from the dataclass
    (help gets `` (default: X)`` appended; a ``MISSING`` default makes the flag required; metadata ``choices`` and
    ``flag`` are honoured). ``bool`` fields defaulting to False are ``store_true`` switches, True ones get
    ``--no-...`` too. Returns ``parser``."""
    hints = typing.get_type_hints(schema)
    defaults = _instance(schema)
    for f in fields(schema):
        kind, is_list = _scalar_type(hints[f.name])
        default = getattr(defaults, f.name)
        help_ = f.metadata.get("help", "").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name}
        if default == MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            help_ += f" (default: {default})" if not (kind is bool and default is False) else ""
        if kind is bool:
            kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind if kind in (int, float, str) else str
            if is_list:
                kwargs["nargs"] = "+"
        if "choices" in f.metadata:
            kwargs["choices"] = tuple(f.metadata["choices"])
        parser.add_argument(_flag(f), help=help_, **kwargs)
    return parser


def from_flags(args: argparse.Namespace, schema: type[T]) -> T:
    """The ``schema`` instance of parsed :func:`add_flags` options (other attributes of ``args`` are ignored)."""
    return schema(**{f.name: getattr(args, f.name) for f in fields(schema) if hasattr(args, f.name)})
