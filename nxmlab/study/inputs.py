"""The one validation layer for user input: CLI arguments, config files and notebook parameters.

Every value a user gives goes through :func:`coerce` against the type of its dataclass
field before anything is written:

* booleans are ``true``/``false`` (also ``yes``/``no``, ``t``/``f``, ``y``/``n``, ``1``/``0``,
  case-insensitive, as ``HfArgumentParser`` reads them on the command line); any other
  text is refused, so ``kd: "false"`` means false and ``train="maybe"`` is an error;
* numbers are ``int``/``float`` values or text that parses as one (YAML reads ``5e-5``
  as text); NaN and infinities are refused; an integer field refuses ``2.5``;
* text fields refuse numbers, lists and mappings.

A bad value raises :class:`InputError`, a ``ValueError`` whose message names the field,
the value and where it came from; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["InputError", "parse_bool", "parse_number", "coerce", "coerce_dataclass", "read_config_file",
           "check_training_ranges", "TRUE_WORDS", "FALSE_WORDS", "SEED_MAX"]

#: Text read as true / false (case-insensitive); the words ``HfArgumentParser`` accepts.
TRUE_WORDS = ("true", "yes", "on", "t", "y", "1")
FALSE_WORDS = ("false", "no", "off", "f", "n", "0")
#: The largest seed: Trainer seeds numpy, whose seeds are 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1


class InputError(ValueError):
    """Bad user input: one line naming the field and the value (exit status 2 on the CLI)."""


def _where(source: str | None) -> str:
    return f" (in {source})" if source else ""


def parse_bool(name: str, value: Any, source: str | None = None) -> bool:
    """``value`` as a bool: a bool, the integers 0 and 1, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS`.

    Raises:
        InputError: anything else, e.g. ``"maybe"``, ``2`` or ``None``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise InputError(f"{name} must be true or false, got {value!r}{_where(source)}")


def parse_number(name: str, value: Any, integer: bool = False, source: str | None = None) -> int | float:
    """``value`` as a finite number (an ``int`` when ``integer``); numeric text is parsed.

    Raises:
        InputError: a bool, a non-numeric text, NaN, an infinity, or a non-integral
            value for an integer field.
    """
    kind = "an integer" if integer else "a number"
    number: int | float
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name} must be {kind}, got {value!r}{_where(source)}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise InputError(f"{name} must be {kind}, got {value!r}{_where(source)}") from None
    else:
        number = value
    if isinstance(number, float) and not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}{_where(source)}")
    if integer:
        if isinstance(number, float):
            if not number.is_integer():
                raise InputError(f"{name} must be an integer, got {value!r}{_where(source)}")
            number = int(number)
        return number
    return float(number)


def _kind(annotation: Any) -> tuple[str, bool]:
    """``(kind, optional)`` of a field type: kind is bool, int, float, str or any (not checked)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
    else:
        args = (annotation,)
    optional = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    if len(args) == 1 and args[0] in (bool, int, float):
        return args[0].__name__, optional
    if args and all(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in args):
        return "str", optional
    return "any", optional


def coerce(dtype: type, data: Mapping[str, Any], source: str | None = None,
           allow_unknown: bool = False) -> dict[str, Any]:
    """Check and convert ``data`` against the fields of the dataclass ``dtype``.

    Args:
        dtype: A dataclass type (e.g. :class:`~nxmlab.study.train.config.RunConfig`).
        data: ``{field name: value}``.
        source: Where the values came from, for messages (a file, "notebook parameters").
        allow_unknown: Pass keys that are not fields through unchanged (else refuse them).

    Returns:
        The converted values (same keys).

    Raises:
        InputError: an unknown key, or a value of the wrong type (see the module docstring).
    """
    hints = typing.get_type_hints(dtype)
    names = {f.name for f in dataclasses.fields(dtype)}
    unknown = sorted(k for k in data if k not in names)
    if unknown and not allow_unknown:
        raise InputError(f"unknown option(s) {', '.join(map(str, unknown))}{_where(source)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            out[key] = value
            continue
        kind, optional = _kind(hints.get(key, Any))
        if value is None or kind == "any":
            if value is None and not optional and kind != "any":
                raise InputError(f"{key} must be {'true or false' if kind == 'bool' else 'set'}, got None"
                                 f"{_where(source)}")
            out[key] = value
        elif kind == "bool":
            out[key] = parse_bool(key, value, source)
        elif kind in ("int", "float"):
            out[key] = parse_number(key, value, integer=kind == "int", source=source)
        elif isinstance(value, (str, enum.Enum)):
            out[key] = value
        else:
            raise InputError(f"{key} must be a text value, got {value!r}{_where(source)}")
    return out


def coerce_dataclass(obj: Any, source: str | None = None, names: Sequence[str] | None = None) -> Any:
    """``obj`` with every field (or those in ``names``) checked by :func:`coerce`; a copy if anything changed."""
    fields = [f.name for f in dataclasses.fields(obj) if f.init and (names is None or f.name in names)]
    values = {name: getattr(obj, name) for name in fields}
    checked = coerce(type(obj), values, source)
    changed = {k: v for k, v in checked.items() if type(v) is not type(values[k]) or v != values[k]}
    return dataclasses.replace(obj, **changed) if changed else obj


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of option names to values in a JSON or YAML config file.

    Raises:
        InputError: the file cannot be read, is not valid JSON/YAML (with line and column),
            or does not hold a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"config file {path} is not valid YAML: {problem}{where}") from exc
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of option names to values, "
                         f"got {type(data).__name__ if data is not None else 'nothing'}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InputError(f"config file {path}: option names must be text, got {bad[0]!r}")
    return data


def _integer(args: Any, name: str) -> int | None:
    value = getattr(args, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return value


def check_training_ranges(args: Any) -> None:
    """Raise :class:`InputError` for a training argument outside the range Trainer can use.

    These values pass ``TrainingArguments`` itself but fail only once training starts,
    after the run folder exists: a seed outside numpy's ``0 .. 2**32 - 1`` (``seed``,
    ``data_seed``), an evaluation batch size below 1, ``max_steps`` other than -1 or a
    positive count, ``save_steps`` <= 0 (no checkpoint: nothing to resume from) and a
    negative ``dataloader_num_workers``.  (Learning rate, epochs, training batch size and
    the other optimiser settings are checked by :class:`~nxmlab.study.train.config.RunSpec`.)
    """
    for name in ("seed", "data_seed"):
        value = _integer(args, name)
        if value is not None and not 0 <= value <= SEED_MAX:
            raise InputError(f"{name} must be an integer in 0..{SEED_MAX} (numpy's seed range), got {value}")
    value = _integer(args, "per_device_eval_batch_size")
    if value is not None and value < 1:
        raise InputError(f"per_device_eval_batch_size must be a positive integer, got {value}")
    value = _integer(args, "max_steps")
    if value is not None and value != -1 and value < 1:
        raise InputError(f"max_steps must be a positive integer, or -1 to train num_train_epochs, got {value}")
    value = getattr(args, "save_steps", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not (math.isfinite(value) and value > 0):
        raise InputError(f"save_steps must be > 0 (steps between checkpoints, or a fraction of the run), got {value}")
    value = _integer(args, "dataloader_num_workers")
    if value is not None and value < 0:
        raise InputError(f"dataloader_num_workers must be >= 0, got {value}")
