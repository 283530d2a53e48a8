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

_UTF8 = ("UTF-8", "UTF8")
_BOM = b"\xef\xbb\xbf"
#: The XML declaration's encoding, however long the declaration: read before parsing, as libxml2 refuses a UTF-8
#: body that declares UTF-16 (or UTF-32) with a syntax error that names no encoding.
_DECLARED = re.compile(rb"\s*<\?xml\s[^?>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
#: What may come before a DOCTYPE: blanks, the XML declaration and other processing instructions, comments (in
#: which "<a" is no start tag). The alternatives begin differently, so the match is linear.
_PROLOG = re.compile(rb"(?:\s|<\?.*?\?>|<!--.*?-->)*", re.S)


def prolog_end(body: bytes) -> int:
    """Where the first markup after the byte order mark, the XML declaration, processing instructions, comments and
    blanks begins (the DOCTYPE or the root element's start tag). No parsing."""
    start = 3 if body.startswith(_BOM) else 0
    return _PROLOG.match(body, start).end()  # type: ignore[union-attr]  # the pattern matches the empty string
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
    if b"\x00" in body:  # every UTF-16 or UTF-32 document has them (libxml2 would read it); no UTF-8 XML has one
        raise _reject("parse.encoding", "CEB messages are UTF-8; the body holds NUL bytes (UTF-16 or UTF-32?)")
    start = 3 if body.startswith(_BOM) else 0
    declared = _DECLARED.match(body, start)
    if declared and declared.group(1).decode("ascii").replace("_", "-").upper() not in _UTF8:
        raise _reject("parse.encoding", f"CEB messages are UTF-8; the document declares {declared.group(1).decode()}")
    if body.startswith(b"<!DOCTYPE", prolog_end(body)):
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
    docinfo = root.getroottree().docinfo
    if docinfo.doctype:  # belt and braces: the byte scan above should catch it
        raise _reject("parse.dtd_forbidden", "a DOCTYPE is not allowed in a CEB message")
    # What libxml2 read the declaration as (however long it is): the bytes are stored and sent on as they came,
    # so they must be the UTF-8 they are taken for.
    if docinfo.encoding and docinfo.encoding.replace("_", "-").upper() not in _UTF8:
        raise _reject("parse.encoding", f"CEB messages are UTF-8; the document declares {docinfo.encoding}")
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
    "parse.encoding": "the document is not UTF-8: its XML declaration names another encoding, or it holds NUL "
    "bytes (UTF-16, UTF-32)",
    "parse.dtd_forbidden": "the document has a DOCTYPE (DTDs and entity declarations are refused: XXE, billion laughs)",
    "parse.not_well_formed": "the bytes are not well-formed XML; the message gives libxml2's reason and line",
    "parse.too_deep": "the elements nest deeper than the parser allows",
    "parse.unknown_message_type": "the root element is not a supported CEB message in the CEB namespace",
    "parse.invalid_json": "a JSON request body is not valid JSON, or names a member twice, or holds a character no "
    "text may hold (NUL and other control characters but tab, LF and CR; lone surrogates)",
    "parse.bad_content_encoding": "the body does not decode as its Content-Encoding (gzip, deflate) says (HTTP 400)",
    "parse.body_timeout": "the body did not arrive in time (HTTP 408): the client announced more than it sent",
    "io.unreadable": "cbec validate could not read the file",
}
