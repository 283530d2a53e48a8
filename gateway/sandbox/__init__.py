"""A local stand-in for China customs / E-Port, an inspection service and a warehouse (docs/sandbox.md).

``create_sandbox_app(config)`` gives the aiohttp application; ``await start_sandbox(port=0, **config)``
runs it on 127.0.0.1 and returns a :class:`RunningSandbox` (``url``, ``stop()``, ``stats()``,
``wait_idle()``). ``python -m gateway.sandbox`` runs it from the command line; the pytest fixture
``customs_sandbox`` lives in :mod:`gateway.sandbox.pytest_plugin`.
"""

from gateway.sandbox.app import (
    SCENARIO_HEADER,
    SCENARIOS,
    RunningSandbox,
    Sandbox,
    SandboxConfig,
    create_sandbox_app,
    scenario_of,
    start_sandbox,
)

__all__ = [
    "SCENARIOS",
    "SCENARIO_HEADER",
    "RunningSandbox",
    "Sandbox",
    "SandboxConfig",
    "create_sandbox_app",
    "scenario_of",
    "start_sandbox",
]
