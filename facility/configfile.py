"""Loading YAML config files with errors that name the file, the item and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T", bound=pydantic.BaseModel)

# libyaml's parser, where PyYAML has it: a site file loads in a tenth of the time.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """A config file that cannot be used. The message names file, item and field."""


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # a safe loader: plain data only
    except yaml.YAMLError:
        pass
    try:  # the pure-Python parser: slower, but its error shows the line and a caret
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _item_label(data: Any, loc: tuple[int | str, ...]) -> tuple[str, tuple[int | str, ...]]:
    """For a location like ('devices', 3, 'modbus', 'port'), name the item by its id."""
    if len(loc) >= 2 and isinstance(loc[0], str) and isinstance(loc[1], int):
        section, index = loc[0], loc[1]
        item_id = None
        if isinstance(data, dict):
            items = data.get(section)
            if isinstance(items, list) and 0 <= index < len(items):
                entry = items[index]
                if isinstance(entry, dict):
                    item_id = entry.get("id") or entry.get("name")
        singular = section[:-1] if section.endswith("s") else section
        label = f"{singular} {item_id!r} ({section}[{index}])" if item_id else f"{section}[{index}]"
        return label, loc[2:]
    return "", loc


def describe(path: Path | str, data: Any, error: pydantic.ValidationError) -> str:
    lines = []
    for err in error.errors():
        label, field_loc = _item_label(data, tuple(err["loc"]))
        where = f"{label}: " if label else ""
        msg = err["msg"].removeprefix("Value error, ")
        if field_loc:
            field = ".".join(str(p) for p in field_loc)
            lines.append(f"{path}: {where}field '{field}': {msg}")
        else:
            lines.append(f"{path}: {where}{msg}")
    return "\n".join(lines)


def validate(model: type[T], data: Any, path: Path | str) -> T:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe(path, data, exc)) from None


def load(model: type[T], path: Path) -> T:
    return validate(model, read_yaml(path), path)
