"""How a configuration key is declared, once, and how a TOML table is read from the declarations.

A key is a dataclass field whose metadata is a `Setting`: its kind (the type and range or
choices it accepts), unit and a one-line doc; its default is the field's own default, and a
field without one is required. A sub-table (`[limits]`) or a list of tables (`[[access]]`) is a
field whose type is another such dataclass and whose metadata is a `Section`:

    probe_interval: float = field(
        default=1.0,
        metadata=setting("between liveness probes on each access", Number(0.01, 60.0), unit="s"),
    )

`read_table(cls, table)` builds `cls` from a TOML table by reading those declarations; the
README's configuration reference (tunnel/config_reference.py) is generated from the same ones, so
the default, range and doc of a key are written in one place.

Every bad value raises ConfigError with one sentence in one form, `<key> = <value> is not
<expected>: give <expected>`, naming the full dotted key; a key nobody declared is refused as a
typo. Sans-I/O: tables in, values out.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum
from functools import cache
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args, get_type_hints

from tunnel.user_error import UsageError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network
D = TypeVar("D", bound="DataclassInstance")

IFNAMSIZ = 16  # linux/if.h: interface names are at most 15 bytes plus the NUL
METADATA_KEY = "qtun"  # where a field's Setting or Section sits in its dataclass metadata


class ConfigError(UsageError):
    """A configuration value is wrong; str(error) is one sentence saying what to do."""


def wrong(where: str, value: Any, expected: str) -> ConfigError:
    """The one form of a bad value's error."""
    return ConfigError(f"{where} = {value!r} is not {expected}: give {expected}")


def number_text(value: float) -> str:
    """60.0 -> "60", 0.05 -> "0.05", 1e6 -> "1000000": how ranges are written."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- kinds: what a key accepts ------------------------------------------------------------------


class Kind:
    """The values one key accepts. `read` converts a TOML value that is present (or raises
    ConfigError naming `where`); `expected` completes "... is not <expected>"; `values` is what
    the reference table shows."""

    def expected(self) -> str:
        return ""

    def absent(self, value: Any) -> bool:
        """Whether `value` counts as the key being left out (TOML has no null)."""
        return value is None

    def read(self, where: str, value: Any, base_dir: Path) -> Any:
        raise NotImplementedError

    def check(self, where: str, value: Any) -> None:
        """A last check on the value, read or defaulted (a required non-empty list)."""

    def needs_value(self) -> bool:
        """Whether the key must be given although its field has a default (an empty list)."""
        return False

    def values(self) -> str:
        return self.expected().removeprefix("an ").removeprefix("a ")


@dataclass(frozen=True)
class Integer(Kind):
    low: int
    high: int

    def expected(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def read(self, where: str, value: Any, base_dir: Path) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong(where, value, self.expected())
        if not self.low <= value <= self.high:
            raise wrong(where, value, self.expected())
        return value

    def values(self) -> str:
        return f"{self.low}–{self.high}"


@dataclass(frozen=True)
class Mtu(Kind):
    """An MTU in bytes, or "auto" (None: derived from the QUIC datagram budget at run time)."""

    low: int
    high: int

    def expected(self) -> str:
        return f'an integer from {self.low} to {self.high} or "auto"'

    def read(self, where: str, value: Any, base_dir: Path) -> int | None:
        if value == "auto":
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong(where, value, self.expected())
        if not self.low <= value <= self.high:
            raise wrong(where, value, self.expected())
        return value

    def values(self) -> str:
        return f'`"auto"` or {self.low}–{self.high}'


@dataclass(frozen=True)
class Number(Kind):
    low: float
    high: float

    def expected(self) -> str:
        return f"a number from {number_text(self.low)} to {number_text(self.high)}"

    def read(self, where: str, value: Any, base_dir: Path) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise wrong(where, value, self.expected())
        if not self.low <= value <= self.high:
            raise wrong(where, value, self.expected())
        return float(value)

    def values(self) -> str:
        return f"{number_text(self.low)}–{number_text(self.high)}"


class Boolean(Kind):
    def expected(self) -> str:
        return "true or false"

    def values(self) -> str:
        return "`true`, `false`"

    def read(self, where: str, value: Any, base_dir: Path) -> bool:
        if not isinstance(value, bool):
            raise wrong(where, value, self.expected())
        return value


class Text(Kind):
    def expected(self) -> str:
        return "a non-empty string"

    def read(self, where: str, value: Any, base_dir: Path) -> str:
        if not isinstance(value, str) or not value.strip():
            raise wrong(where, value, self.expected())
        return value

    def values(self) -> str:
        return "string"


class Choice(Kind):
    """One of some names; `convert` maps the name to the value the program uses (an enum
    member, an Access ID...)."""

    def __init__(self, names: Sequence[str], convert: Callable[[str], Any] = str) -> None:
        self.names = tuple(names)
        self.convert = convert

    @classmethod
    def of(cls, kind: type[Enum]) -> Choice:
        return cls([str(m.value) for m in kind], kind)

    def expected(self) -> str:
        return f"one of {', '.join(self.names)}"

    def read(self, where: str, value: Any, base_dir: Path) -> Any:
        if not isinstance(value, str) or value not in self.names:
            raise ConfigError(f"{where} = {value!r} is not {self.expected()}: pick one of them")
        return self.convert(value)

    def values(self) -> str:
        return ", ".join(f"`{n}`" for n in self.names)


class EnumList(Kind):
    """A non-empty list of distinct values of an enum, kept as a tuple of members."""

    def __init__(self, kind: type[Enum]) -> None:
        self.kind = kind
        self.names = [str(m.value) for m in kind]

    def expected(self) -> str:
        return f"a non-empty list of distinct values from {', '.join(self.names)}"

    def read(self, where: str, value: Any, base_dir: Path) -> tuple[Enum, ...]:
        if (
            not isinstance(value, list)
            or not value
            or any(v not in self.names for v in value)
            or len(set(value)) != len(value)
        ):
            raise ConfigError(
                f"{where} = {value!r} is not {self.expected()}: give e.g. {self.names!r}"
            )
        return tuple(self.kind(v) for v in value)

    def values(self) -> str:
        return f"list of {', '.join(f'`{n}`' for n in self.names)}"


class InterfaceName(Kind):
    def expected(self) -> str:
        return f"an interface name of 1 to {IFNAMSIZ - 1} characters without '/'"

    def read(self, where: str, value: Any, base_dir: Path) -> str:
        if (
            not isinstance(value, str)
            or not value
            or len(value.encode()) >= IFNAMSIZ
            or "/" in value
            or any(c.isspace() for c in value)
        ):
            raise wrong(where, value, self.expected())
        return value

    def values(self) -> str:
        return f"interface name (at most {IFNAMSIZ - 1} bytes)"


class FilePath(Kind):
    """A path; a relative one is taken relative to the configuration file's directory."""

    def expected(self) -> str:
        return "a file path string"

    def absent(self, value: Any) -> bool:
        return value is None or value == ""

    def read(self, where: str, value: Any, base_dir: Path) -> Path:
        if not isinstance(value, str):
            raise wrong(where, value, self.expected())
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path

    def values(self) -> str:
        return "path"


class Address(Kind):
    def expected(self) -> str:
        return "an IP address (e.g. 192.0.2.1 or 2001:db8::1)"

    def read(self, where: str, value: Any, base_dir: Path) -> IPAddress:
        try:
            return ip_address(value) if isinstance(value, str) else _bad()
        except ValueError:
            raise wrong(where, value, self.expected()) from None

    def values(self) -> str:
        return "IP address"


class Network(Kind):
    """An IP prefix with zero host bits, of one family if `family` is 4 or 6."""

    def __init__(self, family: int | None = None) -> None:
        self.family = family

    def expected(self) -> str:
        return "an IP prefix with zero host bits (e.g. 10.8.0.0/24)"

    def read(self, where: str, value: Any, base_dir: Path) -> IPNetwork:
        try:
            network = ip_network(value) if isinstance(value, str) else _bad()
        except ValueError:
            raise wrong(where, value, self.expected()) from None
        if self.family is not None and network.version != self.family:
            family = f"IPv{self.family}"
            raise ConfigError(
                f"{where} = {value!r} is not an {family} prefix: give an {family} one"
            )
        return network

    def values(self) -> str:
        return f"IPv{self.family} prefix" if self.family else "IP prefix"


class _List(Kind):
    """A list of one kind of item, kept as a tuple. `required`: what to give when the list is
    empty or left out (a required non-empty list), e.g. "the TUN's addresses, e.g. [...]"."""

    item = ""
    example = ""

    def __init__(self, *, required: str = "") -> None:
        self.required = required

    def expected(self) -> str:
        return f"a list of {self.item} (e.g. {self.example})"

    def convert(self, item: Any) -> Any:
        raise NotImplementedError

    def read(self, where: str, value: Any, base_dir: Path) -> tuple[Any, ...]:
        try:
            if not isinstance(value, list):
                _bad()
            return tuple(self.convert(v) if isinstance(v, str) else _bad() for v in value)
        except ValueError:
            raise wrong(where, value, self.expected()) from None

    def needs_value(self) -> bool:
        return bool(self.required)

    def check(self, where: str, value: Any) -> None:
        if self.required and not value:
            raise ConfigError(f"{where} is empty: give {self.required}")

    def values(self) -> str:
        return f"list of {self.item}" + (" (at least one)" if self.required else "")


class AddressList(_List):
    item = "IP addresses"
    example = '["0.0.0.0"]'

    def expected(self) -> str:
        return f"a non-empty list of IP addresses (e.g. {self.example})"

    def convert(self, item: str) -> IPAddress:
        return ip_address(item)

    def read(self, where: str, value: Any, base_dir: Path) -> tuple[Any, ...]:
        if value == []:
            raise wrong(where, value, self.expected())
        return super().read(where, value, base_dir)

    def values(self) -> str:
        return "list of IP addresses (at least one)"


class AnyAddressList(_List):
    """IP addresses, possibly none (the key's `unset` says what none means)."""

    item = "IP addresses"
    example = '["192.0.2.1"]'

    def convert(self, item: str) -> IPAddress:
        return ip_address(item)

    def values(self) -> str:
        return "list of IP addresses"


class NetworkList(_List):
    item = "IP prefixes with zero host bits"
    example = '["10.9.0.0/16"]'

    def convert(self, item: str) -> IPNetwork:
        return ip_network(item)

    def values(self) -> str:
        return "list of IP prefixes" + (" (at least one)" if self.required else "")


class InterfaceList(_List):
    """Addresses with their prefix length (10.8.0.2/24): an interface's addresses."""

    item = "addresses with prefix length"
    example = '["10.8.0.2/24"]'

    def convert(self, item: str) -> IPInterface:
        if "/" not in item:
            _bad()
        return ip_interface(item)


class MacList(_List):
    """MAC addresses ("02:00:5e:10:00:01"), kept as 48-bit integers (tunnel/policy/mac_filter.py
    compares them per frame)."""

    item = "unicast MAC addresses"
    example = '["02:00:5e:10:00:01"]'

    def convert(self, item: str) -> int:
        from tunnel.policy.mac_filter import is_group_mac, mac_to_int

        mac = mac_to_int(item)
        return _bad() if is_group_mac(mac) else mac

    def values(self) -> str:
        return "list of unicast MAC addresses"


class PortList(_List):
    """TCP/UDP ports: integers 1-65535 and "low-high" ranges, kept as a sorted tuple of the
    ports (a range of 1000 ports is 1000 entries: small enough to keep plainly)."""

    item = 'ports (1-65535) and "low-high" ranges'
    example = '[8080, "9000-9099"]'

    def read(self, where: str, value: Any, base_dir: Path) -> tuple[int, ...]:
        ports: set[int] = set()
        try:
            if not isinstance(value, list):
                _bad()
            for item in value:
                if isinstance(item, int) and not isinstance(item, bool):
                    low = high = item
                elif isinstance(item, str) and "-" in item:
                    first, _, last = item.partition("-")
                    low, high = int(first), int(last)
                else:
                    _bad()
                if not 1 <= low <= high <= 65535:
                    _bad()
                ports.update(range(low, high + 1))
        except ValueError:
            raise wrong(where, value, self.expected()) from None
        return tuple(sorted(ports))

    def values(self) -> str:
        return 'list of ports and "low-high" ranges'


class StringList(_List):
    item = "non-empty strings"

    def expected(self) -> str:
        return "a list of non-empty strings"

    def convert(self, item: str) -> str:
        return item if item else _bad()

    def values(self) -> str:
        return "list of strings"


def _bad() -> Any:
    raise ValueError("wrong type")


class Parsed(Kind):
    """A value read by `parse` (a DSCP name or number, a QoS label...), which raises ValueError
    with the sentence saying what is wrong; `expected` and `shown` describe it for the error and
    the reference table."""

    def __init__(self, expected: str, shown: str, parse: Callable[[Any], Any]) -> None:
        self._expected = expected
        self._shown = shown
        self.parse = parse

    def expected(self) -> str:
        return self._expected

    def read(self, where: str, value: Any, base_dir: Path) -> Any:
        try:
            return self.parse(value)
        except (ValueError, TypeError):
            raise wrong(where, value, self.expected()) from None

    def values(self) -> str:
        return self._shown


# --- declarations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """The declaration of one key (a dataclass field's metadata; its default is the field's)."""

    doc: str  # one line: what the key does, for the reference table
    kind: Kind
    unit: str = ""  # "s", "bytes", "Mbit/s"...
    key: str = ""  # the TOML key when it is not the field's name; "table.key" in a sub-table
    unset: str = ""  # what leaving the key out means, when its default is None


@dataclass(frozen=True)
class Section:
    """The declaration of a sub-table (`[limits]`) or, with `many`, a list of tables
    (`[[access]]`); the field's type (or its tuple's item type) is the table's dataclass."""

    doc: str
    key: str = ""  # the TOML key when it is not the field's name
    many: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)  # per-program defaults of its keys
    omit: tuple[str, ...] = ()  # keys of the dataclass this program does not accept


def setting(doc: str, kind: Kind, *, unit: str = "", key: str = "", unset: str = "") -> Any:
    """The metadata of a key's field: `field(default=..., metadata=setting(...))`."""
    return {METADATA_KEY: Setting(doc, kind, unit, key, unset)}


def section(
    doc: str,
    *,
    key: str = "",
    many: bool = False,
    defaults: Mapping[str, Any] | None = None,
    omit: tuple[str, ...] = (),
) -> Any:
    """The metadata of a sub-table's field (or, with `many`, a list of tables)."""
    return {METADATA_KEY: Section(doc, key, many, dict(defaults or {}), omit)}


def default_of(f: Field[Any]) -> Any:
    """A field's default (a fresh one from its factory), or MISSING when it is required."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@cache
def _types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def section_class(cls: type, f: Field[Any]) -> type[DataclassInstance]:
    """The dataclass of a Section field: its type, or the item type of its tuple."""
    hint = _types(cls)[f.name]
    table: type[DataclassInstance] = get_args(hint)[0] if get_args(hint) else hint
    return table


@dataclass(frozen=True)
class Declared:
    """One declared field of a table as the reference sees it: its dotted key (relative to the
    table), what it is declared with, and its default (MISSING when required)."""

    key: str
    declaration: Setting | Section
    field: Field[Any]
    default: Any


def declared(cls: type[DataclassInstance], within: Section | None = None) -> Iterator[Declared]:
    """The keys `cls` declares, in declaration order, with `within`'s defaults and omissions."""
    defaults = within.defaults if within else {}
    omit = within.omit if within else ()
    for f in fields(cls):
        declaration = f.metadata.get(METADATA_KEY)
        if declaration is None or f.name in omit:
            continue
        default = defaults.get(f.name, default_of(f))
        yield Declared(declaration.key or f.name, declaration, f, default)


def walk(
    cls: type[DataclassInstance], prefix: str = "", within: Section | None = None
) -> Iterator[tuple[str, Declared]]:
    """Every declaration of `cls` and of its sub-tables, depth first, with its dotted key as
    `--set` takes it (`limits.probe_interval`; `access.N.name` in the N-th `[[access]]`)."""
    for entry in declared(cls, within):
        yield prefix + entry.key, entry
        if isinstance(entry.declaration, Section):
            inner = section_class(cls, entry.field)
            many = ".N." if entry.declaration.many else "."
            yield from walk(inner, f"{prefix}{entry.key}{many}", entry.declaration)


def _setting_key(key: str) -> str:
    """An override's key as walk() names its setting: list indexes as N (`access.0.name` ->
    `access.N.name`)."""
    return ".".join("N" if part.isdigit() else part for part in key.split("."))


def unknown_settings(overrides: Sequence[str], config: type[DataclassInstance]) -> list[str]:
    """The `--set key=value` overrides whose key names no setting of `config` (ClientConfig or
    ConcentratorConfig; list items by index, `access.0.interface`): a typo in an experiment's
    config or on `qtlab up --set` is found before any program runs."""
    known = {key for key, _ in walk(config)}
    unknown = []
    for override in overrides:
        key = override.partition("=")[0].strip()
        if _setting_key(key) not in known:
            unknown.append(key)
    return unknown


# --- reading --------------------------------------------------------------------------------------

Check = Callable[[Any, "Table"], None]


def read_table(
    cls: type[D],
    table: Table,
    within: Section | None = None,
    checks: Mapping[type, Check] | None = None,
) -> D:
    """`cls` built from `table` by its declarations; `checks[cls]` (if any) then checks what
    one key alone cannot (e.g. two keys that must agree), and keys nobody declared are refused."""
    checks = checks or {}
    values: dict[str, Any] = {}
    subtables: dict[str, Table] = {}
    entries = list(declared(cls, within))
    for entry in entries:
        name = entry.field.name
        if isinstance(entry.declaration, Section):
            inner = section_class(cls, entry.field)
            if entry.declaration.many:
                values[name] = tuple(
                    read_table(inner, t, entry.declaration, checks)
                    for t in table.table_list(entry.key)
                )
            else:
                sub = table.table(entry.key, required=entry.default is MISSING)
                values[name] = read_table(inner, sub, entry.declaration, checks)
            continue
        head, _, leaf = entry.key.rpartition(".")
        where = table
        if head:
            if head not in subtables:
                required = any(
                    e.default is MISSING and e.key.startswith(head + ".") for e in entries
                )
                subtables[head] = table.table(head, required=required)
            where = subtables[head]
        values[name] = where.value(leaf, entry.declaration.kind, entry.default)
    for sub in subtables.values():
        sub.done()
    build: Callable[..., D] = cls
    config = build(**values)
    check = checks.get(cls)
    if check is not None:
        check(config, table)
    table.done()
    return config


class Table:
    """A TOML table being read: typed getters that raise ConfigError naming the full key, and
    `done()` which rejects keys nobody asked for (typos)."""

    def __init__(self, data: Mapping[str, Any], prefix: str, base_dir: Path) -> None:
        self._data = data
        self._prefix = prefix
        self._base_dir = base_dir
        self._seen: set[str] = set()

    def where(self, key: str) -> str:
        """The full dotted name of `key`; "" names the table itself ("[access.0] ")."""
        if not key:
            return f"[{self._prefix}] " if self._prefix else ""
        return f"{self._prefix}.{key}" if self._prefix else key

    def raw(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        return self._data.get(key, default)

    def value(self, key: str, kind: Kind, default: Any) -> Any:
        """The value of `key` as `kind` reads it; `default` if it is left out (MISSING: it is
        required)."""
        raw = self.raw(key, None)
        if kind.absent(raw):
            if default is MISSING:
                raise ConfigError(f"{self.where(key)} is missing: add it to the configuration")
            value = default
        else:
            value = kind.read(self.where(key), raw, self._base_dir)
        kind.check(self.where(key), value)
        return value

    def table(self, key: str, *, required: bool = False) -> Table:
        value = self.raw(key, None)
        if value is None:
            if required:
                raise ConfigError(f"[{self.where(key)}] is missing: add that table")
            value = {}
        if not isinstance(value, dict):
            raise wrong(self.where(key), value, "a table")
        return Table(value, self.where(key), self._base_dir)

    def table_list(self, key: str) -> list[Table]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise wrong(self.where(key), value, f"a list of tables ([[{key}]])")
        return [Table(v, f"{self.where(key)}.{i}", self._base_dir) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen))
            raise ConfigError(
                f"{self.where(unknown[0])} is not a known key: check its spelling (known here: "
                f"{known})"
            )


# --- TOML loading and overrides -------------------------------------------------------------------


def load_toml(text: str, source: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The TOML `text` parsed, with the `overrides` applied."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML ({exc}): fix the syntax there") from None
    for item in overrides:
        apply_override(data, item)
    return data


def override_value(text: str) -> Any:
    """The value of a "key=value" override: TOML if it reads as TOML, else the bare text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def check_override_values(overrides: Sequence[str], config: type[DataclassInstance]) -> None:
    """ConfigError for the first `--set key=value` whose value its setting of `config` does not
    take (checked alone: what two keys must agree on is the program's to say); keys `config`
    lacks are unknown_settings' to find. So that `qtlab up --set` refuses a wrong value before
    a lab is built for it."""
    settings = {key: entry for key, entry in walk(config) if isinstance(entry.declaration, Setting)}
    for override in overrides:
        key, _, text = override.partition("=")
        key = key.strip()
        entry = settings.get(_setting_key(key))
        if entry is None:
            continue
        kind = cast(Setting, entry.declaration).kind
        value = override_value(text)
        if not kind.absent(value):
            kind.read(key, value, Path.cwd())


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one "dotted.key=value" override in the parsed TOML `data` (in place)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r} is not key=value: write it like concentrator.port=4433"
        )
    value = override_value(text)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r}: {where} needs an index below {len(node)}: use e.g. "
                    f"{'.'.join(parts[:i])}.0"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(
                f"override {key!r}: {'.'.join(parts[:i])} is a value, not a table: shorten the key"
            )
