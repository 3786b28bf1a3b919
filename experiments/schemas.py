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


# The processes whose CPU every point of the failover, goodput and aggregation experiments records
# (experiments/procstat.py CpuMeter, over the point's measurement window, 100 = one core):
#   client, concentrator   the tunnel's programs on c1 and conc: qtun client / concentrator, or
#                          wireguard-go on each (empty for plain and MPTCP: nothing runs there)
#   shaper_wifi, shaper_5g qtwire on each access link (empty with the netem backend: no process)
#   sender, receiver       the traffic generator's two ends (experiments/traffic.py, our iperf3)
CPU_PROCESSES = ("client", "concentrator", "shaper_wifi", "shaper_5g", "sender", "receiver")
CPU_COLUMNS = (
    *(f"cpu_{name}_pct" for name in CPU_PROCESSES),
    "cpu_host_pct",  # the whole machine's busy time, 100 = one core (a 2-core machine: 200)
    "cpu_busiest",  # which of CPU_PROCESSES used the most
    # True when one of them used >= procstat.CPU_SATURATED_PCT of a core: the point may measure
    # the machine rather than the network (the analysis flags it, never drops it silently)
    "cpu_saturated",
)

# What the link emulator did on its own over the same window (experiments/shaper_meter.py; empty
# with the netem backend, and in runs written before 2026-12-06):
#   shaper_late_max_ms  the latest any frame left a qtwire after its due time (ms)
#   shaper_faults       frames a qtwire lost that no setting asked for (a send refused, its
#                       hard cap, its socket's kernel buffer overflowing); > 0 flags the point
#                       as the CPU does (analysis: the link was not the one configured)
#   shaper_fault_counters  which of qtwire's counters hold those faults, "shaper/direction/
#                       counter=n" space-separated ("" for none; runs before 2026-12-07 lack it)
SHAPER_COLUMNS = ("shaper_late_max_ms", "shaper_faults", "shaper_fault_counters")


def tables(*written: Table) -> dict[str, list[str]]:
    """`Experiment.tables` for an experiment writing these tables (the first is the primary)."""
    return {t.name: list(t.columns) for t in written}


PMTU_COLUMNS = ("pmtu_suspected_ms", "pmtu_fell_ms", "pmtu_settled_ms")
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
        "goodput_during_mbps",  # the whole outage, gap included
        "goodput_after_mbps",
        "packets_lost",
        "reordered",
        "completed",
        "packets_sent",
        "bytes_received",
        # issue 12's "goodput during the outage (after the gap)": from the end of the gap to the
        # repair; 0 when delivery resumed only after the repair (or never)
        "goodput_after_gap_mbps",
        # TCP: the segments the sender's kernel retransmitted over the whole point (TCP_INFO
        # tcpi_total_retrans): what a tunnel let the inner TCP see as lost; empty for UDP (MPTCP:
        # what the kernel's TCP_INFO gives on the MPTCP socket, one subflow's count)
        "inner_retransmits",
        "ablation_off",  # the mechanism an ablation variant turns off ("none": all on; "": none)
        # with path MTU discovery (limits.pmtu_discovery): when, from the outage's start, the
        # concentrator suspected a black hole, found its size no longer carried (fell to 1200)
        # and settled on a new size (tunnel/protocol/pmtu.py BlackHoleEpisode; its first
        # suspicion in the outage that fell, else its first); empty: none, or no discovery
        *PMTU_COLUMNS,
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
    optional=(
        "packets_sent",
        "bytes_received",
        "goodput_after_gap_mbps",
        "inner_retransmits",
        "ablation_off",
        *PMTU_COLUMNS,
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
)
# The sender's inner TCP over time (TCP_INFO of its first connection, experiments/traffic.py):
# congestion window, smoothed RTT, segments retransmitted so far; empty for UDP (MPTCP: one
# subflow's, as the kernel's TCP_INFO on the MPTCP socket gives it).
INNER_TCP_COLUMNS = ("inner_cwnd_segments", "inner_rtt_ms", "inner_retransmits")
FAILOVER_TIMESERIES = Table(
    "failover_timeseries",
    ("variant", "run", "event", "traffic", "t_s", "goodput_mbps", *INNER_TCP_COLUMNS),
    optional=("event", "traffic", *INNER_TCP_COLUMNS),
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
        # the tunnel's own (outer QUIC) congestion control and loss hiding, issue 13; "" for the
        # baselines (plain, WireGuard), which have neither
        "outer_cc",
        "loss_hiding",
        "transport",
        "cc",  # the inner TCP's congestion control ("" for UDP)
        "loss_pct",
        "rtt_ms",
        "run",
        "goodput_mbps",
        "rate_mbit",
        "packets_lost",
        # UDP: of those, the datagrams the receiver's own socket dropped (a burst its buffer
        # could not take; from 2026-12-07); empty for TCP
        "receiver_drops",
        # TCP: the segments the sender's kernel retransmitted over the flow (TCP_INFO); empty
        # for UDP
        "inner_retransmits",
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
    optional=(
        "outer_cc",
        "loss_hiding",
        "rate_mbit",
        "packets_lost",
        "receiver_drops",
        "inner_retransmits",
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
)
# Each point's flow over time, every timeseries_interval_s: what a slow run did (a stall, a
# slow start that ended early), with the inner TCP's state as in FAILOVER_TIMESERIES.
GOODPUT_TIMESERIES = Table(
    "goodput_timeseries",
    (
        "mode",
        "outer_cc",
        "loss_hiding",
        "transport",
        "cc",
        "loss_pct",
        "rtt_ms",
        "run",
        "t_s",
        "goodput_mbps",
        *INNER_TCP_COLUMNS,
    ),
    optional=("outer_cc", "loss_hiding", *INNER_TCP_COLUMNS),
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
        # what each access carried to c1 over the whole transfer, warm-up included (its
        # interface's received bytes: overhead and re-sent copies count), Mbit/s
        "wifi_link_mbps",
        "fiveg_link_mbps",
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
    optional=("wifi_link_mbps", "fiveg_link_mbps", "detail", *CPU_COLUMNS, *SHAPER_COLUMNS),
)
SCALE = Table(
    "scale",
    (
        "mode",
        "workers",  # concentrator processes (README "Workers")
        "clients_per_process",  # clients per qtun process (README "Client groups")
        "conc_txqueuelen",  # the concentrator TUN's ring, packets (0: the kernel's)
        "clients",
        "client",
        "run",
        "goodput_mbps",
        "jain_fairness",
        "conc_cpu_pct",
        "conc_rss_mb",
        "conc_rss_idle_mb",
        "conc_rss_per_client_kb",
        # shared pages divided among the processes sharing them: with workers, what the
        # supervisor and its forks hold together (RSS counts a shared page in each)
        "conc_pss_mb",
        "clients_cpu_pct",
        "host_cpu_pct",  # 100 = one core: a 2-core machine tops out at 200
        "uplink_mbit",
        "error",
    ),
    optional=(
        "mode",
        "workers",
        "clients_per_process",
        "conc_txqueuelen",
        "jain_fairness",
        "conc_rss_idle_mb",
        "conc_rss_per_client_kb",
        "conc_pss_mb",
        "clients_cpu_pct",
        "host_cpu_pct",
        "uplink_mbit",
        "error",
    ),
)

LATENCY = Table(
    "latency",
    (
        "mode",
        "queue_aqm",  # qtun modes: limits.queue_aqm (codel, off); n/a for plain, WireGuard
        "load",  # idle, or tcp: one bulk TCP flow to c1 while the pings run
        "run",
        "pings",
        "replies",
        "rtt_min_ms",
        "rtt_median_ms",
        "rtt_p95_ms",
        "rtt_max_ms",
        "goodput_mbps",  # the load's goodput over the pings' window (empty when idle)
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
    ),
    optional=("goodput_mbps", "detail", *CPU_COLUMNS, *SHAPER_COLUMNS),
)

# The video workload's columns of a point's row (experiments/video_abr.py VideoMetrics): one
# session's figures, empty for the other workloads.
VIDEO_SESSION_COLUMNS = (
    "video_segments",  # segments fetched whole
    "video_played_s",  # seconds of video played in the session
    "video_bitrate_mbps",  # mean bitrate played: the rates weighted by their seconds played
    "video_switches",  # rate changes between consecutive segments played
    "video_stalls",  # the buffer ran dry after playback had started (startup is not one)
    "video_stall_s",  # their total time, a stall still going at the end counted up to it
    "video_startup_s",  # first request to the first segment in (playback starts)
    "video_abandoned",  # segments under way at the session's end (0 or 1)
    "video_errors",  # failed exchanges (reset, stalled connection) the player retried
)

# The workload experiment (experiments/workload.py): a row per point, per call, per flow.
# Its CPU columns: `sender` / `receiver` are the workload's own two programs (the VoIP, web or
# bulk tools); with a background bulk load, that load's two ends are load_sender / load_receiver
# (empty without one), and cpu_busiest / cpu_saturated consider them too.
VOIP_CALL_COLUMNS = (
    "packets_sent",
    "packets_received",
    "duplicates",
    "packets_lost",
    "loss_pct",
    "packets_late",  # arrived after their playout time (playout_buffer_ms)
    "late_pct",
    "effective_loss_pct",  # lost + late: what the listener does not hear (the E-model's Ppl)
    "burst_ratio",  # G.107 BurstR of the effective loss pattern
    "owd_min_ms",  # one-way delay, application to application (one clock: exact)
    "owd_median_ms",
    "owd_p95_ms",
    "owd_max_ms",
    "jitter_ms",  # RFC 3550 §6.4.1 interarrival jitter at the end of the call
    "jitter_mean_ms",  # ... and its mean over the call
    "playout_buffer_ms",
    "mouth_to_ear_ms",  # the E-model's delay: first packet's delay + buffer + 20 ms packetisation
    "r_factor",
    "mos",  # G.107 Annex B from r_factor
    # The same call scored for an adaptive playout buffer (Ramjee et al. 1994, algorithm 1,
    # adjusted every playout_adjust_s: experiments/voice_quality.py); runs before it lack these.
    "playout_adjust_s",
    "packets_late_adaptive",  # arrived after their scheduled playout
    "late_adaptive_pct",
    "effective_loss_adaptive_pct",
    "burst_ratio_adaptive",
    "playout_delay_adaptive_ms",  # mean over the packets heard of their playout delay (from send)
    "mouth_to_ear_adaptive_ms",  # ... + 20 ms packetisation: the E-model's delay
    "r_factor_adaptive",
    "mos_adaptive",
)
VOIP_ADAPTIVE_COLUMNS = VOIP_CALL_COLUMNS[VOIP_CALL_COLUMNS.index("playout_adjust_s") :]
QUEUE_AQMS = ("codel", "off")
"""The values of a qtun mode's `queue_aqm` dimension (latency and workload experiments): each
tunnel connection's datagram queue under CoDel, or tail drop at its cap (limits.queue_aqm)."""
NO_AQM = "n/a"
"""The `queue_aqm` of a mode without a tunnel queue (plain, WireGuard)."""


def aqm_label(mode: str, aqm: object) -> str:
    """How a figure or table names a point of `mode` run with `aqm`: "<mode> codel" under
    CoDel, the mode alone otherwise (tail drop, the default; no tunnel queue; a run from
    before the dimension, which has no value)."""
    return f"{mode} codel" if aqm == "codel" else mode


WORKLOAD = Table(
    "workload",
    (
        "mode",
        "queue_aqm",  # qtun modes: limits.queue_aqm (codel, off); n/a for plain, WireGuard
        "workload",  # voip, voip-bulk, web, web-bulk, bulk-parallel
        "run",
        "calls",
        "mos",  # the median over the point's calls
        "r_factor",
        "owd_median_ms",
        "jitter_ms",
        "loss_pct",
        "late_pct",
        "mos_adaptive",  # the adaptive playout buffer's (VOIP_CALL_COLUMNS), medians too
        "r_factor_adaptive",
        "late_adaptive_pct",
        "mouth_to_ear_adaptive_ms",
        "flows",  # web objects fetched (or bulk connections)
        "flows_ok",
        "fct_median_ms",
        "fct_p95_ms",
        "goodput_mbps",  # bulk-parallel: all connections together
        "jain_fairness",  # bulk-parallel: Jain's index over the connections' goodputs
        "load_goodput_mbps",  # the background bulk flow's, in the *-bulk workloads
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
        "cpu_load_sender_pct",
        "cpu_load_receiver_pct",
        *VIDEO_SESSION_COLUMNS,
    ),
    optional=(
        "queue_aqm",  # runs before 2026-12-08 lack it: the queue was tail drop ("off")
        "calls",
        "mos",
        "r_factor",
        "owd_median_ms",
        "jitter_ms",
        "loss_pct",
        "late_pct",
        "mos_adaptive",
        "r_factor_adaptive",
        "late_adaptive_pct",
        "mouth_to_ear_adaptive_ms",
        "flows",
        "flows_ok",
        "fct_median_ms",
        "fct_p95_ms",
        "goodput_mbps",
        "jain_fairness",
        "load_goodput_mbps",
        "detail",
        *CPU_COLUMNS,
        *SHAPER_COLUMNS,
        "cpu_load_sender_pct",
        "cpu_load_receiver_pct",
        *VIDEO_SESSION_COLUMNS,  # runs before the video workload lack them
    ),
)
WORKLOAD_CALLS = Table(
    "workload_calls",
    ("mode", "queue_aqm", "workload", "run", "call", *VOIP_CALL_COLUMNS, "send_slip_max_ms"),
    optional=("queue_aqm", *VOIP_ADAPTIVE_COLUMNS, "send_slip_max_ms"),
)
WORKLOAD_FLOWS = Table(
    "workload_flows",
    (
        "mode",
        "queue_aqm",
        "workload",
        "run",
        "flow",  # the object's (or connection's) number
        "kind",  # web: one fetched object; bulk: one of the parallel connections
        "size_bytes",  # web: the object's size (web_mix); empty for bulk
        "start_s",  # web: when its fetch began, from the workload's origin
        "fct_ms",  # web: flow completion time, connect() to the last byte
        "bytes",  # what arrived
        "goodput_mbps",  # bulk: its share of the point's goodput (in proportion to its bytes)
        "outcome",  # web: soak_traffic's (ok, short, corrupt, reset, ...); bulk: ok
        "error",
    ),
    optional=("queue_aqm", "size_bytes", "start_s", "fct_ms", "goodput_mbps", "error"),
)
WORKLOAD_SEGMENTS = Table(
    "workload_segments",
    (
        "mode",
        "queue_aqm",
        "workload",
        "run",
        "segment",  # its number in the session
        "rate_mbps",  # the ladder rate the ABR rule chose (its size: rate x 2 s / 8)
        "bytes",
        "request_s",  # when it was asked for, from the session's origin
        "arrival_s",  # when its last byte came
        "download_ms",  # request to last byte
        "throughput_mbps",  # bytes over download time: the ABR rule's sample
        "buffer_s",  # the player's buffer (seconds of video) when it asked
    ),
    # bytes and download_ms give throughput_mbps: no figure needs the column
    optional=("queue_aqm", "throughput_mbps"),
)

# Every table a loader reads, by name.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        FAILOVER,
        FAILOVER_TIMESERIES,
        OVERHEAD,
        GOODPUT,
        GOODPUT_TIMESERIES,
        AGGREGATION,
        SCALE,
        LATENCY,
        WORKLOAD,
        WORKLOAD_CALLS,
        WORKLOAD_FLOWS,
        WORKLOAD_SEGMENTS,
    )
}

# failover.csv's `detail` for a run whose flow carried nothing before the outage (it had stopped
# or never started): no failover result, left out of the analysis (experiments/analysis.py
# load_failover) and not counted as "never recovered"
NO_DELIVERY_BEFORE = "no delivery before the outage"
