"""YAML config files into validated pydantic models, with every error as ``file:line: path: msg``.

Shared by the edge and the hub (neither may import the other). Pure apart from reading the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# Exit status for a bad config file: systemd units list it in RestartPreventExitStatus so a
# broken file does not restart-loop (EX_CONFIG from sysexits.h).
EXIT_BAD_CONFIG = 78

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FieldError(ValueError):
    """Raised by a model validator to blame a field below the model (e.g. ``("points", 3)``)."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


class ConfigError(Exception):
    """A config file that cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def format_loc(loc: Iterable[str | int]) -> str:
    """``("devices", 3, "points", 0, "address")`` -> ``devices[3].points[0].address``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping key and sequence item."""


def _compose_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "", line, format_loc((*loc, key)), f"duplicate key (first on line {seen[key]})"
                        )
                    ]
                )
            seen[key] = line
            lines[(*loc, key)] = line
            _compose_lines(value_node, (*loc, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _compose_lines(item, (*loc, i), lines)


def parse_yaml(text: str, filename: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely; return the data and a map from key path to line number."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigIssue(filename, line, "", f"invalid YAML: {problem}")]) from None
    except ConfigError as err:
        raise ConfigError([ConfigIssue(filename, i.line, i.path, i.message) for i in err.issues]) from None
    if node is None:
        return {}, {}
    lines: dict[Loc, int] = {}
    try:
        _compose_lines(node, (), lines)
    except ConfigError as err:
        raise ConfigError([ConfigIssue(filename, i.line, i.path, i.message) for i in err.issues]) from None
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, lines


def line_of(lines: dict[Loc, int], loc: Sequence[str | int]) -> int | None:
    """The line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        found = lines.get(tuple(loc[:n]))
        if found:
            return found
    return None


def issues_from_validation(
    err: ValidationError, filename: str, lines: dict[Loc, int], prefix: Loc = ()
) -> list[ConfigIssue]:
    """Turn pydantic's errors into config issues with file, line and field path."""
    issues = []
    for e in err.errors(include_url=False):
        loc: list[str | int] = [*prefix]
        for part in e["loc"]:
            # Tagged unions add the tag as a loc element: it is not in the file.
            if isinstance(part, str) and ("[" in part or part.startswith("function-")):
                continue
            loc.append(part)
        msg = e["msg"]
        located = (e.get("ctx") or {}).get("error")
        if isinstance(located, FieldError):
            loc.extend(located.loc)
            msg = str(located)
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        issues.append(ConfigIssue(filename, line_of(lines, loc), format_loc(loc), msg))
    return issues


def validate(model: type[M], data: Any, filename: str, lines: dict[Loc, int], prefix: Loc = ()) -> M:
    """Validate data against a model; raise ConfigError listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(issues_from_validation(err, filename, lines, prefix)) from None


def load_file(path: str | Path, build: Callable[[Any, str, dict[Loc, int]], M]) -> M:
    """Read a YAML file and hand its data and line map to ``build``; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([ConfigIssue(str(p), None, "", f"cannot read: {err.strerror}")]) from None
    data, lines = parse_yaml(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(str(p), 1, "", "the file must be a mapping of keys")])
    return build(data, str(p), lines)


def load_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file straight into one model."""
    return load_file(path, lambda data, fn, lines: validate(model, data, fn, lines))
