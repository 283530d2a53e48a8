"""The one error shape of the gateway: ``{layer, code, path, message}``.

Codes are stable identifiers documented in docs/errors.md; ``path`` points at the element
(``/CEB311Message/Order[2]/OrderHead/acturalPaid``) and ``message`` says what is wrong and what
was found. An issue of a JSON submission also says where it is in the posted JSON (``pointer``,
gateway.render.with_pointers). Pure layers return lists of :class:`Issue`; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Layer(StrEnum):
    PARSE = "parse"  # the bytes are not a safe, well-formed UTF-8 XML document of a known type
    SCHEMA = "schema"  # the customs XSD rejects it
    RULE = "rule"  # a business rule of the spec (§14) rejects it


@dataclass(frozen=True, slots=True)
class Issue:
    layer: Layer
    code: str
    path: str
    message: str
    #: For a JSON submission: the same place in the posted JSON (an RFC 6901 pointer), where the JSON has one.
    pointer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer"] = str(self.layer)
        if self.pointer is None:  # the shape of every XML submission's issue: {layer, code, path, message}
            del d["pointer"]
        return d


#: Issues in one answer, at most: enough to fix a message; a hostile one (100 documents of 99 empty lines is 41 KB of
#: JSON) must not buy megabytes of answer, of rejection record and of the event loop's time. The layers that can
#: stop looking early do (gateway.schema, gateway.render); MessageRejected keeps no more from any.
MAX_ISSUES = 100


class MessageRejected(Exception):
    """Raised at the edge when a message cannot be accepted; carries the issues found (the first MAX_ISSUES)."""

    def __init__(self, issues: list[Issue], message_type: str | None = None, guid: str | None = None) -> None:
        super().__init__("; ".join(f"{i.code} at {i.path}: {i.message}" for i in issues[:3]))
        self.issues = issues[:MAX_ISSUES]
        self.message_type = message_type  # e.g. "CEB311" once the root was recognised
        # the root's guid once the XML was read, as sent (cut to 64 characters: a refused message's may be anything),
        # so that a sender can find the refusal of its message by it
        self.guid = guid[:64] if guid else None
