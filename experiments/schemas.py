"""The columns of every results table the notebooks read, declared once.

An experiment writes a table's `columns` in this order (`Experiment.tables`, built by `tables()`);
`experiments.analysis` loads it and requires its `required` columns (README "Results": the
contract a notebook may rely on). Optional columns are ones runs written before them lack, or
details (a point's error text) no figure needs; a loader keeps whatever extra columns it finds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """One results CSV, `<name>.csv` in a run directory."""

    name: str
    columns: tuple[str, ...]  # what the experiment writes, in this order
    optional: tuple[str, ...] = ()  # columns a loader does not require

    def __post_init__(self) -> None:
        unknown = sorted(set(self.optional) - set(self.columns))
        if unknown or len(set(self.columns)) != len(self.columns):
            raise ValueError(f"table {self.name}: optional {unknown} or a column twice.")

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.optional)

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"


def tables(*written: Table) -> dict[str, list[str]]:
    """`Experiment.tables` for an experiment writing these tables (the first is the primary)."""
    return {t.name: list(t.columns) for t in written}


FAILOVER = Table(
    "failover",
    (
        "variant",
        "run",
        "event",
        "traffic",
        "down_at_s",
        "up_at_s",
        "gap_ms",  # empty: delivery never resumed
        "goodput_before_mbps",
        "goodput_during_mbps",
        "goodput_after_mbps",
        "packets_lost",
        "reordered",
        "completed",
        "packets_sent",
        "bytes_received",
        "detail",
    ),
    optional=("packets_sent", "bytes_received", "detail"),
)
FAILOVER_TIMESERIES = Table(
    "failover_timeseries",
    ("variant", "run", "event", "traffic", "t_s", "goodput_mbps"),
    optional=("event", "traffic"),
)
OVERHEAD = Table(
    "overhead",
    (
        "mode",
        "workload",  # optional: bulk rows may be marked by payload_bytes = -1 instead
        "payload_bytes",
        "run",
        "packets",
        "app_bytes",
        "wire_bytes",
        "wire_packets",
        "overhead_per_packet_bytes",
        "overhead_pct",
        "expected_per_packet_bytes",
        "reverse_wire_bytes",
        "reverse_packets",
        "sent",
        "capture_missed",
    ),
    optional=(
        "workload",
        "run",
        "wire_packets",
        "reverse_wire_bytes",
        "reverse_packets",
        "sent",
        "capture_missed",
    ),
)
GOODPUT = Table(
    "goodput",
    (
        "mode",
        "transport",
        "cc",
        "loss_pct",
        "rtt_ms",
        "run",
        "goodput_mbps",
        "rate_mbit",
        "packets_lost",
        "detail",
    ),
    optional=("rate_mbit", "packets_lost", "detail"),
)
AGGREGATION = Table(
    "aggregation",
    (
        "variant",
        "scheduler",
        "reorder",
        "run",
        "wifi_mbit",
        "fiveg_mbit",
        "goodput_mbps",
        "ratio",
        "detail",
    ),
    optional=("detail",),
)
SCALE = Table(
    "scale",
    (
        "mode",
        "clients",
        "client",
        "run",
        "goodput_mbps",
        "jain_fairness",
        "conc_cpu_pct",
        "conc_rss_mb",
        "conc_rss_idle_mb",
        "conc_rss_per_client_kb",
        "clients_cpu_pct",
        "host_cpu_pct",  # 100 = one core: a 2-core machine tops out at 200
        "uplink_mbit",
        "error",
    ),
    optional=(
        "mode",
        "jain_fairness",
        "conc_rss_idle_mb",
        "conc_rss_per_client_kb",
        "clients_cpu_pct",
        "host_cpu_pct",
        "uplink_mbit",
        "error",
    ),
)

# Every table a loader reads, by name.
TABLES: dict[str, Table] = {
    t.name: t for t in (FAILOVER, FAILOVER_TIMESERIES, OVERHEAD, GOODPUT, AGGREGATION, SCALE)
}
