"""Optional source NAT of the concentrator (`nat = true`): nftables masquerade in a table of
its own, removed on exit.

Routed client prefixes are the default (no NAT anywhere): the networks behind the concentrator
route them back to it. Where a destination network cannot (e.g. the Internet behind a single
uplink address), the concentrator masquerades client packets that leave through any interface
but its TUN, except towards `nat_exclude` (networks that do route the client prefixes back).
Replies find their way back through conntrack and are then routed into the TUN as usual.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Final

from tunnel.user_error import RuntimeFailure

IPNetwork = IPv4Network | IPv6Network
NFT_TIMEOUT: Final = 10.0


class NatError(RuntimeFailure):
    """The nftables table could not be installed; the message says what to do."""


def table_name(tun: str) -> str:
    """The nftables table of the concentrator running TUN `tun` (one per TUN, so two
    concentrators on one host do not clash)."""
    return "qtun_nat_" + re.sub(r"[^A-Za-z0-9_]", "_", tun)


def _set(name: str, kind: str, prefixes: Sequence[IPNetwork]) -> str:
    elements = f" elements = {{ {', '.join(map(str, prefixes))} }};" if prefixes else ""
    return f"  set {name} {{ type {kind}; flags interval;{elements} }}\n"


def nat_ruleset(
    table: str, tuns: Sequence[str], sources: Sequence[IPNetwork], exclude: Sequence[IPNetwork]
) -> str:
    """The `nft -f` text that (re)creates `table`: masquerade packets from `sources` leaving
    through any interface but the concentrator's `tuns` (one per worker), unless their
    destination is in `exclude`."""
    names = ", ".join(f'"{tun}"' for tun in tuns)
    v4 = [p for p in sources if isinstance(p, IPv4Network)]
    v6 = [p for p in sources if isinstance(p, IPv6Network)]
    x4 = [p for p in exclude if isinstance(p, IPv4Network)]
    x6 = [p for p in exclude if isinstance(p, IPv6Network)]
    # "table ...; delete table ...;" first: replaces a table a crashed run left behind, in the
    # same atomic transaction.
    return (
        f"table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        + _set("clients4", "ipv4_addr", v4)
        + _set("clients6", "ipv6_addr", v6)
        + _set("exclude4", "ipv4_addr", x4)
        + _set("exclude6", "ipv6_addr", x6)
        + "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    oifname {{ {names} }} accept\n"
        "    ip saddr @clients4 ip daddr != @exclude4 counter masquerade\n"
        "    ip6 saddr @clients6 ip6 daddr != @exclude6 counter masquerade\n"
        "  }\n"
        "}\n"
    )


class Masquerade:
    """The installed NAT table; `remove()` deletes it (idempotent)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.installed = False

    @classmethod
    def install(
        cls, tuns: Sequence[str], sources: Sequence[IPNetwork], exclude: Sequence[IPNetwork]
    ) -> Masquerade:
        """The table of the concentrator whose TUN is `tuns[0]` (its workers' follow)."""
        if shutil.which("nft") is None:
            raise NatError(
                "nat = true needs the nft program (package nftables): install it or set nat = false"
            )
        nat = cls(table_name(tuns[0]))
        done = _nft(["-f", "-"], nat_ruleset(nat.table, tuns, sources, exclude))
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no detail"])[0]
            raise NatError(
                f"installing the NAT table {nat.table} failed ({detail}): check that nftables "
                "NAT is available in this kernel or set nat = false"
            )
        nat.installed = True
        return nat

    def remove(self) -> None:
        if self.installed:
            _nft(["delete", "table", "inet", self.table])
            self.installed = False


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["nft", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NatError(f"running nft failed ({exc}): check the nftables installation") from None


__all__ = ["Masquerade", "NatError", "nat_ruleset", "table_name"]
