"""Plan checks: every statement's generic plan must probe indexes, so its cost cannot grow with the tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import ModuleType

import asyncpg

_SCAN = re.compile(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Index Scan|Tid Scan)")
#: A plan node's line in EXPLAIN's text ("->  Index Scan using ..."); its details follow it until the next node.
_NODE = re.compile(r"^\s*->\s{2}")


async def full_scans(
    conn: asyncpg.Connection, *, begin: str, module: ModuleType, cases: Mapping[str, str]
) -> dict[str, list[str]]:
    """Scans without an index condition in the generic plan of each statement ``module.<name>``.

    ``begin`` opens the transaction the way the production code does (its planner settings);
    ``cases`` maps statement names to arguments good enough for PREPARE/EXECUTE (the plan is checked,
    not the result)."""
    found: dict[str, list[str]] = {}
    await conn.execute(begin)
    try:
        for name, args in cases.items():
            await conn.execute(f"PREPARE plan_check AS {getattr(module, name)}")
            lines = [r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE plan_check({args})")]
            await conn.execute("DEALLOCATE plan_check")
            if scans := unconditioned_scans(lines):
                found[name] = scans
    finally:
        await conn.execute("ROLLBACK")
    return found


def unconditioned_scans(lines: list[str]) -> list[str]:
    """The scans of an EXPLAIN (text) without an index condition of their own: a sequential scan, or an index scan
    reading its whole index. Only the scan's own detail lines count, up to the next node: the condition of the node
    after it (an anti join reading a whole index, then probing another) is not the scan's."""
    out = []
    for i, line in enumerate(lines):
        if not _SCAN.search(line):
            continue
        own = []
        for detail in lines[i + 1 :]:
            if _NODE.match(detail):
                break
            own.append(detail)
        if "Seq Scan" in line or not re.search(r"(Index Cond|TID Cond)", " ".join(own)):
            out.append(line.strip())
    return out
