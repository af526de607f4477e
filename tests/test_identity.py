"""Which principal a task runs as: precedence and refusals."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from winexec.config import HostSpec, Settings
from winexec.identity import IdentityError, TaskFacts, resolve


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "hosts": (HostSpec("win01.winexec.test"),),
        "default_principal": "svc@WINEXEC.TEST",
        "queue_principals": {"etl": "etl@WINEXEC.TEST"},
        "pool_principals": {"sql": "sql@WINEXEC.TEST"},
        "delegate_overrides": {"sql@WINEXEC.TEST": False},
    }
    base.update(kw)
    return Settings(**base)


ALL = TaskFacts(
    queue="etl",
    pool="sql",
    run_as_user="alice",
    executor_config={"winexec": {"principal": "bob@WINEXEC.TEST"}},
)


def test_executor_config_wins() -> None:
    ident = resolve(_settings(), ALL)
    assert (ident.principal, ident.source, ident.delegate) == ("bob@WINEXEC.TEST", "executor_config", True)


def test_then_run_as_user_qualified_with_default_realm() -> None:
    ident = resolve(_settings(), dataclasses.replace(ALL, executor_config={"other": 1}))
    assert (ident.principal, ident.source) == ("alice@WINEXEC.TEST", "run_as_user")


def test_then_pool_then_queue_then_default() -> None:
    facts = dataclasses.replace(ALL, executor_config=None, run_as_user=None)
    ident = resolve(_settings(), facts)
    assert (ident.principal, ident.source, ident.delegate) == ("sql@WINEXEC.TEST", "pool", False)
    ident = resolve(_settings(), dataclasses.replace(facts, pool="default_pool"))
    assert (ident.principal, ident.source) == ("etl@WINEXEC.TEST", "queue")
    ident = resolve(_settings(), TaskFacts(queue="default", pool="default_pool"))
    assert (ident.principal, ident.source) == ("svc@WINEXEC.TEST", "default")


def test_switches_turn_task_level_choices_off() -> None:
    s = _settings(honor_executor_config=False, honor_run_as_user=False)
    assert resolve(s, ALL).source == "pool"


def test_allowed_principals_refuses_others() -> None:
    s = _settings(allowed_principals=frozenset({"svc@WINEXEC.TEST", "sql@WINEXEC.TEST"}))
    with pytest.raises(IdentityError, match="allowed_principals"):
        resolve(s, ALL)
    assert resolve(s, TaskFacts(pool="sql")).principal == "sql@WINEXEC.TEST"


@pytest.mark.parametrize(
    "executor_config",
    [{"winexec": "bob"}, {"winexec": {"principal": 3}}, {"winexec": {"principal": "a b@R"}}],
)
def test_malformed_requests_are_refused(executor_config: dict[str, Any]) -> None:
    with pytest.raises(IdentityError):
        resolve(_settings(), TaskFacts(executor_config=executor_config))


def test_from_workload_ti() -> None:
    class TI:
        queue = "etl"
        executor_config = {"winexec": {"principal": "x@R"}}

    facts = TaskFacts.from_ti(TI(), pool="p", run_as_user=None)
    assert facts == TaskFacts(
        queue="etl", pool="p", run_as_user=None, executor_config={"winexec": {"principal": "x@R"}}
    )
