"""The executor's decisions as pure functions: no threads, no hosts, no Airflow loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from winexec import protocol
from winexec.config import HostSpec, Settings
from winexec.executor import policy
from winexec.pool import HostPool
from winexec.transport import (
    AuthDenied,
    HostFull,
    HostUnreachable,
    LaunchAmbiguous,
    ShellGone,
    TicketFailure,
)

S = Settings(
    hosts=(HostSpec("win01.t"), HostSpec("win02.t")),
    default_principal="svc@T",
    launch_attempts=3,
    launch_backoff=1.0,
    launch_backoff_max=4.0,
    heartbeat_interval=10.0,
    execution_timeout_grace=30.0,
    poll_timeout=5,
    start_timeout=120.0,
    missed_heartbeats=6,
)


def test_a_full_host_moves_the_task_on_at_once_and_uses_no_attempt() -> None:
    now = policy.after_launch_failure(HostFull("q"), 3, "win01.t", excluded=1, hosts=2, settings=S)
    assert now == policy.Relaunch(0.0, uses_attempt=False)  # not a GiveUp, though it is the third
    every = policy.after_launch_failure(HostFull("q"), 1, "win02.t", excluded=2, hosts=2, settings=S)
    assert every == policy.Relaunch(policy.FULL_RETRY, uses_attempt=False)


def test_a_transient_failure_is_retried_with_backoff_until_the_attempts_run_out() -> None:
    first = policy.after_launch_failure(HostUnreachable("down"), 1, "win01.t", 1, 2, S)
    assert isinstance(first, policy.Relaunch) and first.uses_attempt and 1.0 <= first.delay <= 2.0
    second = policy.after_launch_failure(HostUnreachable("down"), 2, "win01.t", 1, 2, S)
    assert isinstance(second, policy.Relaunch) and 2.0 <= second.delay <= 4.0
    last = policy.after_launch_failure(HostUnreachable("down"), 3, "win01.t", 1, 2, S)
    assert last == policy.GiveUp("could not start the task on win01.t after 3 attempt(s): down")


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (AuthDenied("refused"), "could not start the task on win01.t: refused"),
        (TicketFailure("no keytab", transient=False), "could not start the task: no keytab"),
        # an ambiguous launch may have started the try: never launched again, anywhere
        (LaunchAmbiguous("silent"), "could not start the task on win01.t: silent"),
    ],
)
def test_a_permanent_failure_gives_up_at_once_naming_the_host_unless_the_ticket_failed(
    err: Exception, reason: str
) -> None:
    assert policy.after_launch_failure(err, 1, "win01.t", 0, 2, S) == policy.GiveUp(reason)  # type: ignore[arg-type]


def test_what_an_agents_exit_line_means() -> None:
    def verdict(state: protocol.ExitState, reason: str = "") -> policy.ExitVerdict:
        return policy.exit_verdict(protocol.Exit(run_id="r", state=state, reason=reason))

    assert verdict("success") == policy.ExitVerdict("success", "")
    assert verdict("failed", "boom") == policy.ExitVerdict("failed", "boom", unexpected=False)
    assert verdict("timeout") == policy.ExitVerdict("failed", "task ended timeout", unexpected=True)
    assert verdict("error", "no SDK") == policy.ExitVerdict("failed", "no SDK", unexpected=True)
    assert verdict("full", "4 of 4 slots").outcome == "full"  # placed again: not the task's failure
    assert verdict("duplicate", "runs already").outcome == "duplicate"  # nothing to report


def test_a_failed_poll_ends_the_run_only_when_its_shell_is_gone() -> None:
    gone = policy.after_poll_failure(ShellGone("rebooted"), 1, stopping=False, hung_after=60.0)
    assert gone == policy.EndRun("rebooted; the task's try ended there")
    assert policy.after_poll_failure(
        HostUnreachable("x"), 1, stopping=True, hung_after=60.0
    ) == policy.EndRun(None)
    soon = policy.after_poll_failure(HostUnreachable("x"), 1, stopping=False, hung_after=60.0)
    assert soon == policy.PollAgain(0.5)
    # backing off, by at most a quarter of hung_after: a shorter outage does not look like one
    late = policy.after_poll_failure(HostUnreachable("x"), 30, stopping=False, hung_after=8.0)
    assert late == policy.PollAgain(2.0)
    assert [n for n in range(1, 301) if policy.worth_logging(n)] == [1, 10, 100, 200, 300]


def test_a_vanished_pipeline_says_why_and_blames_the_host_only_for_a_missing_python() -> None:
    host = HostSpec("win01.t")
    missing = ["The term 'py.exe' is not recognized as the name of a cmdlet"]
    reason, blame = policy.vanished(missing, host, "py.exe", started=False)
    assert blame and "'py.exe' is not found on win01.t" in reason and "[winexec] python" in reason
    reason, blame = policy.vanished(["Traceback: boom"], host, "py.exe", started=True)
    assert not blame
    assert reason == "the agent on win01.t exited without reporting an outcome: Traceback: boom"
    assert policy.vanished([], host, "py.exe", started=False)[0].endswith(
        "before starting the task: no error output"
    )


def test_the_backstop_deadline_allows_grace_heartbeats_a_poll_and_the_start() -> None:
    assert policy.backstop_deadline(1000.0, 60.0, S) == 1000.0 + 60.0 + 30.0 + 2 * 10.0 + 5 + 120.0


def test_what_no_host_could_ever_run() -> None:
    pool = HostPool([HostSpec("win01.t", slots=2, queues=frozenset({"ssis"})), HostSpec("win02.t", slots=4)])

    def ti(queue: str, slots: int = 1, config: dict | None = None) -> SimpleNamespace:
        return SimpleNamespace(queue=queue, pool_slots=slots, executor_config=config)

    assert policy.unplaceable(pool, ti("ssis", 2)) == ("", 2)
    assert policy.unplaceable(pool, ti("default", 4)) == ("", 4)  # win02 serves every queue
    reason, weight = policy.unplaceable(pool, ti("ssis", 5))
    assert weight == 5 and "no host serving queue 'ssis' has more than 4" in reason
    only = HostPool([HostSpec("win01.t", queues=frozenset({"ssis"}))])
    reason, _ = policy.unplaceable(only, ti("etl"))
    assert "no host in [winexec] hosts serves queue 'etl'" in reason and "queues=" in reason
