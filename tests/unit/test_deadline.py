"""tunnel.aio.deadline: one timer per sans-I/O object, under asyncio and uvloop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tunnel.aio.deadline import DeadlineTimer


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run])
def test_rearming_follows_the_deadline_even_below_half_a_millisecond(runner: object) -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = DeadlineTimer(fired.append)
        for _ in range(200):  # deadlines 0.1 ms away: uvloop gives Handles without when()
            timer.arm(loop.time() + 0.0001)
            timer.arm(loop.time() + 0.0002)  # re-armed: the first call is cancelled
        target = timer.deadline
        assert target is not None
        for _ in range(1000):  # bounded poll: the call happens within a few loop iterations
            if fired:
                break
            await asyncio.sleep(0.001)
        timer.arm(None)
        assert timer.deadline is None
        return [f - target for f in fired]

    late = runner(scenario())  # type: ignore[operator]
    assert len(late) == 1 and late[0] >= 0  # once, never before the deadline
