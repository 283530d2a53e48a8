"""Extraction (gateway.documents): a parsed CEB root becomes heads and lines keyed by the spec's names."""

from __future__ import annotations

from lxml import etree

from gateway import documents
from gateway.documents import extract
from gateway.messages import BY_CODE

_ORDER = b"""<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="G-1" version="1.0">
  <ceb:Order>
    <ceb:OrderHead><ceb:orderNo>A1</ceb:orderNo><!-- a comment --><ceb:note/><?pi x?></ceb:OrderHead>
    <ceb:OrderList><ceb:gnum>1</ceb:gnum><ceb:itemName>\xe5\xa5\xb6\xe7\xb2\x89</ceb:itemName></ceb:OrderList>
    <ceb:OrderHead><ceb:orderNo>SECOND</ceb:orderNo></ceb:OrderHead>
    <ceb:OrderList><ceb:gnum>2</ceb:gnum><ceb:nested><ceb:x>1</ceb:x></ceb:nested></ceb:OrderList>
  </ceb:Order>
  <ceb:Order><ceb:OrderList><ceb:gnum>1</ceb:gnum></ceb:OrderList></ceb:Order>
  <ceb:BaseTransfer><ceb:copCode>C1</ceb:copCode></ceb:BaseTransfer>
</ceb:CEB311Message>"""


def test_heads_lines_and_base_transfer_keep_the_spec_names_and_document_order() -> None:
    msg = extract(etree.fromstring(_ORDER), BY_CODE["CEB311"])
    first, second = msg.documents
    assert (msg.guid, msg.version, msg.signed) == ("G-1", "1.0", False)
    # comments and processing instructions are not fields; an empty element is an empty string; the first
    # head counts (a second one is the schema's business, not extraction's)
    assert first.head == {"orderNo": "A1", "note": ""}
    # lines in document order; an element with children is not a field
    assert first.lines == [{"gnum": "1", "itemName": "奶粉"}, {"gnum": "2"}]
    assert first.path == "/CEB311Message/Order[1]" and second.path == "/CEB311Message/Order[2]"
    assert second.head == {} and second.lines == [{"gnum": "1"}]
    assert msg.base_transfer == {"copCode": "C1"}


def test_the_local_name_cache_stays_bounded_whatever_tags_arrive() -> None:
    invented = b"".join(b"<ceb:f%d>v</ceb:f%d>" % (i, i) for i in range(documents._LOCAL_NAMES_MAX + 50))
    xml = (b'<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="G" version="1.0">'
           b"<ceb:Order><ceb:OrderHead>" + invented + b"</ceb:OrderHead></ceb:Order></ceb:CEB311Message>")  # fmt: skip
    head = extract(etree.fromstring(xml), BY_CODE["CEB311"]).documents[0].head
    assert len(head) == documents._LOCAL_NAMES_MAX + 50 and head["f0"] == "v"
    assert len(documents._LOCAL_NAMES) <= documents._LOCAL_NAMES_MAX


def test_a_comment_or_pi_inside_a_value_leaves_the_value_whole() -> None:
    """The XSD ignores comments and processing instructions inside a simple value; extraction too, or the
    field (a business key, an amount) would vanish from every later check."""
    xml = _ORDER.replace(b"<ceb:orderNo>A1</ceb:orderNo>", b"<ceb:orderNo>A<!-- c -->1<?pi y?>B</ceb:orderNo>")
    first = extract(etree.fromstring(xml), BY_CODE["CEB311"]).documents[0]
    assert first.head == {"orderNo": "A1B", "note": ""}
    assert first.keys == ("", "A1B")  # ebpCode absent here; orderNo whole
