"""`config.SCHEMA`, the one list of config keys, against the builder and the documentation.

config/proxyd.yaml must name every key, set or commented out as `# key: value`; README's
Configuration section must name every key as `key`. The builder must refuse a key outside
the schema in every section and read every key inside it.

The reference is read with its commented-out settings switched on ("uncommented"): a line
whose text after `# ` is a YAML key (`key:` or `- key:`) is a setting, any other comment is
prose. So the uncommented reference is itself a config that sets every key, and it must load.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.core import config
from proxy.core.errors import ConfigError
from proxy.core.yamlloc import format_path

REPO = Path(__file__).parents[2]
REFERENCE = REPO / "config" / "proxyd.yaml"
README = REPO / "README.md"

# A commented-out setting: indentation, "# ", then what the line would be if set.
_SETTING = re.compile(r"^( *)# ((?: *)(?:- )?[a-z_]+:(?: |$).*)$")
# When the reference's example dates (2027-03-31) lie within grants.max_lifetime.
EXAMPLES_NOW = 1_800_000_000.0  # 2027-01-15
LISTS = frozenset({"rules", "trusted_sources"})  # lists of mappings with the schema's keys


def uncomment(text: str) -> str:
    return "".join(
        (m.group(1) + m.group(2) + "\n") if (m := _SETTING.match(line)) else line + "\n"
        for line in text.splitlines()
    )


def key_paths(schema: config.Schema | None = config.SCHEMA, prefix: str = "") -> Iterator[str]:
    """Every key of the schema, dotted: sections and the keys in them."""
    for key, inner in (schema or {}).items():
        yield prefix + key
        yield from key_paths(inner, f"{prefix}{key}.")


def sections(
    schema: config.Schema = config.SCHEMA, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], config.Schema]]:
    """Every mapping of fixed keys, as its path in the uncommented reference (a list's
    first item for `rules` and `trusted_sources`)."""
    yield path, schema
    for key, inner in schema.items():
        if inner is not None:
            yield from sections(inner, (*path, key, 0) if key in LISTS else (*path, key))


def named_in(document: Any, schema: config.Schema | None, prefix: str = "") -> set[str]:
    """The schema's dotted keys that `document` holds (any item of a list)."""
    found: set[str] = set()
    items = document if isinstance(document, list) else [document]
    for item in items:
        if not isinstance(item, dict) or schema is None:
            continue
        for key, value in item.items():
            if key in schema:
                found.add(prefix + key)
                found |= named_in(value, schema[key], f"{prefix}{key}.")
    return found


def full_document() -> dict[str, Any]:
    document = yaml.safe_load(uncomment(REFERENCE.read_text()))
    assert isinstance(document, dict)
    return document


def at(document: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(yaml.safe_dump(document, sort_keys=False), Path("t.yaml"), now=EXAMPLES_NOW)
    return info.value.problems


def located(problem: str) -> str:
    """`t.yaml:12: rules[0].from: must be a list` -> `rules[0].from`."""
    return problem.split(": ", 2)[1]


def test_schema_is_what_the_builder_checks_top_level_keys_against() -> None:
    assert frozenset(config.SCHEMA) == config.TOP_LEVEL_KEYS
    assert {"limits.auth_failures.per_source.burst", "upstream.connect_timeout"} <= set(key_paths())
    assert {"trusted_sources.owner", "jump.keys_dir", "rules.allow_broad"} <= set(key_paths())


def test_reference_config_names_every_key() -> None:
    missing = set(key_paths()) - named_in(full_document(), config.SCHEMA)
    assert not missing, (
        f"config/proxyd.yaml does not explain {sorted(missing)}: add each as a setting or "
        "commented out as '# key: default   # why'"
    )


def test_reference_config_with_every_key_set_loads() -> None:
    """The commented-out defaults and examples are valid values, not just names."""
    config.parse(uncomment(REFERENCE.read_text()), REFERENCE, now=EXAMPLES_NOW)
    config.load(REFERENCE)


def test_readme_configuration_section_names_every_key() -> None:
    text = README.read_text()
    start = text.index("\n### Configuration\n")
    end = text.index("\n#", start + 1)
    words = {
        word
        for quoted in re.findall(r"`([^`]+)`", text[start:end])
        for word in re.findall(r"[a-z_]+", quoted)
    }
    missing = sorted(p for p in key_paths() if p.rsplit(".", 1)[-1] not in words)
    assert not missing, f"README's Configuration section does not name {missing}"


def test_uncommenting_reads_settings_and_leaves_prose() -> None:
    text = "# Prose: here.\n# listen: a:1\n  # - name: x   # why\n#   path: -\n# a prose line\n"
    assert uncomment(text) == (
        "# Prose: here.\nlisten: a:1\n  - name: x   # why\n  path: -\n# a prose line\n"
    )


@pytest.mark.parametrize(
    "path", [path for path, _ in sections()], ids=lambda p: format_path(p) or "top"
)
def test_a_key_outside_the_schema_is_refused_in_every_section(
    path: tuple[str | int, ...],
) -> None:
    document = full_document()
    at(document, path)["bogus"] = 1
    found = problems(document)
    assert [located(p) for p in found] == [format_path((*path, "bogus"))], found
    assert "unknown key" in found[0]


def leaves() -> Iterator[tuple[str | int, ...]]:
    for path, schema in sections():
        for key, inner in schema.items():
            if inner is None:
                yield (*path, key)


@pytest.mark.parametrize("path", list(leaves()), ids=format_path)
def test_the_builder_reads_every_key_in_the_schema(path: tuple[str | int, ...]) -> None:
    """A schema key the builder ignored would be accepted and do nothing: a mapping where a
    value belongs must be an error at that key (or inside it, for `zones`)."""
    document = copy.deepcopy(full_document())
    at(document, path[:-1])[path[-1]] = {"bogus": 1}
    where = format_path(path)
    found = [located(p) for p in problems(document)]
    assert any(w == where or w.startswith((f"{where}.", f"{where}[")) for w in found), found


def test_every_leaf_is_checked() -> None:
    """`leaves` covers each schema key that is not a section."""
    dotted = {".".join(str(p) for p in path if not isinstance(p, int)) for path in leaves()}
    sections_ = {".".join(str(p) for p in path if not isinstance(p, int)) for path, _ in sections()}
    assert dotted | (sections_ - {""}) == set(key_paths())
