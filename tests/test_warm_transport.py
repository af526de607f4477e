"""The warm transport's choices that need no host: when an agent may take a task."""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace
from typing import Any

from winexec.config import HostSpec
from winexec.transport.errors import AgentFailure
from winexec.transport.warm import MIN_TICKET_LEFT, WarmAgent


def _agent(ticket_left: float) -> WarmAgent:
    settings: Any = SimpleNamespace()  # read only when the agent opens its shell
    cred = SimpleNamespace(expires_at=time.time() + ticket_left)
    return WarmAgent(settings, HostSpec(name="win01.example.test"), "airflow@EXAMPLE.TEST", False, cred)


def test_an_agent_takes_a_task_only_while_its_delegated_ticket_outlives_the_tasks_run() -> None:
    agent = _agent(ticket_left=2 * 3600)
    assert agent.serves(None)
    assert agent.serves(3600)  # an hour's execution_timeout + grace fits in two hours' ticket
    assert not agent.serves(2 * 3600)  # not this one: a new agent with a fresh ticket takes it
    assert not _agent(ticket_left=MIN_TICKET_LEFT - 1).serves(None)  # too close to its end for any task


def test_a_retiring_or_ended_agent_takes_nothing() -> None:
    agent = _agent(ticket_left=10 * 3600)
    agent.retiring = True
    assert not agent.serves(None)
    other = _agent(ticket_left=10 * 3600)
    other.ended = AgentFailure("the warm agent exited")
    assert not other.serves(None)


def test_a_run_sees_only_its_own_lines() -> None:
    from winexec import protocol

    agent = _agent(ticket_left=10 * 3600)
    agent._runs = {"a": deque(), "b": deque()}
    agent._dispatch(protocol.Heartbeat(run_id="a").to_line().encode())
    agent._dispatch(protocol.Exit(run_id="b", state="success").to_line().encode())
    agent._dispatch(protocol.Heartbeat(run_id="gone").to_line().encode())  # a forgotten run: dropped
    assert [m.type for m in agent.take("a")] == ["heartbeat"]
    assert [m.type for m in agent.take("b")] == ["exit"]
    assert agent.take("a") == []
