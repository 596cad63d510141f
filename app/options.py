"""Command-line options made from the config models: each option's name, type, choices,
default and help come from its `Field` in `cnn.config` (or `tracking.config`), written once.

`--image-size` is the field `image_size`; a field that several configs share (`seed`) is one
option that sets them all. An option left out keeps the config's default, which its help
shows.
"""

import argparse
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

OPTION_NAMES = {"test_time_augmentation": "--tta", "metric": "--promotion-metric"}
"""Where a shorter name serves better than the field's own."""
NONE = "none"
"""What an option of an optional field takes to mean "unset" (e.g. `--patience none`)."""


class _Unset:
    """The value `--patience none` parses to: given, and meaning None (not "not given")."""

    def __repr__(self) -> str:
        return NONE


UNSET = _Unset()


def option_name(field: str) -> str:
    """The option that sets a config field: `image_size` → `--image-size`."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def add_config_options(
    parser: argparse.ArgumentParser,
    *models: type[BaseModel],
    only: Iterable[str] | None = None,
    required: Iterable[str] = (),
) -> None:
    """One option per field of `models` (merged by name across them; `only` those if given);
    the ones in `required` must be given."""
    only, required = set(only or ()), set(required)
    fields: dict[str, list[FieldInfo]] = {}
    for model in models:
        for name, info in model.model_fields.items():
            wanted = not only or name in only
            if wanted and _kind(info.annotation)[0] is not None:
                fields.setdefault(name, []).append(info)
    for name, infos in fields.items():
        parser.add_argument(
            option_name(name),
            dest=name,
            default=None,
            required=name in required,
            **_argument(infos),
        )


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` that the command line set (`none` as None)."""
    values = {}
    for name in model.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = None if value is UNSET else value
    return values


def _argument(infos: list[FieldInfo]) -> dict[str, Any]:
    """`add_argument` keywords for a field (the first of `infos` gives type and default)."""
    info = infos[0]
    kind, optional = _kind(info.annotation)
    default = info.get_default(call_default_factory=True)
    shown = NONE if default is None else str(default).lower() if kind is bool else default
    descriptions = dict.fromkeys(i.description for i in infos if i.description)
    help_text = "; ".join(
        d if n == 0 else d[:1].lower() + d[1:] for n, d in enumerate(descriptions)
    )
    unsettable = optional and default is not None
    keywords: dict[str, Any] = {
        "help": f"{help_text} (default {shown}{f'; {NONE} unsets it' if unsettable else ''})"
    }
    if kind is bool:
        keywords["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(kind) is Literal:
        keywords["choices"] = [str(choice) for choice in typing.get_args(kind)]
    else:
        keywords["type"] = _optional(kind) if optional else kind
    return keywords


def _kind(annotation: Any) -> tuple[Any, bool]:
    """The option type of a field's annotation (int, float, str, Path, bool or a Literal of
    strings) and whether None is allowed; (None, False) for fields no option can set (dicts,
    models, an optional Literal)."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            return None, False
        annotation = members[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation in (int, float, str, bool, Path):
        return annotation, optional
    if typing.get_origin(annotation) is Literal and not optional:
        return annotation, False
    return None, False


def _optional(kind: type) -> Any:
    """A converter that reads `none` as "unset" and anything else as `kind`."""

    def convert(text: str) -> Any:
        return UNSET if text.lower() == NONE else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert
