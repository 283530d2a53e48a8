"""JSON → CEB XML: sellers who do not speak XML send a friendly JSON shape instead.

The rendered bytes go through exactly the same path as a posted XML message (parse, XSD, rules),
so this module judges only the *shape* of the JSON (objects where objects belong, scalars where
scalars belong, no unknown names). Completeness is left to the XSD layer: a missing required
field is simply not rendered, and the schema reports it against the XML path.

Shape (documented in docs/json-api.md)::

    {"type": "CEB311", "guid": "...", "version": "1.0",
     "baseTransfer": {"copCode": "...", "copName": "...", "dxpId": "..."},
     "baseSubscribe": [{"status": "RET", "dxpAddress": "..."}],
     "documents": [{"orderNo": "...", ..., "items": [{"gnum": 1, ...}]}]}

Head fields sit flat in each document under the spec's element names; list lines sit under
``items``. Values are strings, integers or ``decimal.Decimal`` (parse JSON with
``parse_float=Decimal``); binary floats are refused because they cannot carry money exactly.
``null`` means "absent" (the default applies, or the element is left out).

The import declarations (CEB311/411/511/621) and the export ones (CEB303/403/505/507/509/603/605/607) take the same
shape. Element
order is taken from :data:`FIELD_ORDER`, read per flow from the 2022-05 import or export XSD in ``schemas/`` (the
spec tables §2.3, §3.1–3.4 and §4 list the same fields): the two schemas name their elements alike (OrderHead,
InventoryList ...) but give them other children in another order. CEB403, 505 and 605 have no head: their fields
sit in the business element itself, and in the JSON flat in each document as every head's do.
"""

from __future__ import annotations

import difflib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from lxml import etree

from gateway.errors import MAX_ISSUES, Issue, Layer, MessageRejected
from gateway.messages import BY_CODE, CEB_NS, MessageType, lookup
from gateway.schema import element_particles, element_sequences

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    SHANGHAI: timezone | ZoneInfo = ZoneInfo("Asia/Shanghai")
except (ImportError, ZoneInfoNotFoundError):  # no tz database: China has kept UTC+8 without DST since 1991
    SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")

CODES: dict[str, str] = {
    "json.not_an_object": "a JSON object was expected here (the payload, a document, an item, baseTransfer ...)",
    "json.not_an_array": "a JSON array was expected here (documents, items, baseSubscribe)",
    "json.missing_field": "the JSON payload lacks \"type\" or \"documents\", without which nothing can be rendered",
    "json.unsupported_type": "\"type\" is not a message type accepted as JSON (import CEB311, CEB411, CEB511, "
    "CEB621, its cancellation CEB623 and return CEB625; export CEB303, CEB403, CEB505, CEB507, CEB509, CEB603, "
    "CEB605, CEB607, the summary application CEB701, the retail export return CEB213 and its tally CEB215)",
    "json.unknown_field": "the object has a member that is not an element of this part of the message",
    "json.invalid_type": "a field value must be a string, an integer or a decimal number (not an object, array, "
    "boolean or binary float)",
    "json.invalid_character": "a string contains a character that XML cannot carry (control characters, lone "
    "surrogates)",
    "json.number_out_of_range": "a number with more than 40 digits before or after the decimal point (no field "
    "takes more than 19 and 5): written out it could be millions of digits",
    "json.too_many": "an array has more entries than the message may carry (documents 100, items 99 on import and "
    "100 on export, baseSubscribe 5): refused before anything is rendered",
    "json.too_few": "an array has fewer entries than the message must carry (an empty documents or items array)",
    "json.duplicate_member": "an object names the same member twice (which one counts would be a guess)",
}

#: A decimal number is written out in positional notation; beyond this many digits on either side of the point
#: it is refused before it is (1e99999999 would be a hundred million digits). No CEB field takes more than 19.5.
_MAX_POSITIONAL_DIGITS = 40

#: Message types accepted as JSON: the import declarations, then the export ones (spec §4).
JSON_TYPES: tuple[str, ...] = (
    "CEB311", "CEB411", "CEB511", "CEB621", "CEB623", "CEB625", "CEB303", "CEB403", "CEB505", "CEB603", "CEB605",
    "CEB507", "CEB509", "CEB607", "CEB701", "CEB213", "CEB215",
)  # fmt: skip

#: The schema file of each flow's JSON types (gateway.messages): where their elements' sequences are read.
_SCHEMAS: dict[str, str] = {BY_CODE[code].flow: BY_CODE[code].schema for code in JSON_TYPES}


def _fields_element(mtype: MessageType) -> str:
    """The element holding a document's fields: its head, or the business element itself (CEB403, 505, 605)."""
    return mtype.head or mtype.document


#: The elements rendered from JSON fields in each flow: BaseTransfer, BaseSubscribe and the heads (or head-less
#: business elements) and lines of that flow's JSON types.
RENDERED_ELEMENTS: dict[str, tuple[str, ...]] = {
    flow: tuple(dict.fromkeys(["BaseTransfer", "BaseSubscribe"] + [
        name for code in JSON_TYPES if BY_CODE[code].flow == flow
        for name in (_fields_element(BY_CODE[code]), BY_CODE[code].lines) if name is not None
    ]))
    for flow in _SCHEMAS
}  # fmt: skip
#: Child elements of each rendered element by flow, in XSD sequence order, as that flow's schema itself declares
#: them (export InventoryList: its quantities, then its units; import: each quantity beside its unit).
FIELD_ORDER: dict[str, dict[str, tuple[str, ...]]] = {
    flow: {name: element_sequences(_SCHEMAS[flow])[name] for name in names} for flow, names in RENDERED_ELEMENTS.items()
}

#: Values filled in by flow when a field is absent (or null). guid/appTime defaults are generated per call. Import
#: amounts are in yuan (142, rule.currency_not_cny); an export sale's currency is the seller's (spec §4.1: not fixed
#: to 142), so no export currency is guessed, nor an export packNo (not fixed to 1 there).
DEFAULTS: dict[str, dict[str, dict[str, str]]] = {
    "import": {
        "BaseTransfer": {"dxpMode": "DXP"},
        "BaseSubscribe": {"dxpMode": "DXP"},
        "OrderHead": {"appType": "1", "appStatus": "2", "orderType": "I", "currency": "142", "buyerIdType": "1"},
        "OrderList": {"currency": "142"},
        "PaymentHead": {"appType": "1", "appStatus": "2", "currency": "142", "payerIdType": "1"},
        "LogisticsHead": {"appType": "1", "appStatus": "2", "currency": "142", "packNo": "1"},
        "InventoryHead": {
            "appType": "1", "appStatus": "2", "currency": "142", "buyerIdType": "1", "ieFlag": "I", "packNo": "1",
        },
        "InventoryList": {"currency": "142"},
        # an inventory's cancellation and return (A.7, A.9): signed by the gateway as the inventory was
        "InvtCancel": {"appType": "1", "appStatus": "2", "buyerIdType": "1"},
        "InvtRefundHead": {"appType": "1", "appStatus": "2", "buyerIdType": "1"},
    },
    "export": {
        "BaseTransfer": {"dxpMode": "DXP"},
        "BaseSubscribe": {"dxpMode": "DXP"},
        "OrderHead": {"appType": "1", "appStatus": "2", "orderType": "E"},  # E: a B2C export order
        "Receipts": {"appType": "1", "appStatus": "2"},
        "Logistics": {"appType": "1", "appStatus": "2"},
        "InventoryHead": {"appType": "1", "appStatus": "2", "ieFlag": "E"},
        "InvtCancel": {"appType": "1", "appStatus": "2"},
        # transport messages (spec A.20, A.22, A.27): msgCount / msgSeqNo are 1 when the message is not split
        "ArrivalHead": {"appType": "1", "appStatus": "2", "ieFlag": "E", "msgCount": "1", "msgSeqNo": "1"},
        "DepartureHead": {"appType": "1", "appStatus": "2", "msgCount": "1", "msgSeqNo": "1"},
        "WayBillHead": {"appType": "1", "appStatus": "2", "msgCount": "1", "msgSeqNo": "1"},
        "SummaryApplyHead": {"appType": "1", "appStatus": "2", "msgCount": "1", "msgSeqNo": "1"},  # not split
        # a retail export return and its tally (A.32, A.34): the goods come back in, ieFlag I
        "InvtRefundHead": {"appType": "1", "appStatus": "2", "ieFlag": "I"},
        "InvtRefundDetail": {"appType": "1", "appStatus": "2", "ieFlag": "I"},
    },
}  # fmt: skip

#: Head fields generated per document when absent: a fresh upper-case uuid4 and the current time.
GENERATED_HEAD_FIELDS: tuple[str, ...] = ("guid", "appTime")
DEFAULT_VERSION = "1.0"
ITEMS = "items"  # JSON member holding the list lines of a document
_TOP_LEVEL = ("type", "guid", "version", "baseTransfer", "baseSubscribe", "documents")


def new_guid() -> str:
    """A 36-character upper-case uuid4, the form the spec asks for."""
    return str(uuid.uuid4()).upper()


def app_time(now: datetime | None = None) -> str:
    """``YYYYMMDDhhmmss`` in China time; a naive ``now`` is taken to be China time already."""
    if now is None:
        now = datetime.now(SHANGHAI)
    elif now.tzinfo is not None:
        now = now.astimezone(SHANGHAI)
    return now.strftime("%Y%m%d%H%M%S")


def _pointer(*parts: str | int) -> str:
    """RFC 6901 JSON pointer; the whole payload is the empty pointer ``""``. A member name with a lone surrogate
    (which UTF-8, hence the answer, cannot carry) shows it escaped as ``\\udXXX``."""
    text = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_STEP = re.compile(r"([^/\[\]]+)(?:\[(\d+)\])?")


def json_pointer(mtype: MessageType, path: str) -> str | None:
    """Where an issue's XML ``path`` in a message rendered from JSON is in the posted JSON (the shape of
    docs/json-api.md): ``/CEB311Message/Order[1]/OrderList[2]/totalPrice`` is ``/documents/0/items/1/totalPrice``,
    ``/CEB311Message/BaseTransfer/copName`` is ``/baseTransfer/copName``, ``/CEB311Message/@guid`` is ``/guid``. A path
    that is not under the message's root is a pointer already (a shape error's, the agent's signing rule's); None
    where the JSON has no such place (the Signature the gateway adds)."""
    if path in ("", "/"):  # the request's body as a whole (parse.*)
        return ""
    root = f"/{mtype.root}"
    if path != root and not path.startswith(root + "/"):
        return path
    steps = [_STEP.fullmatch(step) for step in path[len(root) + 1:].split("/") if step]
    if not steps:
        return ""  # the message as a whole
    if any(m is None for m in steps):
        return None
    named = [(m.group(1), int(m.group(2)) if m.group(2) else None) for m in steps if m is not None]
    (name, n), rest = named[0], named[1:]
    if name.startswith("@"):  # a root attribute: guid, version
        return _pointer(name[1:]) if not rest else None
    if name == "BaseTransfer":
        parts: tuple[str | int, ...] = ("baseTransfer",)
    elif name == "BaseSubscribe":
        parts = ("baseSubscribe", (n or 1) - 1)
    elif name == mtype.document:
        parts = ("documents", (n or 1) - 1)
        if rest and mtype.head is not None:  # the head's fields are the document's; its lines are its items
            (name, n), rest = rest[0], rest[1:]
            if name == mtype.lines:  # one line, or (no index: one missing) the list
                parts = (*parts, ITEMS) if n is None else (*parts, ITEMS, n - 1)
            elif name != mtype.head:
                return None
    else:
        return None
    if len(rest) > 1:
        return None
    return _pointer(*parts, *(name for name, _ in rest))


def with_pointers(code: str | None, issues: Sequence[Issue]) -> list[Issue]:
    """The issues of a JSON submission of type ``code``, each saying where it is in the posted JSON (``pointer``)."""
    mtype = lookup(code) if code else None
    if mtype is None:
        return list(issues)
    return [i if i.pointer is not None else replace(i, pointer=json_pointer(mtype, i.path)) for i in issues]


class Members(dict[str, Any]):
    """A JSON object whose ``repeated`` members were named more than once (the last value is kept, as by
    ``json.loads``); the renderer refuses them. See :func:`json_object`."""

    repeated: tuple[str, ...] = ()


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a plain dict, or :class:`Members` when a name repeats."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            repeated[key] = None
        seen.add(key)
    members = Members(obj)
    members.repeated = tuple(repeated)
    return members


def json_int(digits: str) -> int | Decimal:
    """``parse_int`` for ``json.loads``: an int, or beyond 40 digits a Decimal, which the renderer refuses as
    json.number_out_of_range (Python refuses to read an int of more than 4,300 digits at all)."""
    return int(digits) if len(digits) <= _MAX_POSITIONAL_DIGITS else Decimal(digits)


def json_constant(name: str) -> Any:
    """``parse_constant`` for ``json.loads``: NaN and Infinity are not JSON (RFC 8259), whatever Python accepts."""
    raise ValueError(f"{name} is not a JSON value")


#: What no text the gateway stores may hold: NUL and the other C0 controls but tab, LF and CR (PostgreSQL's text takes
#: no NUL; XML none of them), and lone surrogates (UTF-8, hence the database and the answer, cannot carry them).
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def read_json(body: bytes) -> Any:
    """A JSON request body other than a CEB message (payment data, a warehouse callback, a replay), read as strictly
    as a JSON message: UTF-8 (a BOM allowed), numbers as int or Decimal, no NaN or Infinity, no member named twice,
    no string (name or value) holding a character no text can be stored with. ValueError saying what and where (a
    JSON pointer)."""
    try:
        value = json.loads(body.decode("utf-8-sig"), object_pairs_hook=json_object, parse_float=Decimal,
                           parse_int=json_int, parse_constant=json_constant)  # fmt: skip
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; RecursionError: absurd nesting
        raise ValueError(f"the body is not JSON: {exc}") from None
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, Members) and item.repeated:
                raise ValueError(f"{_pointer(*path) or 'the object'} names {item.repeated[0]!r} twice")
            for name, member in item.items():
                if (bad := _BAD_TEXT.search(name)) is not None:
                    raise ValueError(f"a member name at {_pointer(*path) or 'the top'} holds U+{ord(bad[0]):04X}, "
                                     "which no text may hold")  # fmt: skip
                stack.append((member, (*path, name)))
        elif isinstance(item, list):
            stack.extend((member, (*path, i)) for i, member in enumerate(item))
        elif isinstance(item, str) and (bad := _BAD_TEXT.search(item)) is not None:
            raise ValueError(f"{_pointer(*path)} holds U+{ord(bad[0]):04X}, which no text may hold")
    return value


class _Renderer:
    def __init__(self, mtype: MessageType, now: datetime | None) -> None:
        self.mtype = mtype
        self.app_time = app_time(now)
        self.issues: list[Issue] = []
        self.field_order = FIELD_ORDER[mtype.flow]
        self.defaults = DEFAULTS[mtype.flow]

    def issue(self, code: str, path: str, message: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(Layer.SCHEMA, code, path, message))

    # --- value checks ---------------------------------------------------------------------

    def text(self, value: Any, *where: str | int) -> str | None:
        """The XML text of a scalar, or None (after recording an issue at the JSON pointer of ``where``) when it is
        not one. The pointer is built only for an issue: this runs for every field of every JSON message."""
        if isinstance(value, bool):  # bool is an int subclass: test it first
            found = f"the boolean {'true' if value else 'false'}"
            self.issue("json.invalid_type", _pointer(*where), f"expected a string or a number, found {found}")
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, Decimal):
            if not value.is_finite():
                self.issue("json.invalid_type", _pointer(*where), f"expected a finite number, found {value}")
                return None
            exponent = value.as_tuple().exponent
            if value.adjusted() >= _MAX_POSITIONAL_DIGITS or (
                isinstance(exponent, int) and exponent < -_MAX_POSITIONAL_DIGITS  # 0E-99999999 too
            ):
                self.issue("json.number_out_of_range", _pointer(*where),
                           f"the number {value} has more than {_MAX_POSITIONAL_DIGITS} digits before or after its "
                           "decimal point")  # fmt: skip
                return None
            return format(value, "f")  # positional notation: 1E+2 -> "100", never an exponent
        if isinstance(value, float):
            self.issue(
                "json.invalid_type",
                _pointer(*where),
                f"binary floating-point number {value!r} refused: money must be exact; send the number as a "
                "string, or parse the JSON with parse_float=decimal.Decimal",
            )
            return None
        kind = "an object" if isinstance(value, Mapping) else "an array" if isinstance(value, list | tuple) else None
        found = kind or f"a value of type {type(value).__name__}"
        self.issue("json.invalid_type", _pointer(*where), f"expected a string or a number, found {found}")
        return None

    def counted(self, seq: Sequence[Any], parent: str, child: str, path: str) -> bool:
        """As many entries as the XSD lets ``parent`` hold of ``child``; else an issue at the array (nothing of them
        is rendered: a 4 MiB body of empty objects would otherwise become hundreds of megabytes of XML)."""
        least, most = _occurs(self.mtype.schema, parent, child)
        if len(seq) < least:
            self.issue("json.too_few", path, f"{len(seq)} entries; a {self.mtype.code} message needs at least {least}")
            return False
        if most < 0 or len(seq) <= most:  # -1: unbounded
            return True
        self.issue("json.too_many", path, f"{len(seq):,} entries; a {self.mtype.code} message takes at most {most}")
        return False

    def obj(self, value: Any, path: str, what: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.issue("json.not_an_object", path, f"{what} must be a JSON object, found {_json_kind(value)}")
        return None

    def arr(self, value: Any, path: str, what: str) -> Sequence[Any] | None:
        if isinstance(value, list | tuple):
            return value
        self.issue("json.not_an_array", path, f"{what} must be a JSON array, found {_json_kind(value)}")
        return None

    def unknown(self, obj: Mapping[str, Any], allowed: Sequence[str], path_parts: tuple[str | int, ...],
                where: str) -> None:
        for key in getattr(obj, "repeated", ()):
            self.issue("json.duplicate_member", _pointer(*path_parts, key),
                       f"{where} names {key!r} more than once; send each member once")  # fmt: skip
        for key in obj:
            if key in allowed:
                continue
            if len(self.issues) >= MAX_ISSUES:
                return  # the answer is full; spare the fuzzy matching
            name = str(key)
            close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.75) if len(name) <= 64 else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = name if len(name) <= 64 else name[:64] + "…"
            self.issue("json.unknown_field", _pointer(*path_parts, name), f"{where} has no field {shown!r}{hint}")

    # --- building -------------------------------------------------------------------------

    def leaves(self, parent: etree._Element, element: str, obj: Mapping[str, Any],
               path_parts: tuple[str | int, ...], where: str,
               generated: Mapping[str, str] | None = None) -> etree._Element:
        """Append ``<ceb:element>`` with one child per known field, in XSD order, defaults applied."""
        order = self.field_order[element]
        self.unknown(obj, order, path_parts, where)
        el = etree.SubElement(parent, _q(element))
        defaults = self.defaults.get(element, {})
        for name in order:
            value = obj.get(name)
            if value is None:
                value = (generated or {}).get(name, defaults.get(name))
                if value is None:
                    continue  # absent: the XSD layer decides whether that is allowed
            text = self.text(value, *path_parts, name)
            if text is None:
                continue
            child = etree.SubElement(el, _q(name))
            try:
                child.text = text
            except ValueError:  # lxml refuses control characters and lone surrogates
                self.issue("json.invalid_character", _pointer(*path_parts, name),
                           "the string contains a character that is not allowed in XML")
        return el

    def document(self, root: etree._Element, value: Any, index: int) -> None:
        parts: tuple[str | int, ...] = ("documents", index)
        doc = self.obj(value, _pointer(*parts), f"documents[{index}]")
        if doc is None:
            return
        mtype = self.mtype
        generated = {"guid": new_guid(), "appTime": self.app_time}
        for key in getattr(doc, "repeated", ()):  # the head's own copy below drops the mark
            self.issue("json.duplicate_member", _pointer(*parts, key),
                       f"documents[{index}] names {key!r} more than once; send each member once")  # fmt: skip
        head_fields = {k: v for k, v in doc.items() if k != ITEMS or mtype.lines is None}
        fields = _fields_element(mtype)
        where = f"a {mtype.code} document ({fields})"
        if mtype.head is None:  # CEB403, 505, 605: the business element holds the fields itself (and has no lines)
            self.leaves(root, fields, head_fields, parts, where, generated)
            return
        doc_el = etree.SubElement(root, _q(mtype.document))
        self.leaves(doc_el, mtype.head, head_fields, parts, where, generated)
        if mtype.lines is None:
            return
        items = doc.get(ITEMS)
        if items is None:
            return  # no lines: the XSD reports the missing list
        seq = self.arr(items, _pointer(*parts, ITEMS), ITEMS)
        if seq is not None and not self.counted(seq, mtype.document, mtype.lines, _pointer(*parts, ITEMS)):
            return
        for i, item in enumerate(seq or ()):
            item_parts = (*parts, ITEMS, i)
            line = self.obj(item, _pointer(*item_parts), f"{ITEMS}[{i}]")
            if line is not None:
                self.leaves(doc_el, mtype.lines, line, item_parts, f"a {mtype.code} item ({mtype.lines})")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a value of type {type(value).__name__}"


def _q(local: str) -> str:
    return f"{{{CEB_NS}}}{local}"


def _reject(code: str, path: str, message: str) -> MessageRejected:
    return MessageRejected([Issue(Layer.SCHEMA, code, path, message)])


def render(
    payload: Mapping[str, Any],
    *,
    signer: Callable[[etree._Element], None] | None = None,
    now: datetime | None = None,
) -> bytes:
    """Render a friendly JSON payload as CEB XML (UTF-8 bytes with an XML declaration): :func:`render_root`, signed by
    ``signer`` when given, serialised.

    ``signer`` is called on the finished root element and must insert the enveloped
    ``ds:Signature`` where the message's schema puts it (required by the XSD for CEB621; by spec §2.7 for a CEB603
    or 605 declared); without it nothing is signed.
    """
    root = render_root(payload, now=now)
    if signer is not None:
        signer(root)
    return serialise(root)


def serialise(root: etree._Element) -> bytes:
    """A rendered message's bytes, as they are stored and sent (a signature covers them: nothing may change after)."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def render_root(payload: Mapping[str, Any], *, now: datetime | None = None) -> etree._Element:
    """The CEB message of a friendly JSON payload, unsigned, as an element tree.

    ``now`` fixes the default appTime (China time; a naive value is read as China time).
    Raises :class:`MessageRejected` with ``json.*`` issues (layer ``schema``, JSON-pointer paths)
    when the payload does not have the documented shape.
    """
    if not isinstance(payload, Mapping):
        raise _reject("json.not_an_object", "", f"the payload must be a JSON object, found {_json_kind(payload)}")
    type_value = payload.get("type")
    if type_value is None:
        raise _reject("json.missing_field", "/type",
                      f"\"type\" is required: one of {', '.join(JSON_TYPES)}")
    mtype = lookup(type_value) if isinstance(type_value, str) else None
    if mtype is None or mtype.code not in JSON_TYPES:
        raise _reject("json.unsupported_type", "/type",
                      f"type {type_value!r} cannot be sent as JSON; expected one of {', '.join(JSON_TYPES)}")
    r = _Renderer(mtype, now)
    r.unknown(payload, _TOP_LEVEL, (), "the payload")

    root = etree.Element(_q(mtype.root), nsmap={"ceb": CEB_NS})
    for name, default in (("guid", None), ("version", DEFAULT_VERSION)):
        value = payload.get(name)
        text = r.text(value, name) if value is not None else (default or new_guid())
        if text is None:
            continue
        try:
            root.set(name, text)
        except ValueError:  # lxml refuses control characters and lone surrogates
            r.issue("json.invalid_character", _pointer(name), f"{name} contains a character that is not allowed in XML")

    documents = payload.get("documents")
    if documents is None:
        r.issue("json.missing_field", "/documents", "\"documents\" is required: an array of 1–100 documents")
    else:
        seq = r.arr(documents, "/documents", "documents")
        if seq is not None and not r.counted(seq, mtype.root, mtype.document, "/documents"):
            raise MessageRejected(r.issues, mtype.code)
        for i, doc in enumerate(seq or ()):
            r.document(root, doc, i)

    base_transfer = payload.get("baseTransfer")
    bt = r.obj(base_transfer, "/baseTransfer", "baseTransfer") if base_transfer is not None else {}
    # BaseTransfer is rendered even when absent: its dxpMode default alone keeps the structure
    # recognisable, and the XSD then names the missing copCode/copName/dxpId.
    r.leaves(root, "BaseTransfer", bt or {}, ("baseTransfer",), "baseTransfer")

    subscribe = payload.get("baseSubscribe")
    if subscribe is not None:
        subs = r.arr(subscribe, "/baseSubscribe", "baseSubscribe") or ()
        if not r.counted(subs, mtype.root, "BaseSubscribe", "/baseSubscribe"):
            subs = ()
        for i, sub in enumerate(subs):
            sub_obj = r.obj(sub, _pointer("baseSubscribe", i), f"baseSubscribe[{i}]")
            if sub_obj is not None:
                r.leaves(root, "BaseSubscribe", sub_obj, ("baseSubscribe", i), "baseSubscribe")

    if r.issues:
        raise MessageRejected(r.issues, mtype.code)
    return root


# --- the JSON shape, as a JSON Schema (served in the OpenAPI document) ----------------------------------

#: A field's value: a string, an integer or a decimal number (see :meth:`_Renderer.text`); null is absent, which
#: only a field the XSD lets be absent may be.
_VALUE_SCHEMA: dict[str, Any] = {"type": ["string", "integer", "number"]}
_OPTIONAL_VALUE_SCHEMA: dict[str, Any] = {"type": ["string", "integer", "number", "null"]}


def _fields_schema(flow: str, element: str, generated: Sequence[str] = ()) -> dict[str, Any]:
    """An object with the element's fields (in ``flow``'s schema): required are those the XSD requires that no
    default or generated value fills; nothing else is allowed (``json.unknown_field``)."""
    defaults = DEFAULTS[flow].get(element, {})
    order = FIELD_ORDER[flow][element]
    particles = element_particles(_SCHEMAS[flow])[element]
    required = [name for name, p in zip(order, particles, strict=True)
                if p.min >= 1 and name not in defaults and name not in generated]  # fmt: skip
    return {
        "type": "object",
        "properties": {name: _VALUE_SCHEMA if name in required else _OPTIONAL_VALUE_SCHEMA for name in order},
        "required": required,
        "additionalProperties": False,
    }


def _occurs(schema: str, parent: str, child: str) -> tuple[int, int]:
    particle = next(p for p in element_particles(schema)[parent] if p.tag.endswith(f"}}{child}"))
    return particle.min, particle.max


def json_schema(code: str) -> dict[str, Any]:
    """The JSON Schema of a payload of message type ``code`` (one of :data:`JSON_TYPES`), built from the same
    tables the renderer follows and the occurrences of its flow's XSD, so that it says what the gateway does."""
    mtype = lookup(code)
    if mtype is None or code not in JSON_TYPES:
        raise ValueError(f"{code!r} is not sent as JSON; one of {', '.join(JSON_TYPES)}")
    flow, schema = mtype.flow, mtype.schema
    document = _fields_schema(flow, _fields_element(mtype), GENERATED_HEAD_FIELDS)
    if mtype.lines is not None:
        low, high = _occurs(schema, mtype.document, mtype.lines)
        document["properties"][ITEMS] = {"type": "array", "minItems": low, "maxItems": high,
                                         "items": _fields_schema(flow, mtype.lines)}  # fmt: skip
        if low >= 1:
            document["required"].append(ITEMS)
    low, high = _occurs(schema, mtype.root, mtype.document)
    subscribe_low, subscribe_high = _occurs(schema, mtype.root, "BaseSubscribe")
    return {
        "type": "object",
        "title": f"{code} as JSON",
        "required": ["type", "documents", "baseTransfer"],
        "additionalProperties": False,
        "properties": {
            "type": {"enum": [code, mtype.root], "description": f"{code} (or its root element's name, {mtype.root})"},
            "guid": {**_OPTIONAL_VALUE_SCHEMA, "description": "the message guid; generated when absent"},
            "version": {**_OPTIONAL_VALUE_SCHEMA, "default": DEFAULT_VERSION},
            "baseTransfer": _fields_schema(flow, "BaseTransfer"),
            "baseSubscribe": {  # null: absent, as for every member
                "type": ["array", "null"], "minItems": subscribe_low, "maxItems": subscribe_high,
                "items": _fields_schema(flow, "BaseSubscribe"),
            },
            "documents": {"type": "array", "minItems": low, "maxItems": high, "items": document},
        },
    }
