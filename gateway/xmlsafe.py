"""Safe parsing: bytes in, a CEB root element and its message type out — or a parse-layer error.

The parser never loads a DTD, never expands an entity, never touches the network and refuses
any document that carries a DOCTYPE at all (XXE, billion laughs and external DTDs all need one).
Size is limited before the bytes reach libxml2; nesting depth is limited by libxml2 itself
(huge_tree stays off). CEB messages are UTF-8, with or without a byte-order mark.
"""

from __future__ import annotations

import re
import threading

from lxml import etree

from gateway.errors import Issue, Layer, MessageRejected
from gateway.messages import BY_TAG, MessageType

DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # 100 documents of 99 lines stay well below this

_BOM = b"\xef\xbb\xbf"
_XML_DECL = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']", re.S)
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")  # the root's start tag ends the prolog
_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread (the CLI validates in threads).
    p: etree.XMLParser | None = getattr(_local, "parser", None)
    if p is None:
        p = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_blank_text=False,
            collect_ids=False,
        )
        _local.parser = p
    return p


def _reject(code: str, message: str, path: str = "/") -> MessageRejected:
    return MessageRejected([Issue(Layer.PARSE, code, path, message)])


def parse_xml(body: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse untrusted bytes into an element tree, refusing anything unsafe."""
    if not body or not body.strip():
        raise _reject("parse.empty", "the body is empty")
    if len(body) > max_bytes:
        raise _reject("parse.too_large", f"the body has {len(body)} bytes; the limit is {max_bytes}")
    head = body[3:] if body.startswith(_BOM) else body
    head = head.lstrip()
    m = _XML_DECL.match(head[:200])
    if m and m.group(1).decode("ascii").replace("_", "-").upper() not in ("UTF-8", "UTF8"):
        raise _reject("parse.encoding", f"CEB messages are UTF-8; the document declares {m.group(1).decode()}")
    first_element = _FIRST_ELEMENT.search(body)
    if b"<!DOCTYPE" in body[: first_element.start() if first_element else len(body)]:
        raise _reject("parse.dtd_forbidden", "a DOCTYPE or entity declaration is not allowed in a CEB message")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        msg = str(exc)
        code = "parse.too_deep" if "depth" in msg.lower() else "parse.not_well_formed"
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise _reject(code, f"not well-formed XML{line}: {msg}") from None
    except ValueError as exc:  # e.g. a str with an encoding declaration; bytes avoid it
        raise _reject("parse.not_well_formed", str(exc)) from None
    if root.getroottree().docinfo.doctype:  # belt and braces: the byte scan above should catch it
        raise _reject("parse.dtd_forbidden", "a DOCTYPE is not allowed in a CEB message")
    return root


def parse_message(body: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[etree._Element, MessageType]:
    """Parse and identify: the root must be one of the registry's CEB message roots."""
    root = parse_xml(body, max_bytes)
    mtype = BY_TAG.get(root.tag) if isinstance(root.tag, str) else None
    if mtype is None:
        q = etree.QName(root) if isinstance(root.tag, str) else None
        found = f"{{{q.namespace}}}{q.localname}" if q is not None and q.namespace else root.tag
        raise _reject(
            "parse.unknown_message_type",
            f"root element {found!s} is not a supported CEB message "
            "(expected e.g. CEB311Message in namespace http://www.chinaport.gov.cn/ceb)",
            path=f"/{q.localname if q is not None else '?'}",
        )
    return root, mtype


CODES: dict[str, str] = {
    "parse.empty": "the body is empty",
    "parse.too_large": "the body is larger than the configured limit (HTTP 413); nothing was parsed",
    "parse.encoding": "the XML declaration names an encoding other than UTF-8",
    "parse.dtd_forbidden": "the document has a DOCTYPE (DTDs and entity declarations are refused: XXE, billion laughs)",
    "parse.not_well_formed": "the bytes are not well-formed XML; the message gives libxml2's reason and line",
    "parse.too_deep": "the elements nest deeper than the parser allows",
    "parse.unknown_message_type": "the root element is not a supported CEB message in the CEB namespace",
    "parse.invalid_json": "a JSON request body is not valid JSON",
    "io.unreadable": "cbec validate could not read the file",
}
