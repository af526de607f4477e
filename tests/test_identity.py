"""Which principal a task runs as: precedence, grants and refusals."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from winexec.config import HostSpec, Settings
from winexec.grants import DagFacts, parse_grants
from winexec.identity import IdentityError, TaskFacts, for_connection_test, resolve

GRANTS = """
    bob@WINEXEC.TEST: dag_id=etl_*
    alice@WINEXEC.TEST: tag=sqlserver delegate
    sql@WINEXEC.TEST: bundle=prod
    etl@WINEXEC.TEST: dag_id=*
    svc@WINEXEC.TEST: dag_id=*
    team-a@WINEXEC.TEST: team=a default
"""


def _settings(grants: str = "", **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "hosts": (HostSpec("win01.winexec.test"),),
        "default_principal": "svc@WINEXEC.TEST",
        "queue_principals": {"etl": "etl@WINEXEC.TEST"},
        "pool_principals": {"sql": "sql@WINEXEC.TEST"},
        "grants": parse_grants(grants)[0],
    }
    base.update(kw)
    return Settings(**base)


DAG = DagFacts("etl_daily", bundle="prod", tags=frozenset({"sqlserver"}))
ALL = TaskFacts(
    queue="etl",
    pool="sql",
    run_as_user="alice",
    executor_config={"winexec": {"principal": "bob@WINEXEC.TEST"}},
    dag=DAG,
)


def test_executor_config_wins() -> None:
    ident = resolve(_settings(GRANTS), ALL)
    assert (ident.principal, ident.source, ident.delegate) == ("bob@WINEXEC.TEST", "executor_config", False)
    assert ident.grant == "grants rule 1 (bob@WINEXEC.TEST: dag_id=etl_*)"


def test_then_run_as_user_qualified_with_default_realm() -> None:
    ident = resolve(_settings(GRANTS), dataclasses.replace(ALL, executor_config={"other": 1}))
    assert (ident.principal, ident.source, ident.delegate) == ("alice@WINEXEC.TEST", "run_as_user", True)


def test_then_pool_then_queue_then_a_grants_default_then_default() -> None:
    facts = dataclasses.replace(ALL, executor_config=None, run_as_user=None)
    ident = resolve(_settings(), facts)
    assert (ident.principal, ident.source, ident.delegate, ident.grant) == (
        "sql@WINEXEC.TEST",
        "pool",
        False,
        None,
    )
    ident = resolve(_settings(), dataclasses.replace(facts, pool="default_pool"))
    assert (ident.principal, ident.source) == ("etl@WINEXEC.TEST", "queue")
    plain = TaskFacts(queue="default", pool="default_pool", dag=DagFacts("x", team="a"))
    ident = resolve(_settings(GRANTS), plain)
    assert (ident.principal, ident.source) == ("team-a@WINEXEC.TEST", "grant")
    ident = resolve(_settings(GRANTS), dataclasses.replace(plain, dag=DagFacts("x", team="b")))
    assert (ident.principal, ident.source) == ("svc@WINEXEC.TEST", "default")


def test_switches_turn_task_level_choices_off() -> None:
    s = _settings(GRANTS, honor_executor_config=False, honor_run_as_user=False)
    assert resolve(s, ALL).source == "pool"


def test_without_grants_a_dag_cannot_name_a_principal_nobody_configured() -> None:
    with pytest.raises(IdentityError) as e:
        resolve(_settings(), ALL)
    text = str(e.value)
    assert "bob@WINEXEC.TEST (from executor_config) is not granted to DAG etl_daily" in text
    assert "'bob@WINEXEC.TEST: dag_id=etl_daily'" in text  # the rule that would grant it
    # the administrator's own mappings still work, and nothing is forwarded without a rule
    ident = resolve(_settings(), dataclasses.replace(ALL, executor_config=None, run_as_user=None))
    assert (ident.principal, ident.delegate) == ("sql@WINEXEC.TEST", False)


def test_with_grants_every_choice_must_be_granted_to_the_dag() -> None:
    other = dataclasses.replace(ALL, dag=DagFacts("reporting", bundle="dev"))  # no tag, other bundle
    with pytest.raises(IdentityError) as e:
        resolve(_settings(GRANTS), other)
    assert "bob@WINEXEC.TEST (from executor_config) is not granted to DAG reporting (bundle dev)" in str(
        e.value
    )
    # a pool mapping is refused too where no rule gives that principal this DAG
    with pytest.raises(IdentityError, match=r"sql@WINEXEC.TEST \(from pool\) is not granted"):
        resolve(_settings(GRANTS), dataclasses.replace(other, executor_config=None, run_as_user=None))
    # the default principal as well, once rules exist and none grants it
    with pytest.raises(IdentityError, match=r"svc@WINEXEC.TEST \(from default\) is not granted"):
        resolve(_settings("bob@WINEXEC.TEST: dag_id=*"), TaskFacts(dag=DagFacts("x")))


def test_delegation_only_where_a_granting_rule_says_so() -> None:
    both = _settings("alice@WINEXEC.TEST: dag_id=*\nalice@WINEXEC.TEST: tag=sqlserver delegate")
    asks = TaskFacts(run_as_user="alice", dag=DagFacts("d", tags=frozenset({"sqlserver"})))
    ident = resolve(both, asks)
    assert ident.delegate and ident.grant == "grants rule 2 (alice@WINEXEC.TEST: tag=sqlserver delegate)"
    assert not resolve(both, dataclasses.replace(asks, dag=DagFacts("d"))).delegate


@pytest.mark.parametrize(
    "executor_config",
    [{"winexec": "bob"}, {"winexec": {"principal": 3}}, {"winexec": {"principal": "a b@R"}}],
)
def test_malformed_requests_are_refused(executor_config: dict[str, Any]) -> None:
    with pytest.raises(IdentityError):
        resolve(_settings(GRANTS), TaskFacts(executor_config=executor_config))


def test_from_workload_ti() -> None:
    class TI:
        queue = "etl"
        dag_id = "d"
        executor_config = {"winexec": {"principal": "x@R"}}

    facts = TaskFacts.from_ti(TI(), pool="p", run_as_user=None)
    assert facts == TaskFacts(
        queue="etl",
        pool="p",
        run_as_user=None,
        executor_config={"winexec": {"principal": "x@R"}},
        dag=DagFacts("d"),
    )


def test_grant_rules_parse_and_match() -> None:
    rules, problems = parse_grants(GRANTS + "\nx@R: dag_id=a tag=t; y@R: bundle=b,team=c")
    assert not problems and len(rules) == 8
    both = rules[6]
    assert both.matches(DagFacts("a", tags=frozenset({"t", "u"})))
    assert not both.matches(DagFacts("a")) and not both.matches(DagFacts("b", tags=frozenset({"t"})))
    assert rules[7].matches(DagFacts("z", bundle="b", team="c")) and not rules[7].matches(
        DagFacts("z", bundle="b")
    )
    _, problems = parse_grants("nobody\nx@R: owner=me\ny@R: default\nz@R: dag_id=a, dag_id=b")
    assert len(problems) == 3
    assert problems[0].startswith("rule 1 'nobody': write principal@REALM: selector ...")
    assert "'owner=me' is not dag_id=, bundle=, tag=, team=<value>, default or delegate" in problems[1]
    assert "names no DAG; add dag_id=<glob>" in problems[2]


def test_a_connection_test_runs_as_its_queues_principal_else_the_default() -> None:
    """No DAG asks, so no grants rule chooses or refuses it; and its TGT is never forwarded, even
    where a rule delegates for that principal (the test's server is whatever the asker names)."""
    plain = _settings()
    etl = for_connection_test(plain, "etl")
    assert (etl.principal, etl.source, etl.delegate) == ("etl@WINEXEC.TEST", "queue", False)
    other = for_connection_test(plain, "adhoc")
    assert (other.principal, other.source, other.delegate) == ("svc@WINEXEC.TEST", "default", False)
    delegating = _settings(GRANTS, queue_principals={"sql": "alice@WINEXEC.TEST"})
    alice = for_connection_test(delegating, "sql")
    assert alice.principal == "alice@WINEXEC.TEST" and not alice.delegate and alice.grant is None
