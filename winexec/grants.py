"""Who may run as whom: the ``[winexec] grants`` rules and the DAG facts they match. Pure.

One rule per line (or ``;``), ``principal: selector ... [default] [delegate]``::

    svc-etl@CORP.EXAMPLE: team=etl default
    svc-sql@CORP.EXAMPLE: tag=sqlserver delegate
    svc-ad@CORP.EXAMPLE: dag_id=ad_sync bundle=prod

A selector is ``dag_id=<glob>``, ``bundle=<name>``, ``tag=<name>`` or ``team=<name>``; a rule
matches a DAG when, for each kind of selector it has, one of its values matches (``dag_id=*``:
every DAG). ``default`` makes the principal what the matched DAGs' tasks run as when no
executor_config, run_as_user, pool or queue mapping names one (the first such rule wins).
``delegate`` forwards the principal's TGT to the host for those tasks (a second hop); without it
nothing is forwarded.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SELECTORS = ("dag_id", "bundle", "tag", "team")
FLAGS = ("default", "delegate")
_PRINCIPAL = re.compile(r"^[^\s@=,:]+@[^\s@=,:]+$")
EXAMPLE = "svc-etl@CORP.EXAMPLE: dag_id=etl_* default"


@dataclass(frozen=True)
class DagFacts:
    """What a rule can match on, read from the DAG (the executor fills it from the DB)."""

    dag_id: str
    bundle: str | None = None
    tags: frozenset[str] = frozenset()
    team: str | None = None

    def describe(self) -> str:
        about = [f"bundle {self.bundle}"] if self.bundle else []
        if self.tags:
            about.append("tags " + ", ".join(sorted(self.tags)))
        if self.team:
            about.append(f"team {self.team}")
        return f"DAG {self.dag_id}" + (f" ({'; '.join(about)})" if about else "")


@dataclass(frozen=True)
class Grant:
    principal: str
    number: int  # its place in [winexec] grants, 1-based: how messages and the audit trail name it
    selectors: tuple[tuple[str, str], ...] = ()
    default: bool = False
    delegate: bool = False
    text: str = field(default="", compare=False)

    def matches(self, dag: DagFacts) -> bool:
        for kind in {k for k, _ in self.selectors}:
            values = [v for k, v in self.selectors if k == kind]
            if kind == "dag_id":
                ok = any(fnmatch.fnmatchcase(dag.dag_id, v) for v in values)
            elif kind == "bundle":
                ok = dag.bundle in values
            elif kind == "tag":
                ok = bool(dag.tags.intersection(values))
            else:
                ok = dag.team in values
            if not ok:
                return False
        return True

    def __str__(self) -> str:
        return f"grants rule {self.number} ({self.text})"


def match_on(grants: Iterable[Grant], kind: str) -> bool:
    """Whether any rule selects by ``kind`` (so the DAG fact it needs is worth reading)."""
    return any(k == kind for g in grants for k, _ in g.selectors)


def parse_grants(text: str) -> tuple[tuple[Grant, ...], list[str]]:
    """The rules in ``text``, and a problem (with its fix) per malformed line."""
    rules: list[Grant] = []
    problems: list[str] = []
    for line in re.split(r"[\n;]", text):  # ";" too: one line of an environment variable
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        number = len(rules) + len(problems) + 1
        principal, sep, rest = line.partition(":")
        principal = principal.strip()
        if not sep or not _PRINCIPAL.match(principal):
            problems.append(f"rule {number} {line!r}: write principal@REALM: selector ..., e.g. {EXAMPLE}")
            continue
        selectors: list[tuple[str, str]] = []
        flags: set[str] = set()
        bad = []
        for item in _items(rest):
            kind, eq, value = item.partition("=")
            if eq and kind in SELECTORS and value:
                selectors.append((kind, value))
            elif not eq and item in FLAGS:
                flags.add(item)
            else:
                bad.append(item)
        if bad:
            problems.append(
                f"rule {number} {line!r}: {', '.join(map(repr, bad))} is not "
                f"{'=, '.join(SELECTORS)}=<value>, default or delegate"
            )
            continue
        if not selectors:
            problems.append(
                f"rule {number} {line!r}: names no DAG; add dag_id=<glob> (dag_id=* for every DAG)"
            )
            continue
        rules.append(
            Grant(principal, number, tuple(selectors), "default" in flags, "delegate" in flags, line)
        )
    return tuple(rules), problems


def _items(text: str) -> Iterable[str]:
    return (p for p in re.split(r"[\s,]+", text) if p)
