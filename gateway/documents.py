"""Extraction: a parsed CEB root element becomes plain data the pure layers can work on.

A message carries 1–100 business documents (Order, Payment, ...). Each becomes a
:class:`Document` whose head and lines are ``dict[str, str]`` keyed by the spec's element names,
with the element path kept so that every error can point back at the XML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from gateway.messages import CEB_NS, DS_NS, MessageType

_CEB = f"{{{CEB_NS}}}"
_SIGNATURE = f"{{{DS_NS}}}Signature"
_BASE_TRANSFER = f"{_CEB}BaseTransfer"
_BASE_SUBSCRIBE = f"{_CEB}BaseSubscribe"


@dataclass(frozen=True)
class Document:
    type: MessageType
    index: int  # 1-based position of the business element under the root
    path: str  # "/CEB311Message/Order[2]"
    head: dict[str, str]
    lines: list[dict[str, str]] = field(default_factory=list)

    @property
    def head_path(self) -> str:
        return f"{self.path}/{self.type.head}" if self.type.head else self.path

    def field_path(self, name: str) -> str:
        return f"{self.head_path}/{name}"

    def line_path(self, line_index: int, name: str | None = None) -> str:
        """``line_index`` is 0-based into :attr:`lines`; paths are 1-based like XPath."""
        p = f"{self.path}/{self.type.lines}[{line_index + 1}]"
        return f"{p}/{name}" if name else p

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.head.get(k, "") for k in self.type.keys)


@dataclass(frozen=True)
class ParsedMessage:
    type: MessageType
    guid: str  # the root's guid attribute: the message's identity for idempotency
    version: str
    documents: list[Document]
    base_transfer: dict[str, str] | None
    signed: bool
    #: the BaseSubscribe elements (0..5, spec §2.4): third parties to receive copies
    base_subscribes: tuple[dict[str, str], ...] = ()

    @property
    def path(self) -> str:
        return f"/{self.type.root}"


_LOCAL_NAMES: dict[str, str] = {}  # "{namespace}name" -> "name", for the few hundred tags the schemas know
_LOCAL_NAMES_MAX = 4096  # the cache never grows with what a hostile document invents


def _local_name(tag: str) -> str:
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = tag[tag.index("}") + 1 :] if tag[0] == "{" else tag
        if len(_LOCAL_NAMES) < _LOCAL_NAMES_MAX:
            _LOCAL_NAMES[tag] = name
    return name


def _fields(el: etree._Element) -> dict[str, str]:
    """Leaf children of ``el`` as name -> text (empty string for an empty element)."""
    out: dict[str, str] = {}
    for child in el:
        tag = child.tag
        if tag.__class__ is not str:  # a comment or PI beside the fields
            continue
        if not len(child):  # a leaf: the cache read inline below (~50 a message)
            out[_LOCAL_NAMES.get(tag) or _local_name(tag)] = child.text or ""
        elif all(c.tag.__class__ is not str for c in child):
            # A value with a comment or PI inside (<orderNo>A<!-- x -->B</orderNo>): the XSD ignores them and so
            # must we, or the field would vanish (a business key lost, an amount left unchecked).
            out[_LOCAL_NAMES.get(tag) or _local_name(tag)] = "".join(child.itertext())
    return out


def extract(root: etree._Element, mtype: MessageType) -> ParsedMessage:
    """Turn a schema-valid (or at least well-formed) root into a :class:`ParsedMessage`."""
    # One pass over each business element's children (head and lines alike): this runs for every message.
    doc_tag = _CEB + mtype.document
    head_tag = _CEB + mtype.head if mtype.head else None
    line_tag = _CEB + mtype.lines if mtype.lines else None
    documents: list[Document] = []
    base_transfer: dict[str, str] | None = None
    subscribes: list[dict[str, str]] = []
    signed = False
    index = 0
    for child in root:
        tag = child.tag
        if tag == doc_tag:
            index += 1
            head: dict[str, str] | None = None if head_tag else _fields(child)
            lines: list[dict[str, str]] = []
            if head_tag or line_tag:
                for part in child:
                    part_tag = part.tag
                    if part_tag == head_tag:
                        if head is None:  # the first, as find() would
                            head = _fields(part)
                    elif part_tag == line_tag:
                        lines.append(_fields(part))
            documents.append(
                Document(mtype, index, f"/{mtype.root}/{mtype.document}[{index}]", head or {}, lines)
            )
        elif tag == _BASE_TRANSFER:
            base_transfer = _fields(child)
        elif tag == _BASE_SUBSCRIBE:
            subscribes.append(_fields(child))
        elif tag == _SIGNATURE:
            signed = True
    return ParsedMessage(
        type=mtype,
        guid=root.get("guid", ""),
        version=root.get("version", ""),
        documents=documents,
        base_transfer=base_transfer,
        signed=signed,
        base_subscribes=tuple(subscribes),
    )
