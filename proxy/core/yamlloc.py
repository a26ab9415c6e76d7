"""YAML to plain values, keeping the line of every node and refusing duplicate keys.

PyYAML silently keeps the last of two equal keys, which turns a typo'd second `rules:`
into a policy nobody wrote. We compose the node tree ourselves instead.
"""

from __future__ import annotations

from typing import Any

import yaml

from proxy.core.errors import ConfigError

Path = tuple[str | int, ...]
MAX_NODES = 100_000  # aliases can expand exponentially ("billion laughs"); stop early


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class Located:
    """A document's plain value plus the line of each path in it."""

    def __init__(self, filename: str, value: Any, lines: dict[Path, int]) -> None:
        self.filename = filename
        self.value = value
        self.lines = lines

    def line(self, path: Path) -> int:
        # A missing key is reported at the mapping that should have held it.
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def where(self, path: Path) -> str:
        return f"{self.filename}:{self.line(path)}: {format_path(path)}"


def load(text: str, filename: str) -> Located:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines: dict[Path, int] = {}
        budget = [MAX_NODES]
        value = (
            _build(loader, root, (), lines, filename, budget, frozenset())
            if root is not None
            else None
        )
    except RecursionError as e:  # PyYAML's composer recurses once per nesting level
        raise ConfigError([f"{filename}: nested too deeply"]) from e
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 1
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {e.problem}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{filename}: YAML error: {e}"]) from e
    finally:
        loader.dispose()
    return Located(filename, value, lines)


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path,
    lines: dict[Path, int],
    filename: str,
    budget: list[int],
    ancestors: frozenset[int],
    line: int | None = None,
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError([f"{filename}: document too large or too many aliases"])
    if id(node) in ancestors:  # `&a [*a]`: an alias to a node that contains it
        where = f"{filename}:{node.start_mark.line + 1}: {format_path(path)}"
        raise ConfigError([f"{where}: recursive alias"])
    ancestors = ancestors | {id(node)}
    # A mapping value is located at its key: `bogus:` with a block value below it is
    # reported on the key's line, not on the first line of the value.
    lines[path] = line if line is not None else node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                where = f"{filename}:{key_node.start_mark.line + 1}: {format_path(path)}"
                raise ConfigError([f"{where}: keys must be strings, not {key!r}"])
            if key in out:
                where = f"{filename}:{key_node.start_mark.line + 1}: {format_path((*path, key))}"
                raise ConfigError([f"{where}: duplicate key"])
            out[key] = _build(
                loader,
                value_node,
                (*path, key),
                lines,
                filename,
                budget,
                ancestors,
                key_node.start_mark.line + 1,
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, i), lines, filename, budget, ancestors)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
