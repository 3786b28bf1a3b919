"""The configuration declarations against what is written elsewhere: the README's generated
reference, the example files, and each declared default against its own declared range."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tunnel import config_reference
from tunnel.config import (
    ClientConfig,
    ConcentratorConfig,
    parse_client_config,
    parse_concentrator_config,
)
from tunnel.config_schema import Declared, Setting, walk

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CLIENT_EXAMPLES = ("client-tunnel.toml", "client-session.toml")
CONCENTRATOR_EXAMPLES = ("concentrator.toml",)


def _settings(cls: type[DataclassInstance]) -> Iterator[tuple[str, Declared]]:
    """(dotted key, declaration) of every key of `cls`, sub-tables included."""
    return ((k, e) for k, e in walk(cls) if isinstance(e.declaration, Setting))


def test_readme_reference_is_what_the_declarations_produce() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert config_reference.BEGIN in readme and config_reference.END in readme
    expected = config_reference.replace_block(readme, config_reference.reference())
    assert readme == expected, "run: python -m tunnel.config_reference --write"


def test_check_mode_reports_a_stale_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{config_reference.BEGIN}\nold table\n{config_reference.END}\n")
    assert config_reference.main(["--check", "--readme", str(stale)]) == 1
    assert config_reference.main(["--write", "--readme", str(stale)]) == 0
    assert config_reference.main(["--check", "--readme", str(stale)]) == 0
    assert "| `limits.probe_interval` | `1.0` | 0.01–60 s |" in stale.read_text()


@pytest.mark.parametrize("cls", [ClientConfig, ConcentratorConfig])
def test_every_declared_default_is_in_its_own_range(cls: type[DataclassInstance]) -> None:
    for key, entry in _settings(cls):
        setting = entry.declaration
        assert isinstance(setting, Setting)
        assert setting.doc and "\n" not in setting.doc, key
        if entry.default is None:
            assert setting.unset, f"{key}: say what leaving it out means (unset=...)"
            continue
        if entry.default is MISSING or setting.kind.needs_value():
            continue
        raw = tomllib.loads(f"v = {config_reference.toml_text(entry.default)}")["v"]
        read = setting.kind.read(key, raw, Path("/"))
        assert read == entry.default, key


def _example_keys(text: str) -> set[str]:
    """Every key an example writes or shows commented out, dotted as the reference writes it."""
    prefix, keys = "", set()
    for line in text.splitlines():
        table = re.match(r"^\s*(\[\[?)([a-z_.0-9]+)\]\]?", line)
        if table:
            prefix = table.group(2) + (".N." if table.group(1) == "[[" else ".")
            continue
        key = re.match(r"^\s*#?\s*([a-z_0-9]+)\s*=", line)
        if key:
            keys.add(prefix + key.group(1))
    return keys


@pytest.mark.parametrize(
    ("cls", "names"), [(ClientConfig, CLIENT_EXAMPLES), (ConcentratorConfig, CONCENTRATOR_EXAMPLES)]
)
def test_examples_show_every_declared_key_and_no_other(
    cls: type[DataclassInstance], names: tuple[str, ...]
) -> None:
    shown = set().union(*(_example_keys((EXAMPLES / n).read_text()) for n in names))
    keys = {key for key, _ in _settings(cls)}
    assert keys - shown == set(), "add these keys to the examples (commented out if optional)"
    assert shown - keys == set(), "the examples show keys nobody declared"


def _uncommented(text: str) -> str:
    """`text` with every commented-out `# key = value` line made a real one."""
    return re.sub(r"(?m)^#\s*(?=[a-z_0-9]+\s*=)", "", text)


@pytest.mark.parametrize("name", [*CLIENT_EXAMPLES, *CONCENTRATOR_EXAMPLES])
def test_examples_parse_with_every_commented_key_turned_on(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    parse = parse_concentrator_config if name.startswith("concentrator") else parse_client_config
    parse(text, base_dir=EXAMPLES)
    turned_on = _uncommented(text)
    assert turned_on != text
    parse(turned_on, base_dir=EXAMPLES)
