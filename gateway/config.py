"""Configuration: one frozen Settings object, from a TOML file and CBEC_* environment variables.

Precedence (highest first): command-line flags, environment, the TOML file, defaults. Every
setting is listed in the README's configuration reference.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any


class Role(StrEnum):
    SUBMITTER = "submitter"  # submits and reads documents carrying one of its enterprise codes
    OPERATOR = "operator"  # reads everything and replays dead letters (bonded-zone operators)
    ADMIN = "admin"  # everything


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    role: Role
    codes: frozenset[str] = frozenset()  # enterprise codes (ebp/ebc/pay/logistics/agent) a submitter holds


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None  # None: start the embedded PostgreSQL in data_dir/pgdata
    data_dir: Path = Path("var")
    api_keys: tuple[ApiKey, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_format: str = "auto"  # auto: readable on a terminal, JSON otherwise; or "json" / "console"
    log_level: str = "info"
    amount_tolerance: Decimal = Decimal("0")  # reconciliation tolerance for compared amounts, in CNY
    tax_rates: Mapping[str, Any] = field(default_factory=dict)  # overrides of gateway.tax defaults
    pool_max_size: int = 16
    # The declaring agent's key, used to sign JSON-submitted declarations whose schema requires a
    # signature (CEB621). None: a TEST key is generated in data_dir/signing (never for customs).
    signing_key_file: Path | None = None
    signing_cert_file: Path | None = None
    signing_algorithm: str = "rsa-sha1"  # or "sm2-sm3"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _parse_keys(items: Any) -> tuple[ApiKey, ...]:
    if not isinstance(items, list):
        raise ValueError("api_keys must be a list of {name, key, role, codes}")
    keys = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get("key"):
            raise ValueError(f"api_keys[{i}] needs at least a key")
        role = Role(item.get("role", "submitter"))
        codes = frozenset(str(c) for c in item.get("codes", ()))
        if role is Role.SUBMITTER and not codes:
            raise ValueError(f"api_keys[{i}] is a submitter key without enterprise codes")
        keys.append(ApiKey(name=str(item.get("name", f"key{i}")), key=str(item["key"]), role=role, codes=codes))
    return tuple(keys)


def load(config_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an optional TOML file and the environment (CBEC_*)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = config_file or env.get("CBEC_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    s = Settings()
    changes: dict[str, Any] = {}
    for name, conv in (
        ("host", str),
        ("port", int),
        ("database_url", str),
        ("data_dir", Path),
        ("max_body_bytes", int),
        ("log_format", str),
        ("log_level", str),
        ("amount_tolerance", lambda v: Decimal(str(v))),
        ("pool_max_size", int),
        ("signing_key_file", Path),
        ("signing_cert_file", Path),
        ("signing_algorithm", str),
    ):
        if name in data:
            changes[name] = conv(data[name])
        env_value = env.get(f"CBEC_{name.upper()}")
        if env_value:
            changes[name] = conv(env_value)
    if "api_keys" in data:
        changes["api_keys"] = _parse_keys(data["api_keys"])
    if env.get("CBEC_API_KEYS"):
        changes["api_keys"] = _parse_keys(json.loads(env["CBEC_API_KEYS"]))
    if "tax_rates" in data:
        changes["tax_rates"] = dict(data["tax_rates"])
    return replace(s, **changes)
