"""Access control: API keys with a role and, for submitters, the enterprise codes they hold.

A submitter may submit and read only documents that carry one of its codes in a party field
(ebpCode, ebcCode, payCode, logisticsCode, agentCode ...). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import ApiKey, Role
from gateway.documents import Document

#: Head fields that name an enterprise taking part in a document.
PARTY_FIELDS: tuple[str, ...] = (
    "ebpCode",
    "ebcCode",
    "payCode",
    "logisticsCode",
    "agentCode",
    "assureCode",
    "operatorCode",
    "areaCode",
)


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    codes: frozenset[str]

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)

    def may_touch(self, parties: Iterable[str]) -> bool:
        return self.sees_everything or not self.codes.isdisjoint(parties)


def document_parties(doc: Document) -> set[str]:
    return {v for f in PARTY_FIELDS if (v := doc.head.get(f))}


class KeyRing:
    """Looks keys up by digest so that the lookup time does not depend on how much of a key matched."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest = {self.digest(k.key): k for k in keys}

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def by_digest(self, digest: bytes) -> Principal | None:
        """The principal of the configured key with this digest (console sessions remember the digest only)."""
        key = self._by_digest.get(digest)
        return None if key is None else Principal(key.name, key.role, key.codes)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = self.digest(presented)
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(self.digest(key.key), digest):
            return None
        return Principal(key.name, key.role, key.codes)
