"""The release pacer spreads what the reorder buffer releases at once (tunnel/session/
release_pacer.py): a fake clock, every rule checked on its own."""

from __future__ import annotations

from tunnel.session.release_pacer import (
    MIN_RATE,
    RELEASE_BATCH,
    RELEASE_BURST,
    RELEASE_SPEEDUP,
    ReleasePacer,
)

RATE = 2500.0  # packets per second: 20 Mbit/s of 1,000-byte datagrams


def steady(pacer: ReleasePacer[int], start: float, count: int, first: int = 0) -> list[int]:
    """`count` packets arriving in order at RATE from `start`, each released as it comes."""
    out: list[int] = []
    for n in range(count):
        now = start + n / RATE
        pacer.arrived(now)
        out += pacer.release([first + n], now)
    return out


def drain(pacer: ReleasePacer[int]) -> tuple[list[int], list[tuple[float, int]]]:
    """Poll at each deadline until nothing waits: what came out, and (time, how many) per poll."""
    out: list[int] = []
    polls: list[tuple[float, int]] = []
    for _ in range(10_000):
        deadline = pacer.next_deadline()
        if deadline is None:
            break
        batch = pacer.poll(deadline)
        polls.append((deadline, len(batch)))
        out += batch
    return out, polls


def test_a_flow_in_order_never_waits() -> None:
    pacer: ReleasePacer[int] = ReleasePacer()
    assert steady(pacer, 0.0, 1000) == list(range(1000))
    assert pacer.paced == 0 and len(pacer) == 0 and pacer.next_deadline() is None


def test_a_run_released_at_once_leaves_a_burst_then_at_a_multiple_of_the_flow_rate() -> None:
    """A hold of 100 ms at 2,500 packets a second: 250 packets released together. The first
    RELEASE_BURST go at once, the rest in batches, all within 100 ms / RELEASE_SPEEDUP, in
    order."""
    pacer: ReleasePacer[int] = ReleasePacer()
    steady(pacer, 0.0, 500)  # 200 ms: the pacer knows the rate
    now = 500 / RATE
    for n in range(250):  # arriving while a gap holds them
        pacer.arrived(now + n / RATE)
    now += 250 / RATE
    run = list(range(500, 750))
    first = pacer.release(run, now)
    assert first == run[:RELEASE_BURST]
    rest, polls = drain(pacer)
    assert first + rest == run
    assert pacer.paced == 250 - RELEASE_BURST
    assert all(0 < count <= RELEASE_BATCH + 1 for _, count in polls)
    spread = polls[-1][0] - now
    expected = (250 - RELEASE_BURST) / (RELEASE_SPEEDUP * RATE)
    assert expected * 0.8 < spread < expected * 1.25


def test_what_is_released_while_a_run_waits_goes_behind_it() -> None:
    pacer: ReleasePacer[int] = ReleasePacer()
    steady(pacer, 0.0, 200)
    now = 1.0
    out = pacer.release(list(range(100)), now)
    assert len(out) == RELEASE_BURST and len(pacer) == 100 - RELEASE_BURST
    out += pacer.release([100], now + 0.0001)  # in order, but a run waits: behind it
    rest, _ = drain(pacer)
    assert out + rest == list(range(101))


def test_a_sparse_flow_is_paced_at_the_minimum_rate_at_least() -> None:
    """Nothing known of the flow's rate (or a slow one): the run still leaves within
    its length / (RELEASE_SPEEDUP x MIN_RATE)."""
    pacer: ReleasePacer[int] = ReleasePacer()
    run = list(range(200))
    out = pacer.release(run, 5.0)
    rest, polls = drain(pacer)
    assert out + rest == run
    assert polls[-1][0] - 5.0 <= (200 - RELEASE_BURST) / (RELEASE_SPEEDUP * MIN_RATE) + 1e-9


def test_flush_gives_everything_waiting_in_order() -> None:
    pacer: ReleasePacer[int] = ReleasePacer()
    out = pacer.release(list(range(100)), 0.0)
    assert out + pacer.flush() == list(range(100))
    assert len(pacer) == 0 and pacer.next_deadline() is None and pacer.poll(1.0) == []


def test_the_bucket_refills_after_a_burst() -> None:
    pacer: ReleasePacer[int] = ReleasePacer()
    assert len(pacer.release(list(range(RELEASE_BURST)), 0.0)) == RELEASE_BURST
    refill = RELEASE_BURST / (RELEASE_SPEEDUP * MIN_RATE)
    assert len(pacer.release(list(range(RELEASE_BURST)), refill)) == RELEASE_BURST
    assert pacer.paced == 0


def test_turned_off_it_lets_a_whole_run_go_at_once() -> None:
    """`[limits] release_pacing = false`: the run that the same pacer, on, spreads (the test
    above) leaves in one piece, and nothing waits."""
    pacer: ReleasePacer[int] = ReleasePacer(enabled=False)
    steady(pacer, 0.0, 500)
    now = 500 / RATE
    for n in range(250):
        pacer.arrived(now + n / RATE)
    run = list(range(500, 750))
    assert pacer.release(run, now + 250 / RATE) == run
    assert pacer.paced == 0 and len(pacer) == 0 and pacer.next_deadline() is None
