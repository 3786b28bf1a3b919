"""The README's configuration reference, generated from the declarations in tunnel/config.py.

    python -m tunnel.config_reference            print the reference (Markdown)
    python -m tunnel.config_reference --write    put it between the README's two markers
    python -m tunnel.config_reference --check    exit 1 if the README's copy is not current

One table per program: key, default, values (range or choices) with unit, and meaning, in the
order the dataclasses declare them. tests/unit/test_config_reference.py fails when the README's
copy differs from what the declarations produce.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import MISSING
from enum import Enum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnel.config import ClientConfig, ConcentratorConfig
from tunnel.config_schema import Section, Setting, walk
from tunnel.user_error import UsageError, run_command

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- config-reference: begin (python -m tunnel.config_reference --write) -->"
END = "<!-- config-reference: end -->"
PROGRAMS: Sequence[tuple[str, type[DataclassInstance]]] = (
    ("qtun client", ClientConfig),
    ("qtun concentrator", ConcentratorConfig),
)
_IP = (IPv4Address, IPv6Address, IPv4Network, IPv6Network, IPv4Interface, IPv6Interface)


def toml_text(value: Any) -> str:
    """`value` (a declared default) as it is written in a TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return toml_text(value.value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, (str, Path, *_IP)):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _default_text(setting: Setting, default: Any) -> str:
    if default is MISSING or setting.kind.needs_value():
        return "required"
    if default is None or setting.unset:
        # `unset`: what leaving the key out means, when its default value does not say it
        return setting.unset
    text = f"`{toml_text(default)}`"
    if setting.unit == "bytes" and isinstance(default, int) and default >= 1024 * 1024:
        text += f" ({default / (1024 * 1024):g} MiB)"
    return text


def _rows(cls: type[DataclassInstance]) -> Iterator[str]:
    for key, entry in walk(cls):
        declaration = entry.declaration
        if isinstance(declaration, Section):
            if declaration.many:
                yield _row(f"[[{key}]]", "", "list of tables", declaration.doc)
            else:
                required = "required" if entry.default is MISSING else ""
                yield _row(f"[{key}]", required, "table", declaration.doc)
            continue
        values = declaration.kind.values()
        if declaration.unit:
            values += f" {declaration.unit}"
        yield _row(key, _default_text(declaration, entry.default), values, declaration.doc)


def _row(key: str, default: str, values: str, doc: str) -> str:
    cells = [f"`{key}`", default, values, doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def reference() -> str:
    """The Markdown between the README's markers (without them)."""
    intro = (
        "Generated from the declarations in `tunnel/config.py`: edit those, then run "
        "`python -m tunnel.config_reference --write`. Keys are written as for `--set`: "
        "`limits.probe_interval` is `probe_interval` in `[limits]`, and `access.N.name` is "
        "`name` in the N-th `[[access]]` table (from 0). A relative path is relative to the "
        "file's directory."
    )
    lines = textwrap.wrap(intro, width=100, break_on_hyphens=False)
    for program, cls in PROGRAMS:
        lines += [
            "",
            f"`{program}`:",
            "",
            "| key | default | values | meaning |",
            "|---|---|---|---|",
            *_rows(cls),
        ]
    return "\n".join(lines) + "\n\n"  # a blank line ends the table before the end marker


def replace_block(text: str, block: str) -> str:
    """`text` (the README) with what is between the markers replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise UsageError(
            f"README.md lacks the markers {BEGIN} and {END}: put them where the reference goes"
        )
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunnel.config_reference")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="update README.md in place")
    action.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    block = reference()
    if not (args.write or args.check):
        sys.stdout.write(block)
        return 0
    text = args.readme.read_text(encoding="utf-8")
    updated = replace_block(text, block)
    if args.check:
        if updated != text:
            print(f"{args.readme}: the configuration reference is stale: run "
                  "python -m tunnel.config_reference --write", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("config_reference", lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
