"""Link profiles: plain data describing one direction of an access link, units in the field names.

No Mininet import here: experiments, notebooks and unit tests read profiles without root.
Figures are typical values, chosen to make experiments distinct rather than to model one
operator; override any field per link (`profile("wifi", delay_ms=30)`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from tunnel.user_error import UsageError

MIN_MTU_BYTES = 576  # the datagram every IPv4 host must accept (RFC 791); fidelity pings fit
LINK_MTU = 1500  # what the lab's veths carry: the largest mtu_bytes


class ProfileError(UsageError):
    """A profile name or field value that cannot be used."""


@dataclass(frozen=True)
class LinkProfile:
    """Impairment of one direction of a link. Zero means "not impaired" for every field."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    # With reorder False, jitter never lets a packet overtake the one sent before it.
    reorder: bool = False
    loss_pct: float = 0.0
    # Bursty loss instead of random loss: the Gilbert-Elliott model (netem's "loss gemodel"),
    # on when ge_p_pct > 0. Per packet the state moves (good -> bad with ge_p_pct %, bad -> good
    # with ge_r_pct %), then the packet is lost with its state's loss: ge_good_loss_pct (1-k),
    # ge_bad_loss_pct (1-h). Mean loss: see `mean_loss_pct`; a bad period lasts 1/r packets
    # on average (geometric), so with the defaults (h = 0, k = 1) losses come in bursts of mean
    # length 100 / ge_r_pct.
    ge_p_pct: float = 0.0
    ge_r_pct: float = 100.0
    ge_good_loss_pct: float = 0.0
    ge_bad_loss_pct: float = 100.0
    rate_mbit: float = 0.0  # 0: unlimited
    # A trace-driven rate instead of rate_mbit (testbed/traces.py): a Mahimahi trace file, or
    # the name of a shipped one ("wifi-walk", "5g-walk", "const-20"); the wire backend only.
    trace: str = ""
    queue_packets: int = 1000  # drop-tail limit of the rate queue (netem's default limit)
    queue_bytes: int = 0  # 0: no byte limit
    # The largest IP packet the link carries: a longer one is dropped without a word, as by a
    # link with a smaller MTU whose router sends no ICMP (a path MTU black hole, RFC 8899 §1.1);
    # 0: whatever the interfaces carry (1500). The wire backend only.
    mtu_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "rate_mbit"):
            # finite too: nan passes `< 0`, and inf (or 1e400) would reach the shaper as a
            # delay or rate it cannot keep (the percentages' 0-100 range refuses both)
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ProfileError(
                    f"{name} must be a finite number >= 0, got {getattr(self, name)}."
                )
        for name in ("loss_pct", "ge_p_pct", "ge_r_pct", "ge_good_loss_pct", "ge_bad_loss_pct"):
            if not 0 <= getattr(self, name) <= 100:
                raise ProfileError(f"{name} must be between 0 and 100, got {getattr(self, name)}.")
        if self.ge_p_pct and self.loss_pct:
            raise ProfileError(
                "loss_pct (random loss) and ge_p_pct (Gilbert-Elliott bursts) are both set: "
                "choose one loss model."
            )
        if self.trace and self.rate_mbit:
            raise ProfileError(
                f"trace {self.trace!r} and rate_mbit {self.rate_mbit:g} are both set: a trace "
                "gives the rate, leave rate_mbit at 0."
            )
        if self.ge_p_pct and not self.ge_r_pct:
            raise ProfileError("ge_r_pct is 0: the bad state would never end; give it > 0.")
        if self.queue_packets < 0 or self.queue_bytes < 0:
            raise ProfileError("queue_packets and queue_bytes must be >= 0.")
        if self.mtu_bytes and not MIN_MTU_BYTES <= self.mtu_bytes <= LINK_MTU:
            raise ProfileError(
                f"mtu_bytes must be 0 (no limit) or between {MIN_MTU_BYTES} and "
                f"{LINK_MTU}, got {self.mtu_bytes}."
            )
        if self.jitter_ms > self.delay_ms and self.jitter_ms > 0:
            raise ProfileError(
                f"jitter_ms ({self.jitter_ms}) must not exceed delay_ms ({self.delay_ms})."
            )

    def with_overrides(self, **overrides: float | int | bool | str) -> LinkProfile:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ProfileError(
                f"unknown profile field(s) {sorted(unknown)}; known fields: {sorted(known)}."
            )
        return replace(self, **overrides)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return asdict(self)

    @property
    def mean_loss_pct(self) -> float:
        """The long-run loss rate: loss_pct, or the Gilbert-Elliott chain's stationary mix of
        its two states' losses (in the bad state a fraction p / (p + r) of the time)."""
        if not self.ge_p_pct:
            return self.loss_pct
        bad = self.ge_p_pct / (self.ge_p_pct + self.ge_r_pct)
        return bad * self.ge_bad_loss_pct + (1 - bad) * self.ge_good_loss_pct


# One direction each; access links use the same profile both ways unless overridden.
PROFILES: dict[str, LinkProfile] = {
    "wired": LinkProfile(delay_ms=1.0, rate_mbit=1000.0),
    "wifi": LinkProfile(delay_ms=5.0, jitter_ms=2.0, loss_pct=0.1, rate_mbit=50.0),
    "5g": LinkProfile(delay_ms=10.0, jitter_ms=1.0, rate_mbit=100.0, queue_packets=2000),
    "lte": LinkProfile(delay_ms=25.0, jitter_ms=5.0, rate_mbit=20.0, queue_packets=500),
    "lossy": LinkProfile(delay_ms=20.0, jitter_ms=5.0, loss_pct=5.0, rate_mbit=10.0),
    # the rate of the shipped model traces (testbed/traces.py: generated, not measured)
    "wifi-trace": LinkProfile(delay_ms=5.0, jitter_ms=2.0, trace="wifi-walk"),
    "5g-trace": LinkProfile(delay_ms=10.0, jitter_ms=1.0, trace="5g-walk", queue_packets=2000),
    "none": LinkProfile(),
}


def profile(name: str, **overrides: float | int | bool | str) -> LinkProfile:
    """The named profile with some fields replaced; a clear error for an unknown name."""
    try:
        base = PROFILES[name.lower()]
    except KeyError:
        raise ProfileError(
            f"unknown link profile {name!r}; choose one of {', '.join(sorted(PROFILES))}."
        ) from None
    return base.with_overrides(**overrides)


def parse_overrides(text: str) -> dict[str, float | int | bool | str]:
    """Parse "delay_ms=20,loss_pct=1" (the CLI form) into typed overrides."""
    out: dict[str, float | int | bool | str] = {}
    types = {f.name: f.type for f in fields(LinkProfile)}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ProfileError(
                f"bad override {item!r}: write field=value with a field from {sorted(types)}."
            )
        kind = types[key]
        try:
            if kind == "bool":
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif kind == "int":
                out[key] = int(value)
            elif kind == "str":
                out[key] = value
            else:
                out[key] = float(value)
        except ValueError:
            wanted = f"{key} must be a whole number" if kind == "int" else "not a number"
            raise ProfileError(f"bad value in {item!r}: {wanted}.") from None
    return out
