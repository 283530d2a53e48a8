"""Shared fixtures: a real PostgreSQL per test (tests/dbutil.py) and the API on a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

# The developer's shell must not leak configuration into tests.
_KEEP = {"CBEC_TEST_DATABASE_URL", "CBEC_CUSTOMS_SANDBOX_URL"}  # test targets, not gateway settings
for _name in [n for n in os.environ if n.startswith("CBEC_") and n not in _KEEP]:
    del os.environ[_name]

from tests.apiutil import api, routed  # noqa: E402,F401
from tests.dbutil import db_dsn, db_pool, empty_db_dsn, pg_dsn  # noqa: E402,F401  (fixtures for every test module)


@pytest.fixture(autouse=True)
def _logging_set_up_kept_to_its_test() -> Iterator[None]:
    """A test running `cbec serve` or `cbec worker` in this process may have them set structlog up for the process
    (loggers cached on first use): set back after it, so that a later test's loggers are not cached under that set-up
    and its structlog.testing.capture_logs still captures them."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
