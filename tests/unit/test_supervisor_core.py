"""The supervisor of `workers = N`, its decisions without processes (tunnel/agents/supervisor.py);
the forks, signals and exit codes for real: tests/integration/test_concentrator.py."""

from __future__ import annotations

import signal

import pytest

from tunnel.agents.supervisor import (
    STOP_TIMEOUT,
    SignalWorkers,
    SupervisorCore,
    WriteStatus,
    overall_state,
)
from tunnel.user_error import EXIT_RUNTIME

WORKERS = {101: 0, 102: 1, 103: 2}  # pid -> index
TERM = SignalWorkers(signal.SIGTERM)


def core(now: float = 0.0) -> SupervisorCore:
    return SupervisorCore(WORKERS, status_interval=1.0, now=now)


def test_sigterm_stops_every_worker_once_and_exits_cleanly() -> None:
    c = core()
    assert c.signal(signal.SIGTERM, 5.0) == [TERM]
    assert c.signal(signal.SIGINT, 5.5) == []  # already stopping
    for pid in WORKERS:
        assert c.worker_ended(pid, 0, 6.0) == []
    assert c.done and c.exit_code == 0


def test_a_worker_ending_on_its_own_stops_the_others_with_its_code() -> None:
    c = core()
    assert c.worker_ended(102, 3, 1.0) == [TERM]
    assert not c.done and c.exit_code == 3
    c.worker_ended(101, 0, 1.1)
    c.worker_ended(103, 0, 1.2)
    assert c.done and c.exit_code == 3


@pytest.mark.parametrize("code", [0, -9])
def test_a_worker_gone_without_an_error_code_still_fails_the_program(code: int) -> None:
    """Killed by a signal (negative) or exiting 0 unasked: its connections are lost either way."""
    c = core()
    assert c.worker_ended(101, code, 1.0) == [TERM]
    assert c.exit_code == EXIT_RUNTIME


def test_an_error_while_stopping_turns_a_clean_exit_into_it() -> None:
    c = core()
    c.signal(signal.SIGTERM, 0.0)
    c.worker_ended(101, 0, 0.1)
    c.worker_ended(102, 4, 0.2)
    c.worker_ended(103, 5, 0.3)  # the first error stands
    assert c.exit_code == 4


def test_workers_that_do_not_stop_in_time_are_killed_once() -> None:
    c = core(now=10.0)
    c.signal(signal.SIGTERM, 10.0)
    assert c.next_deadline() == 10.0  # the first status file is due at once
    assert c.timer(10.0) == [WriteStatus()]
    assert c.next_deadline() == 11.0
    assert SignalWorkers(signal.SIGKILL) not in c.timer(10.0 + STOP_TIMEOUT - 0.1)
    assert SignalWorkers(signal.SIGKILL) in c.timer(10.0 + STOP_TIMEOUT)
    assert SignalWorkers(signal.SIGKILL) not in c.timer(10.0 + STOP_TIMEOUT + 5)


def test_status_is_written_every_interval_and_sighup_is_passed_on() -> None:
    c = core(now=100.0)
    assert c.timer(100.0) == [WriteStatus()]
    assert c.timer(100.5) == []
    assert c.next_deadline() == 101.0
    assert c.timer(101.2) == [WriteStatus()]
    assert c.next_deadline() == pytest.approx(102.2)
    assert c.signal(signal.SIGHUP, 101.3) == [SignalWorkers(signal.SIGHUP)]
    assert c.signal(signal.SIGCHLD, 101.3) == []
    assert c.exit_code is None


def test_an_unknown_child_changes_nothing_and_no_child_left_ends_it() -> None:
    c = core()
    assert c.worker_ended(999, 7, 1.0) == []
    assert c.exit_code is None and len(c.live) == 3
    c.signal(signal.SIGTERM, 2.0)
    c.forget_workers()
    assert c.done and c.exit_code == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        SupervisorCore({}, 1.0, 0.0)
    with pytest.raises(ValueError, match="status_interval"):
        SupervisorCore(WORKERS, 0.0, 0.0)


def test_the_merged_state_is_up_only_when_every_worker_is() -> None:
    assert overall_state(["up", "up"], 2, stopped=False) == "up"
    assert overall_state(["up", "starting"], 2, stopped=False) == "starting"
    assert overall_state(["up"], 2, stopped=False) == "starting"  # a file not read
    assert overall_state(["up", "up"], 2, stopped=True) == "stopped"
