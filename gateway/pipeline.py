"""The ingest pipeline, top to bottom: receive → parse safely → validate → persist → reconcile.

``check`` is the CPU part (parse, XSD, business rules) and is shared by the HTTP API and the
offline ``cbec validate``; ``submit`` adds the access check and hands the message to the store,
which persists and reconciles in one transaction before anything is acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from lxml import etree

from gateway import rules, signing, summary
from gateway.auth import Principal, document_declarants
from gateway.documents import ParsedMessage, extract
from gateway.errors import Issue, Layer, MessageRejected
from gateway.messages import CEB_NS, Kind, MessageType, Signature, lookup
from gateway.render import json_constant, json_int, json_object, render_root, serialise
from gateway.schema import SchemaSet
from gateway.store import IngestResult, Store, Submission
from gateway.ukey import UKeySigner
from gateway.xmlsafe import DEFAULT_MAX_BYTES, parse_message

#: What stores an accepted message: this process's store (``Store.enqueue``), or another's over the ingest link.
Ingest = Callable[[Submission], Awaitable[IngestResult]]


class Forbidden(Exception):
    """The caller's key does not hold an enterprise code that the documents carry."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(issues[0].message if issues else "forbidden")
        self.issues = issues


@dataclass(frozen=True)
class Rendered:
    """A JSON submission rendered to CEB XML, before it is checked: signed already where a key in this process signs
    it; ``to_sign`` when the gateway's UKey is still to sign it (:meth:`Pipeline.sign`), before the whole is checked."""

    root: etree._Element
    identity: bytes
    to_sign: bool


@dataclass(frozen=True)
class Checked:
    message: ParsedMessage
    raw: bytes
    # What decides "the same message again" (the store's sha256): the raw XML, or for JSON the payload's content.
    identity: bytes | None = None
    # The rules' warnings (gateway.rules.WARNINGS): the message passes, and its 202 answer lists them.
    warnings: tuple[Issue, ...] = ()


#: A rendered JSON message may be larger than the JSON it came from (``&`` becomes ``&amp;``, an element name is
#: written twice, defaults are filled in) but not without bound: at most five times its characters plus the
#: defaults of 100 documents of 99 lines. Its size check is a safety net, never the seller's limit (that applies
#: to the JSON body).
_RENDERED_FACTOR, _RENDERED_EXTRA = 5, 2 * 1024 * 1024


def json_identity(payload: Mapping[str, Any]) -> bytes:
    """What makes a JSON submission the same message again: its content (members sorted, no white space, numbers
    as sent), not the XML rendered from it, which differs on every call where the seller left a document guid or
    appTime to be generated, or signs with a randomised algorithm (SM2)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return b"json:" + text.encode("ascii")


def looks_like_json(body: bytes) -> bool:
    """Whether a file holds a JSON payload rather than XML: its first character (after a UTF-8 byte order mark and
    white space) opens an object or an array. What ``cbec validate`` decides by; the API goes by Content-Type."""
    return body.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"[")


_APP_STATUS = f"{{{CEB_NS}}}appStatus"


def _wants_signature(mtype: MessageType, root: etree._Element) -> bool:
    """Whether the gateway signs a message rendered from JSON (spec §2.7, as rules.signature judges it): a type whose
    XSD requires ds:Signature (CEB621) always, a CEB603, 605, 507, 509 or 607 when one of its documents is declared
    (appStatus 2, the JSON default). A temporary save (appStatus 1) needs no signature and gets none."""
    if mtype.signature is Signature.REQUIRED:
        return True
    return mtype.signature is Signature.ON_DECLARE and any(
        (el.text or "").strip() == "2" for el in root.iter(_APP_STATUS)
    )


class Pipeline:
    def __init__(
        self,
        schemas: SchemaSet,
        store: Store | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        signer: Callable[[etree._Element], None] | UKeySigner | None = None,
        signing_agent_code: str | None = None,
        verify_signatures: bool = False,
        trusted_certs: Sequence[bytes] | None = None,
        ingest: Ingest | None = None,
    ) -> None:
        self.schemas = schemas
        self.store = store
        # Where an accepted message is stored: this process's store, or the first process's over the ingest link
        # (gateway.ingestlink) in the other API processes of `cbec serve --processes N`.
        self._ingest = ingest or (store.enqueue if store is not None else None)
        self.max_bytes = max_bytes
        # Signs JSON-submitted declarations whose schema requires a signature (CEB621) with the declaring agent's
        # key configured on the gateway (in this process, or on its UKey); XML submitters sign their own.
        self.signer = signer
        self.signing_agent_code = signing_agent_code  # whose key that is (None: not checked)
        # Verify the signature of a signed XML message (customs would refuse a bad one: -621028/-621029), pinned
        # to trusted_certs when given. Not those the gateway signs itself (JSON submissions).
        self.verify_signatures = verify_signatures
        self.trusted_certs = trusted_certs

    def check(self, body: bytes) -> Checked:
        """Parse and validate; raises MessageRejected with every issue found."""
        return self._check(body, verify=self.verify_signatures)

    def _check(self, body: bytes, *, verify: bool, max_bytes: int | None = None) -> Checked:
        root, mtype = parse_message(body, max_bytes or self.max_bytes)
        issues = self.schemas.validate(root, mtype)
        if issues:
            # Rules assume the structure the schema guarantees; judging a broken tree would only add noise.
            raise MessageRejected(issues, mtype.code, root.get("guid"))
        msg = extract(root, mtype)
        issues, warnings = rules.findings(msg)
        if issues:
            raise MessageRejected(issues, mtype.code, msg.guid)
        if verify and msg.signed:
            result = signing.verify(root, trusted_certs=self.trusted_certs)
            if not result.ok:
                issue = Issue(Layer.RULE, result.code or "signature.malformed", result.path, result.reason)
                raise MessageRejected([issue], mtype.code, msg.guid)
        return Checked(msg, body, warnings=warnings)

    def check_json_body(self, body: bytes) -> Checked:
        """A JSON request body rendered, signed where the gateway signs it, checked (:meth:`render_json_body`, then
        :meth:`check_rendered`): with a key in this process. The API awaits a UKey's :meth:`sign` between the two."""
        return self._checked_now(self.render_json_body(body))

    def check_json(self, payload: Mapping[str, Any]) -> Checked:
        """As check_json_body, for a payload parsed already."""
        return self._checked_now(self.render_json(payload))

    def _checked_now(self, rendered: Rendered) -> Checked:
        if rendered.to_sign:
            raise RuntimeError("a UKey's signature is awaited: Pipeline.sign, then check_rendered")
        return self.check_rendered(rendered)

    def render_json_body(self, body: bytes) -> Rendered:
        """A JSON request body (docs/json-api.md): UTF-8 (RFC 8259), parsed with exact decimals, no member named
        twice; rendered to CEB XML."""
        if not body.strip():
            raise MessageRejected([Issue(Layer.PARSE, "parse.empty", "/", "the body is empty")])
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            issue = Issue(Layer.PARSE, "parse.encoding", "", f"JSON must be UTF-8 (RFC 8259): {exc}")
            raise MessageRejected([issue]) from None
        try:
            payload = json.loads(text, parse_float=Decimal, parse_int=json_int, parse_constant=json_constant,
                                 object_pairs_hook=json_object)  # fmt: skip
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            issue = Issue(Layer.PARSE, "parse.invalid_json", "", f"the body is not JSON: {exc}")
            raise MessageRejected([issue]) from None
        if not isinstance(payload, dict):
            raise MessageRejected([Issue(Layer.SCHEMA, "json.not_an_object", "", "the body must be a JSON object")])
        return self.render_json(payload)

    def render_json(self, payload: Mapping[str, Any]) -> Rendered:
        """Rendered, and signed at once where the gateway signs it with a key in this process (SigningUnavailable)."""
        root = render_root(payload)
        mtype = lookup(str(payload.get("type", "")))  # rendered: one of the JSON types
        signer = self.signer
        wanted = signer is not None and mtype is not None and _wants_signature(mtype, root)
        if wanted and signer is not None and not isinstance(signer, UKeySigner):
            signer(root)  # in the caller's turn, as the rest of the CPU-heavy part
            wanted = False
        return Rendered(root, json_identity(payload), wanted)

    async def sign(self, rendered: Rendered) -> None:
        """The UKey's signature in a rendered declaration still to be signed (gateway.ukey; SigningUnavailable when it
        cannot sign now); nothing for one signed already or needing no signature."""
        if rendered.to_sign:
            assert isinstance(self.signer, UKeySigner)  # render_json signs with any other key itself
            await self.signer.sign(rendered.root)

    def check_rendered(self, rendered: Rendered) -> Checked:
        """A rendered JSON submission (signed, where the gateway signs it) checked as an XML message is."""
        checked = self._check(serialise(rendered.root), verify=False,
                              max_bytes=_RENDERED_FACTOR * self.max_bytes + _RENDERED_EXTRA)  # fmt: skip
        if checked.message.signed and self.signing_agent_code is not None:
            self._signed_for_its_agent(checked.message, self.signing_agent_code)
        return replace(checked, identity=rendered.identity)

    @staticmethod
    def _signed_for_its_agent(msg: ParsedMessage, agent: str) -> None:
        """The gateway signs a JSON declaration with one agent's key: a document naming another agent would reach
        customs signed by the wrong enterprise (-621029)."""
        issues = []
        for doc in msg.documents:
            code = (doc.head.get("agentCode") or "").strip()
            if code == agent:
                continue
            if "agentCode" not in doc.head:  # CEB507/509: declared by the site operator or the carrier, not an agent
                message = (f"a {msg.type.code} names no agentCode: its sender signs it, not the agent whose key signs "
                           f"JSON declarations here ({agent!r}); send it as XML signed with its own key")  # fmt: skip
                path = f"/documents/{doc.index - 1}"
            else:
                message = (f"agentCode {code!r} is not the agent whose key signs JSON declarations here ({agent!r}): "
                           "send this one as XML signed with its own key")  # fmt: skip
                path = f"/documents/{doc.index - 1}/agentCode"
            issues.append(Issue(Layer.RULE, "rule.agent_not_signer", path, message))
        if issues:
            raise MessageRejected(issues, msg.type.code, msg.guid)

    @staticmethod
    def authorize(msg: ParsedMessage, principal: Principal) -> None:
        """Each document is the key's to send: it holds the code of one of its declarants (gateway.auth)."""
        fields = ", ".join(msg.type.declarants) or "its enterprise codes"
        denied = [
            Issue(
                Layer.RULE,
                "auth.not_your_document",
                doc.path,
                f"this API key holds none of the codes the document names its declarant by ({fields}): "
                + (", ".join(sorted(declarants)) or "none"),
            )
            for doc in msg.documents
            if not principal.may_touch(declarants := document_declarants(doc))
        ]
        if denied:
            raise Forbidden(denied)

    async def submit(self, checked: Checked, principal: Principal, *, source: str = "xml") -> IngestResult:
        if self.store is None or self._ingest is None:
            raise RuntimeError("the pipeline has no store")
        self.authorize(checked.message, principal)
        named = None
        scope = None if principal.sees_everything else principal.codes
        if checked.message.type.kind is Kind.SUMMARY:  # a CEB701: the inventories it names, as the gateway holds them
            named = await self._judge_summary(checked.message, scope)
        return await self._ingest(Submission(checked.message, checked.raw, principal.name, source, scope,
                                             checked.identity, named, checked.warnings))  # fmt: skip

    async def _judge_summary(self, msg: ParsedMessage, scope: frozenset[str] | None) -> summary.Named | None:
        """gateway.summary: a summary application naming an inventory that cannot be summarised is refused (Conflict,
        nothing stored); returned is what the store needs to judge the message again in its transaction
        (summary.Named), where what may still come right becomes the answer's warnings: the inventories are read here,
        before it (an inventory withdrawn meanwhile is customs' to refuse), and the live applications naming them
        again there, under a lock per invtNo — two applications naming one inventory at once are judged one after the
        other. A message stored already is not judged again: the store answers its retry with the original answer
        (or a guid conflict)."""
        assert self.store is not None
        invt_nos = summary.named_inventories(msg.documents)
        held = await self.store.held_inventories(msg.guid, invt_nos)
        if held is None:
            return None
        summary.judge_message(msg, held, scope)
        return summary.Named(tuple(invt_nos), held.inventories)  # judged again in the store even naming none

CODES: dict[str, str] = {
    "rule.agent_not_signer": "a JSON declaration the gateway signs (CEB621; CEB603, 605, 507, 509, 607 and 701 when "
    "declared) names an agentCode other than the agent whose key it signs with (signing_agent_code), or no agentCode "
    "at all (CEB507, 509: their senders sign them)",
    "auth.not_your_document": "the API key's enterprise codes do not include a declarant of the document (the codes "
    "its type names who sends it by: an order's ebpCode or ebcCode, a payment's payCode, a waybill's logisticsCode, an "
    "inventory's agentCode or ebcCode ...), or of the stored document whose key it changes, withdraws or declares "
    "again, or of the inventory a cancellation or return names (HTTP 403)",
}
