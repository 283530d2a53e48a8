"""The DXP terminal-node envelope ``DxpMsg`` (spec §8.1): wrap a CEB message for transport, unwrap one received.

Pure: bytes in, bytes out, no I/O.

* ``Data`` carries the base64 of the *exact* CEB bytes handed in (signed before wrapping, spec §9): nothing
  in here re-serialises the business XML, so a signature inside it survives the trip.
* ``CreatTime`` is written as ``yyyy-mm-ddThh:mm:ss`` in China Standard Time without an offset, as the
  official samples do; an aware datetime is converted to UTC+8 first, a naive one is taken as already
  local. Fractions of a second are dropped.
* ``CopMsgId`` must stay the same when a job is retried, so that customs (and the sandbox) can recognise a
  re-delivery. :func:`cop_msg_id_for` derives it deterministically: ``uuid5`` of the job's dedupe key in a
  fixed project namespace, upper-case (36 chars, the shape the spec asks of guids). The same key always
  gives the same CopMsgId; different keys practically never collide.
* Receiver: ``DXPEDCCEB0000002`` for import messages, ``DXPEDCCEB0000003`` for export ones (§1.1, §1.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lxml import etree

from gateway.errors import Issue, Layer, MessageRejected
from gateway.messages import DXP_NS, lookup
from gateway.xmlsafe import DEFAULT_MAX_BYTES, parse_xml, prolog_end

IMPORT_RECEIVER = "DXPEDCCEB0000002"
EXPORT_RECEIVER = "DXPEDCCEB0000003"

#: Export message codes (spec §1.2); everything else the gateway sends goes to the import system.
EXPORT_CODES: frozenset[str] = frozenset(
    f"CEB{n}" for n in (303, 304, 403, 404, 505, 506, 507, 508, 509, 510, 603, 604, 605, 606, 607, 608, 701, 702,
                        792, 213, 214, 215, 216)
)

#: Namespace of :func:`cop_msg_id_for`. Never change it: it would change every CopMsgId of every pending job.
COP_MSG_ID_NAMESPACE = uuid.UUID("5b0d6f0e-4a36-5c1e-9a57-2f1c0b3e8d41")

CHINA_TZ = timezone(timedelta(hours=8), "CST")

CODES: dict[str, str] = {
    "parse.dxp_not_envelope": "the document is not a DxpMsg (root element DxpMsg in namespace "
    "http://www.chinaport.gov.cn/dxp)",
    "parse.dxp_missing_field": "a required DxpMsg element (TransInfo/CopMsgId, SenderId, ReceiverIds/ReceiverId, "
    "CreatTime, MsgType, Data) is missing or empty",
    "parse.dxp_bad_time": "TransInfo/CreatTime is not an xs:dateTime (yyyy-mm-ddThh:mm:ss)",
    "parse.dxp_bad_data": "Data is not valid base64",
}

_DXP = f"{{{DXP_NS}}}"
#: What base64 text may carry between its characters (what the regex \s matches in bytes), deleted by
#: bytes.translate: a tenth of the cost of a regex over a message's Data.
_WS = b" \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class Envelope:
    cop_msg_id: str
    sender_id: str
    receiver_ids: tuple[str, ...]
    created: datetime
    msg_type: str
    data: bytes  # the decoded CEB message, byte for byte as the sender encoded it
    file_name: str | None = None


_NAMESPACE_BYTES = COP_MSG_ID_NAMESPACE.bytes


def cop_msg_id_for(dedupe_key: str) -> str:
    """The CopMsgId of a job: stable across retries of the same job (see the module docstring).

    ``str(uuid.uuid5(COP_MSG_ID_NAMESPACE, dedupe_key)).upper()``, written out (RFC 4122 §4.3: SHA-1 of the
    namespace and the name, version 5, variant 10): a third of the time, for a value made twice per message
    ingested."""
    if not dedupe_key:
        raise ValueError("a dedupe key is needed to derive a CopMsgId")
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + dedupe_key.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex().upper()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def msg_type_name(msg_type: str) -> str:
    """``CEB311`` or ``CEB311Message`` -> ``CEB311Message`` (the root name, what MsgType carries)."""
    return msg_type if msg_type.endswith("Message") or not msg_type.startswith("CEB") else f"{msg_type}Message"


def receiver_for(msg_type: str) -> str:
    """The CEB system a message goes to: the export system for export codes, the import system otherwise."""
    code = msg_type.removesuffix("Message")
    mtype = lookup(code)
    if (mtype is not None and mtype.flow == "export") or code in EXPORT_CODES:
        return EXPORT_RECEIVER
    return IMPORT_RECEIVER


def format_creat_time(created: datetime) -> str:
    if created.tzinfo is not None:
        created = created.astimezone(CHINA_TZ).replace(tzinfo=None)
    return created.strftime("%Y-%m-%dT%H:%M:%S")


def _check(name: str, value: str, low: int, high: int) -> None:
    # Caller errors, not data errors: the gateway builds these values itself.
    if not low <= len(value) <= high:
        raise ValueError(f"DxpMsg {name} must have {low}..{high} characters, got {len(value)}: {value!r}")


def wrap(
    ceb_xml: bytes,
    *,
    msg_type: str,
    sender_id: str,
    receiver_ids: Sequence[str],
    cop_msg_id: str,
    created: datetime,
    file_name: str | None = None,
) -> bytes:
    """Build a ``DxpMsg`` around the exact bytes of a (signed) CEB message."""
    if isinstance(receiver_ids, str):  # a lone id would otherwise be split into characters
        receiver_ids = [receiver_ids]
    msg_type = msg_type_name(msg_type)
    _check("CopMsgId", cop_msg_id, 1, 255)
    _check("SenderId", sender_id, 1, 16)
    _check("MsgType", msg_type, 0, 30)
    if not 1 <= len(receiver_ids) <= 5:
        raise ValueError(f"DxpMsg needs 1..5 ReceiverId, got {len(receiver_ids)}")
    for rid in receiver_ids:
        _check("ReceiverId", rid, 1, 16)
    if file_name is not None:
        _check("FileName", file_name, 1, 255)
    if not ceb_xml:
        raise ValueError("nothing to wrap: the CEB message is empty")

    root = etree.Element(_DXP + "DxpMsg", nsmap={"dxp": DXP_NS})
    root.set("ver", "1.0")
    trans = etree.SubElement(root, _DXP + "TransInfo")
    etree.SubElement(trans, _DXP + "CopMsgId").text = cop_msg_id
    etree.SubElement(trans, _DXP + "SenderId").text = sender_id
    rids = etree.SubElement(trans, _DXP + "ReceiverIds")
    for rid in receiver_ids:
        etree.SubElement(rids, _DXP + "ReceiverId").text = rid
    etree.SubElement(trans, _DXP + "CreatTime").text = format_creat_time(created)
    etree.SubElement(trans, _DXP + "MsgType").text = msg_type
    etree.SubElement(root, _DXP + "Data").text = base64.b64encode(ceb_xml).decode("ascii")
    if file_name is not None:
        add = etree.SubElement(root, _DXP + "AddInfo")
        etree.SubElement(add, _DXP + "FileName").text = file_name
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _reject(code: str, path: str, message: str) -> MessageRejected:
    return MessageRejected([Issue(Layer.PARSE, code, path, message)])


def _text(parent: etree._Element, local: str, path: str, *, required: bool = True) -> str:
    el = parent.find(_DXP + local)
    value = (el.text or "").strip() if el is not None else ""
    if required and not value:
        raise _reject("parse.dxp_missing_field", f"{path}/{local}", f"DxpMsg element {local} is missing or empty")
    return value


def parse_creat_time(raw: str) -> datetime:
    """xs:dateTime as written by DXP peers: naive or with an offset (``Z`` included), fractions allowed."""
    value = raw.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _reject(
            "parse.dxp_bad_time", "/DxpMsg/TransInfo/CreatTime", f"CreatTime {raw!r} is not an xs:dateTime"
        ) from None


#: Size limit of a whole DxpMsg: twice the CEB limit, since base64 inflates the payload by a third.
MAX_ENVELOPE_BYTES = DEFAULT_MAX_BYTES * 2


def unwrap(dxp_xml: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse a ``DxpMsg`` safely (no DTD, no entities, size-limited) and decode its Data.

    Raises :class:`~gateway.errors.MessageRejected` with ``parse.*`` issues. The envelope is not
    validated against the DXP XSD here (that is ``gateway.schema.validate_dxp``'s job); only what is
    needed to route and decode it is checked.
    """
    return read_envelope(parse_xml(dxp_xml, max_bytes))


def read_envelope(root: etree._Element) -> Envelope:
    """:func:`unwrap` of an envelope already parsed with ``gateway.xmlsafe.parse_xml``: for a caller that also
    validates the tree against the DXP XSD, so that it is parsed once."""
    if root.tag != _DXP + "DxpMsg":
        found = root.tag if isinstance(root.tag, str) else "?"
        raise _reject(
            "parse.dxp_not_envelope", "/", f"root element {found} is not {{{DXP_NS}}}DxpMsg"
        )
    trans = root.find(_DXP + "TransInfo")
    if trans is None:
        raise _reject("parse.dxp_missing_field", "/DxpMsg/TransInfo", "DxpMsg has no TransInfo")
    tpath = "/DxpMsg/TransInfo"
    cop_msg_id = _text(trans, "CopMsgId", tpath)
    sender_id = _text(trans, "SenderId", tpath)
    rids_el = trans.find(_DXP + "ReceiverIds")
    receiver_ids = tuple(
        (r.text or "").strip() for r in (rids_el.iterfind(_DXP + "ReceiverId") if rids_el is not None else ())
    )
    if not receiver_ids or not all(receiver_ids):
        raise _reject("parse.dxp_missing_field", f"{tpath}/ReceiverIds", "DxpMsg has no (or an empty) ReceiverId")
    created = parse_creat_time(_text(trans, "CreatTime", tpath))
    msg_type = _text(trans, "MsgType", tpath, required=False)
    data_el = root.find(_DXP + "Data")
    raw = (data_el.text or "").encode("ascii", "replace").translate(None, _WS) if data_el is not None else b""
    if not raw:
        raise _reject("parse.dxp_missing_field", "/DxpMsg/Data", "DxpMsg Data is missing or empty")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _reject("parse.dxp_bad_data", "/DxpMsg/Data", f"Data is not valid base64: {exc}") from None
    add = root.find(_DXP + "AddInfo")
    file_name = (_text(add, "FileName", "/DxpMsg/AddInfo", required=False) or None) if add is not None else None
    return Envelope(
        cop_msg_id=cop_msg_id,
        sender_id=sender_id,
        receiver_ids=receiver_ids,
        created=created,
        msg_type=msg_type,
        data=data,
        file_name=file_name,
    )


_DXP_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?DxpMsg[\s/>]")


def is_dxp(body: bytes) -> bool:
    """Cheap sniff: is the root element a DxpMsg rather than a bare CEB message? (No parsing: its start tag, after
    whatever comments and processing instructions come first, and the DXP namespace declared in it.)"""
    start = prolog_end(body)
    return _DXP_ROOT.match(body, start) is not None and DXP_NS.encode() in body[start : start + 4096]
