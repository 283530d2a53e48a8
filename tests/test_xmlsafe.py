"""The safe parser against an attack corpus: every hostile document gets a parse-layer error."""

from __future__ import annotations

import pytest

from gateway.errors import Layer, MessageRejected
from gateway.messages import CEB_NS
from gateway.xmlsafe import CODES, DEFAULT_MAX_BYTES, parse_message, parse_xml

MINIMAL = f'<ceb:CEB311Message xmlns:ceb="{CEB_NS}" guid="{"A" * 36}" version="1.0"/>'.encode()

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lolz>&lol4;</lolz>"""

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="x" version="1.0">&x;</ceb:CEB311Message>"""

XXE_NETWORK = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/evil">]><r>&x;</r>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>"""

DOCTYPE_AFTER_BOM = b"\xef\xbb\xbf" + EXTERNAL_DTD

#: A declaration whose encoding lies beyond the first 200 bytes (an early check only looked that far).
LATIN1_LONG_DECLARATION = ('<?xml version="1.0"' + " " * 250 + 'encoding="ISO-8859-1"?><a>Café</a>').encode("latin-1")

ATTACKS = {
    "billion_laughs": (BILLION_LAUGHS, "parse.dtd_forbidden"),
    "xxe_file": (XXE_FILE, "parse.dtd_forbidden"),
    "xxe_network": (XXE_NETWORK, "parse.dtd_forbidden"),
    "external_dtd": (EXTERNAL_DTD, "parse.dtd_forbidden"),
    "parameter_entity": (PARAMETER_ENTITY, "parse.dtd_forbidden"),
    "doctype_after_bom": (DOCTYPE_AFTER_BOM, "parse.dtd_forbidden"),
    "deep_nesting": (b"<a>" * 5000 + b"</a>" * 5000, "parse.too_deep"),
    "not_well_formed": (b"<a><b></a>", "parse.not_well_formed"),
    "truncated": (MINIMAL[:-5], "parse.not_well_formed"),
    "garbage": (b"\x01\x02 not xml", "parse.not_well_formed"),
    "nul_bytes": (b"<a>\x00</a>", "parse.encoding"),
    "utf16_declared": ('<?xml version="1.0" encoding="UTF-16"?><a>中</a>'.encode("utf-16"), "parse.encoding"),
    "utf16_undeclared_no_bom": ("<a>中</a>".encode("utf-16-le"), "parse.encoding"),
    "latin1_long_declaration": (LATIN1_LONG_DECLARATION, "parse.encoding"),
    # UTF-8 bytes declaring UTF-16: libxml2 refuses them with a syntax error, the declaration says why
    "utf16_declared_over_utf8": (b'<?xml version="1.0"' + b" " * 250 + b'encoding="UTF-16"?><a/>', "parse.encoding"),
    "doctype_after_a_comment": (b"<!-- <a --><!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", "parse.dtd_forbidden"),
    "doctype_after_a_pi": (b'<?xml version="1.0"?>\n<?pi <b?><!DOCTYPE a SYSTEM "x"><a/>', "parse.dtd_forbidden"),
    "empty": (b"", "parse.empty"),
    "whitespace": (b"  \n ", "parse.empty"),
    "gbk_declared": ('<?xml version="1.0" encoding="GBK"?><a>中</a>'.encode("gbk"), "parse.encoding"),
    "undeclared_entity": (b"<a>&undefined;</a>", "parse.not_well_formed"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_hostile_documents_are_refused_with_a_parse_error(name: str) -> None:
    body, code = ATTACKS[name]
    with pytest.raises(MessageRejected) as err:
        parse_xml(body)
    issue = err.value.issues[0]
    assert issue.layer is Layer.PARSE
    assert issue.code == code, issue
    assert issue.code in CODES
    assert issue.message


def test_oversized_body_is_refused_before_parsing() -> None:
    body = b"<a>" + b"x" * 2000 + b"</a>"
    with pytest.raises(MessageRejected) as err:
        parse_xml(body, max_bytes=1000)
    assert err.value.issues[0].code == "parse.too_large"
    assert "1000" in err.value.issues[0].message


def test_huge_text_node_within_the_default_limit_does_not_expand() -> None:
    body = b"<a>" + b"x" * (DEFAULT_MAX_BYTES + 1) + b"</a>"
    with pytest.raises(MessageRejected) as err:
        parse_xml(body)
    assert err.value.issues[0].code == "parse.too_large"


def test_utf8_with_and_without_bom_parse_identically() -> None:
    doc = '<?xml version="1.0" encoding="UTF-8"?><a>跨境电商</a>'.encode()
    assert parse_xml(doc).text == "跨境电商"
    assert parse_xml(b"\xef\xbb\xbf" + doc).text == "跨境电商"


def test_doctype_text_inside_the_body_is_not_mistaken_for_a_dtd() -> None:
    root = parse_xml(b"<a><![CDATA[<!DOCTYPE x>]]></a>")
    assert root.text == "<!DOCTYPE x>"


def test_known_root_is_identified() -> None:
    root, mtype = parse_message(MINIMAL)
    assert mtype.code == "CEB311"
    assert root.get("version") == "1.0"


@pytest.mark.parametrize(
    "body",
    [
        b'<CEB311Message guid="x" version="1.0"/>',  # no namespace
        b'<x:CEB311Message xmlns:x="urn:other" guid="x" version="1.0"/>',  # wrong namespace
        f'<ceb:CEB999Message xmlns:ceb="{CEB_NS}"/>'.encode(),  # unknown type
    ],
)
def test_unknown_roots_are_refused(body: bytes) -> None:
    with pytest.raises(MessageRejected) as err:
        parse_message(body)
    assert err.value.issues[0].code == "parse.unknown_message_type"
