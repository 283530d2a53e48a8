"""Access control: API keys with a role and, for submitters, the enterprise codes they hold.

A submitter may submit and read only documents that carry one of its codes in a party field
(ebpCode, ebcCode, payCode, logisticsCode, agentCode ...). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
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
    """Looks keys up by digest so that the lookup time does not depend on how much of a key matched: the
    lookup compares SHA-256 digests, whose matching prefix says nothing about the key's."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        # one Principal per key, made once: authenticate runs for every request
        self._by_digest = {self.digest(k.key): Principal(k.name, k.role, k.codes) for k in keys}

    @staticmethod
    def digest(key: str) -> bytes:
        # surrogateescape: aiohttp hands header bytes that are not UTF-8 over as lone surrogates (an unknown key,
        # never a 500)
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def by_digest(self, digest: bytes) -> Principal | None:
        """The principal of the configured key with this digest (console sessions remember the digest only)."""
        return self._by_digest.get(digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        return self._by_digest.get(self.digest(presented))
