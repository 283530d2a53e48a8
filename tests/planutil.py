"""Plan checks: every statement's generic plan must probe indexes, so its cost cannot grow with the tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import ModuleType

import asyncpg

_SCAN = re.compile(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Index Scan|Tid Scan)")


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
            for i, line in enumerate(lines):
                if _SCAN.search(line):
                    detail = " ".join(lines[i + 1 : i + 3])
                    if "Seq Scan" in line or not re.search(r"(Index Cond|TID Cond)", detail):
                        found.setdefault(name, []).append(line.strip())
    finally:
        await conn.execute("ROLLBACK")
    return found
