"""XML signature of CEB messages: golden RSA-SHA1 output, SM2-SM3 sign/verify, tampering, position,
round trip through a DXP envelope, and interoperability with OpenSSL (SM2) and xmlsec (RSA).

The keys under tests/data/signing/ are TEST KEYS ONLY (see the README there).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway import signing
from gateway.errors import MessageRejected
from gateway.messages import CEB_NS, DS_NS, DXP_NS, IMPORT_SCHEMA, SCHEMA_DIR
from gateway.signing import (
    C14N,
    CODES,
    ENVELOPED,
    RSA_SHA1,
    SHA1,
    SM2_SM3,
    SM3,
    ExternalKey,
    RsaSha1Key,
    Sm2Sm3Key,
    VerifyResult,
    generate_test_key,
    insert_position,
    key_name_for,
    prepare,
    sign,
    sign_xml,
    verify,
)

DATA = Path(__file__).parent / "data" / "signing"
UNSIGNED = (DATA / "ceb621-unsigned.xml").read_bytes()
GOLDEN_RSA = (DATA / "ceb621-signed-rsa-sha1.xml").read_bytes()
DS = f"{{{DS_NS}}}"
CEB = f"{{{CEB_NS}}}"


def rsa_key() -> RsaSha1Key:
    return RsaSha1Key.from_files(DATA / "test-only-rsa-key.pem", DATA / "test-only-rsa-cert.pem")


def sm2_key(signature_format: str = "der") -> Sm2Sm3Key:
    return Sm2Sm3Key.from_files(DATA / "test-only-sm2-key.pem", DATA / "test-only-sm2-cert.pem",
                                signature_format=signature_format)  # type: ignore[arg-type]


BACKENDS: dict[str, Callable[[], signing.SignatureBackend]] = {
    "rsa": rsa_key, "sm2": sm2_key, "sm2-raw": lambda: sm2_key("raw")
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> signing.SignatureBackend:
    return BACKENDS[request.param]()


def parse(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def c14n(node: etree._Element | etree._ElementTree) -> bytes:
    return etree.tostring(node, method="c14n", with_comments=False)


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    return data.replace(old, new)


# --- known answers -------------------------------------------------------------------------------


def test_sm3_known_answers() -> None:
    # GB/T 32905 examples 1 and 2, through the digest the SM2 backend uses for the Reference.
    key = sm2_key()
    assert key.digest_bytes(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert key.digest_bytes(b"abcd" * 16).hex() == (
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


def test_sha1_digest_of_rsa_backend() -> None:
    assert rsa_key().digest_bytes(b"abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"


def test_sm2_curve_parameters_are_consistent() -> None:
    assert signing._on_curve(signing._GX, signing._GY)
    assert signing._multi_mul([(signing._N, signing._G_TABLE)]) is None  # n·G is the point at infinity
    assert signing._multi_mul([(signing._N - 1, signing._G_TABLE)]) == (signing._GX, (-signing._GY) % signing._P)


def test_key_name_is_serial_in_lowercase_hex_padded_to_bytes() -> None:
    assert key_name_for(0x1691FE9) == "01691fe9"  # the spec's example keeps the leading zero
    assert key_name_for(0x03000000000CDE6F) == "03000000000cde6f"
    for make in (rsa_key, sm2_key):
        key = make()
        from cryptography import x509

        serial = x509.load_der_x509_certificate(key.certificate_der).serial_number
        assert int(key.key_name, 16) == serial
        assert key.key_name == key.key_name.lower() and len(key.key_name) % 2 == 0


# --- golden files --------------------------------------------------------------------------------


def test_rsa_sha1_signature_is_byte_identical_to_golden() -> None:
    expected = (DATA / "ceb621-signed-rsa-sha1.xml").read_bytes()
    assert sign_xml(UNSIGNED, rsa_key()) == expected


@pytest.mark.parametrize("name", ["ceb621-signed-rsa-sha1.xml", "ceb621-signed-sm2-sm3.xml",
                                  "ceb621-signed-sm2-sm3-raw.xml"])
def test_golden_signed_files_verify(name: str) -> None:
    result = verify((DATA / name).read_bytes())
    assert result.ok, result
    assert result.code is None
    assert result.algorithm == (RSA_SHA1 if "rsa" in name else SM2_SM3)


def test_golden_signed_files_are_schema_valid() -> None:
    xsd = SCHEMA_DIR / IMPORT_SCHEMA
    if not xsd.exists():
        pytest.skip(f"{xsd} not present")
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    for name in ("ceb621-signed-rsa-sha1.xml", "ceb621-signed-sm2-sm3.xml"):
        doc = etree.parse(str(DATA / name))
        assert schema.validate(doc), (name, schema.error_log.last_error)


def test_signed_structure_follows_spec() -> None:
    root = parse((DATA / "ceb621-signed-sm2-sm3.xml").read_bytes())
    sig = root[-1]
    assert sig.tag == DS + "Signature"
    info = sig.find(DS + "SignedInfo")
    assert info is not None
    assert info.find(DS + "CanonicalizationMethod").get("Algorithm") == C14N
    assert info.find(DS + "SignatureMethod").get("Algorithm") == SM2_SM3
    ref = info.find(DS + "Reference")
    assert ref is not None and ref.get("URI") == ""
    assert [t.get("Algorithm") for t in ref.iter(DS + "Transform")] == [ENVELOPED]
    assert ref.find(DS + "DigestMethod").get("Algorithm") == SM3
    assert [c.tag for c in sig] == [DS + "SignedInfo", DS + "SignatureValue", DS + "KeyInfo"]
    assert [c.tag for c in sig.find(DS + "KeyInfo")] == [DS + "KeyName", DS + "X509Data"]
    cert_b64 = sig.findtext(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate")
    assert base64.b64decode(cert_b64 or "") == sm2_key().certificate_der


# --- sign / verify -------------------------------------------------------------------------------


def test_sign_then_verify(backend: signing.SignatureBackend) -> None:
    signed = sign_xml(UNSIGNED, backend)
    result = verify(signed)
    assert result.ok, result
    assert result.key_name == backend.key_name
    assert result.certificate_der == backend.certificate_der


def test_sm2_signatures_are_randomised_and_all_verify() -> None:
    key = sm2_key()
    first, second = sign_xml(UNSIGNED, key), sign_xml(UNSIGNED, key)
    value = re.compile(rb"<ds:SignatureValue>([^<]+)</ds:SignatureValue>")
    assert value.search(first).group(1) != value.search(second).group(1)  # type: ignore[union-attr]
    assert verify(first).ok and verify(second).ok


def test_signing_leaves_the_document_otherwise_untouched(backend: signing.SignatureBackend) -> None:
    # Only the indentation in front of the new Signature is added; taking the Signature out again
    # (as re-signing does) gives back the original canonical document.
    root = parse(UNSIGNED)
    sign(root, backend)
    signing._remove_keep_text(root[-1])
    assert c14n(root.getroottree()) == c14n(parse(UNSIGNED).getroottree())


def test_signed_info_is_canonicalised_in_context() -> None:
    # Inclusive C14N of SignedInfo in place carries the root's namespaces — the same octets the public
    # signers get by declaring xmlns:ceb, xmlns:ds and xmlns:xsi on SignedInfo.
    prepared = prepare(parse(UNSIGNED), rsa_key())
    assert prepared.signed_info.startswith(
        b'<ds:SignedInfo xmlns:ceb="http://www.chinaport.gov.cn/ceb" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    )
    assert b"<ds:CanonicalizationMethod Algorithm=" in prepared.signed_info  # c14n writes no empty-element tags
    assert b"/>" not in prepared.signed_info


def test_comments_and_processing_instructions() -> None:
    # URI="" leaves comments out of the digest (XML-DSig §4.3.3.3); processing instructions stay in.
    doc = replace_once(UNSIGNED, b"<ceb:Inventory>", b"<!-- before --><ceb:Inventory><?app hint?>")
    signed = sign_xml(doc, rsa_key())
    assert verify(signed).ok
    assert verify(replace_once(signed, b"<!-- before -->", b"<!-- edited -->")).ok
    assert verify(replace_once(signed, b"<?app hint?>", b"<?app other?>")).code == "signature.digest_mismatch"


def test_resigning_replaces_the_signature() -> None:
    once = sign_xml(UNSIGNED, rsa_key())
    twice = sign_xml(once, rsa_key())
    assert twice == once
    root = parse(sign_xml(once, sm2_key()))
    assert len(root.findall(DS + "Signature")) == 1
    assert verify(root).algorithm == SM2_SM3


def test_two_phase_signing_with_an_external_key() -> None:
    # An HSM/UKey bridge: prepare() gives the octets, the device signs them, finish() writes the value.
    software = rsa_key()
    seen: list[bytes] = []

    def device(octets: bytes) -> bytes:
        seen.append(octets)
        return software.sign_bytes(octets)

    bridge = ExternalKey(software.certificate_der, device)
    assert (bridge.algorithm, bridge.digest, bridge.key_name) == (RSA_SHA1, SHA1, software.key_name)
    root = parse(UNSIGNED)
    sign(root, bridge)
    assert seen and seen[0].startswith(b"<ds:SignedInfo")
    assert b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root.getroottree(), encoding="UTF-8") == (
        DATA / "ceb621-signed-rsa-sha1.xml"
    ).read_bytes()

    root = parse(UNSIGNED)
    prepared = prepare(root, bridge)
    assert not verify(root).ok  # no value yet
    prepared.finish(device(prepared.signed_info))
    assert verify(root).ok
    with pytest.raises(ValueError):
        prepared.finish(b"")


def test_external_key_infers_sm2_from_the_certificate() -> None:
    software = sm2_key()
    bridge = ExternalKey((DATA / "test-only-sm2-cert.pem").read_bytes(), software.sign_bytes)
    assert (bridge.algorithm, bridge.digest) == (SM2_SM3, SM3)
    assert verify(sign_xml(UNSIGNED, bridge)).ok


def test_keys_must_match_their_certificates() -> None:
    rsa_pem, sm2_pem = (DATA / "test-only-rsa-key.pem").read_bytes(), (DATA / "test-only-sm2-key.pem").read_bytes()
    other_rsa_key, other_rsa_cert = generate_test_key("rsa", "other")
    other_sm2_key, other_sm2_cert = generate_test_key("sm2", "other")
    with pytest.raises(ValueError):
        RsaSha1Key.from_pem(rsa_pem, other_rsa_cert)
    with pytest.raises(ValueError):
        Sm2Sm3Key.from_pem(sm2_pem, other_sm2_cert)
    with pytest.raises(ValueError):
        Sm2Sm3Key.from_pem(sm2_pem, (DATA / "test-only-rsa-cert.pem").read_bytes())
    with pytest.raises(ValueError):
        RsaSha1Key.from_pem(rsa_pem, other_sm2_cert)
    assert RsaSha1Key.from_pem(other_rsa_key, other_rsa_cert).key_name
    assert Sm2Sm3Key.from_pem(other_sm2_key, other_sm2_cert).key_name


def test_generate_test_key_makes_usable_labelled_keys() -> None:
    from cryptography import x509

    for kind in ("rsa", "sm2"):
        key_pem, cert_pem = generate_test_key(kind, "sandbox signer")
        assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        cert = x509.load_pem_x509_certificate(cert_pem)
        assert "TEST KEY" in cert.subject.rfc4514_string()
        assert "CN=sandbox signer" in cert.subject.rfc4514_string()
        key = RsaSha1Key.from_pem(key_pem, cert_pem) if kind == "rsa" else Sm2Sm3Key.from_pem(key_pem, cert_pem)
        assert verify(sign_xml(UNSIGNED, key)).ok
    with pytest.raises(ValueError):
        generate_test_key("dsa", "x")  # type: ignore[arg-type]


def test_sm2_self_signed_certificate_signature_verifies() -> None:
    from cryptography import x509

    der = sm2_key().certificate_der
    cert = x509.load_der_x509_certificate(der)
    assert cert.signature_algorithm_oid.dotted_string == "1.2.156.10197.1.501"
    point = signing._read_certificate(der).sm2_point
    assert point is not None
    rs = signing._sm2_decode_signature(cert.signature)
    assert rs is not None
    assert signing._sm2_verify(point, signing.SM2_DEFAULT_USER_ID, cert.tbs_certificate_bytes, *rs)
    assert not signing._sm2_verify(point, b"", cert.tbs_certificate_bytes, *rs)


# --- round trip through a DXP envelope -------------------------------------------------------------


def test_signature_survives_a_dxp_envelope_round_trip(backend: signing.SignatureBackend) -> None:
    signed = sign_xml(UNSIGNED, backend)
    envelope = etree.Element(f"{{{DXP_NS}}}DxpMsg", nsmap={"dxp": DXP_NS}, ver="1.0")
    info = etree.SubElement(envelope, f"{{{DXP_NS}}}TransInfo")
    etree.SubElement(info, f"{{{DXP_NS}}}MsgType").text = "CEB621Message"
    etree.SubElement(envelope, f"{{{DXP_NS}}}Data").text = base64.b64encode(signed).decode()
    wire = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    received = etree.fromstring(wire)
    data = base64.b64decode(received.findtext(f"{{{DXP_NS}}}Data") or "")
    assert data == signed
    assert verify(data).ok
    assert verify(etree.fromstring(data)).ok


# --- tampering -------------------------------------------------------------------------------------

TAMPERING = {
    # one byte of a signed value (the price of goods line 1)
    "goods price": (b"<ceb:price>198.00</ceb:price>", b"<ceb:price>198.01</ceb:price>", "signature.digest_mismatch"),
    "BaseTransfer copCode": (b"<ceb:copCode>4403980TST</ceb:copCode>", b"<ceb:copCode>4403980TSU</ceb:copCode>",
                             "signature.digest_mismatch"),
    "Chinese text": ("<ceb:buyerName>张三</ceb:buyerName>".encode(), "<ceb:buyerName>张四</ceb:buyerName>".encode(),
                     "signature.digest_mismatch"),
    "root guid attribute": (b'guid="4CDE1CFD-EDED-46B1-946C-B8022E42FC94" version', b'guid="4CDE1CFD-EDED-46B1-946C'
                            b'-B8022E42FC95" version', "signature.digest_mismatch"),
    "re-indentation": (b"\n  <ceb:BaseTransfer>", b"\n    <ceb:BaseTransfer>", "signature.digest_mismatch"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_message_fails(backend: signing.SignatureBackend, case: str) -> None:
    old, new, code = TAMPERING[case]
    signed = sign_xml(UNSIGNED, backend)
    result = verify(replace_once(signed, old, new))
    assert not result.ok
    assert result.code == code
    assert result.path.endswith("/DigestValue")


def flip_base64_char(text: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    c = text[index]
    return text[:index] + alphabet[(alphabet.index(c) + 1) % 64] + text[index + 1 :]


@pytest.mark.parametrize("index", [0, 10, 40])
def test_tampered_signature_value_fails(backend: signing.SignatureBackend, index: int) -> None:
    root = parse(sign_xml(UNSIGNED, backend))
    value = root.find(f"{DS}Signature/{DS}SignatureValue")
    assert value is not None and value.text
    value.text = flip_base64_char(value.text, index)
    result = verify(root)
    assert not result.ok
    assert result.code == "signature.bad_value"


def test_tampered_digest_value_fails(backend: signing.SignatureBackend) -> None:
    root = parse(sign_xml(UNSIGNED, backend))
    digest = root.find(f"{DS}Signature/{DS}SignedInfo/{DS}Reference/{DS}DigestValue")
    assert digest is not None and digest.text
    digest.text = flip_base64_char(digest.text, 3)
    assert verify(root).code == "signature.digest_mismatch"


def test_changed_signed_info_fails_even_with_a_matching_digest() -> None:
    # Swap the c14n URI for its with-comments twin: still supported, the digest still matches, but the
    # signed octets changed, so the value must no longer verify.
    signed = sign_xml(UNSIGNED, rsa_key())
    changed = replace_once(signed, f'CanonicalizationMethod Algorithm="{C14N}"'.encode(),
                           f'CanonicalizationMethod Algorithm="{C14N}#WithComments"'.encode())
    assert verify(changed).code == "signature.bad_value"


def test_verify_leaves_a_tree_unchanged(backend: signing.SignatureBackend) -> None:
    root = parse(sign_xml(UNSIGNED, backend))
    before = etree.tostring(root)
    assert verify(root).ok
    assert etree.tostring(root) == before
    root.find(f"{CEB}BaseTransfer/{CEB}copCode").text = "X"
    before = etree.tostring(root)
    assert verify(root).code == "signature.digest_mismatch"
    assert etree.tostring(root) == before


# --- position ----------------------------------------------------------------------------------------

EXTEND = (b"  <ceb:BaseSubscribe>\n    <ceb:status>ALL</ceb:status>\n    <ceb:dxpMode>DXP</ceb:dxpMode>\n"
          b"    <ceb:dxpAddress>DXPENT0000000002</ceb:dxpAddress>\n  </ceb:BaseSubscribe>\n"
          b"  <ceb:ExtendMessage>\n    <ceb:name>gateway</ceb:name>\n    <ceb:version>1</ceb:version>\n"
          b"    <ceb:Message><x xmlns=\"urn:test\">1</x></ceb:Message>\n  </ceb:ExtendMessage>\n")
WITH_EXTEND = replace_once(UNSIGNED, b"</ceb:CEB621Message>", EXTEND + b"</ceb:CEB621Message>")


def local_names(root: etree._Element) -> list[str]:
    return [etree.QName(c).localname for c in root if isinstance(c.tag, str)]


def test_import_signature_is_the_last_child() -> None:
    root = parse(sign_xml(UNSIGNED, rsa_key()))
    assert local_names(root) == ["Inventory", "BaseTransfer", "Signature"]
    root = parse(sign_xml(WITH_EXTEND, rsa_key()))  # flow from the registry: CEB621 is import
    assert local_names(root) == ["Inventory", "BaseTransfer", "BaseSubscribe", "ExtendMessage", "Signature"]
    assert verify(root).ok
    xsd = SCHEMA_DIR / IMPORT_SCHEMA
    if xsd.exists():
        schema = etree.XMLSchema(etree.parse(str(xsd)))
        assert schema.validate(root.getroottree()), schema.error_log.last_error


def test_export_signature_goes_before_extend_message() -> None:
    root = parse(sign_xml(WITH_EXTEND, sm2_key(), flow="export"))
    assert local_names(root) == ["Inventory", "BaseTransfer", "BaseSubscribe", "Signature", "ExtendMessage"]
    assert verify(root).ok
    root = parse(sign_xml(UNSIGNED, sm2_key(), flow="export"))
    assert local_names(root) == ["Inventory", "BaseTransfer", "Signature"]
    assert verify(root).ok


def test_insert_position() -> None:
    root = parse(WITH_EXTEND)
    names = local_names(root)
    assert insert_position(root, "import") == len(root)
    assert insert_position(root, "export") == names.index("ExtendMessage")
    assert insert_position(parse(UNSIGNED), "export") == len(parse(UNSIGNED))
    with pytest.raises(ValueError):
        insert_position(root, "transit")


def test_signature_follows_the_document_indentation() -> None:
    signed = sign_xml(UNSIGNED, rsa_key())
    assert b"  </ceb:BaseTransfer>\n  <ds:Signature " in signed
    assert signed.endswith(b"</ds:Signature>\n</ceb:CEB621Message>")
    compact = etree.tostring(parse(UNSIGNED), encoding="UTF-8")  # no declaration, still indented
    flat = re.sub(rb">\s+<", b"><", compact)
    assert b"</ceb:BaseTransfer><ds:Signature" in sign_xml(flat, rsa_key())


def test_sign_refuses_a_non_root_element_and_sign_xml_bad_bytes() -> None:
    root = parse(UNSIGNED)
    with pytest.raises(ValueError):
        sign(root[0], rsa_key())
    with pytest.raises(MessageRejected):
        sign_xml(b"<not-closed>", rsa_key())
    with pytest.raises(ValueError):
        sign(root, rsa_key(), flow="transit")


# --- verification failures, each with its code -----------------------------------------------------


def test_missing_and_multiple_signatures() -> None:
    assert verify(UNSIGNED).code == "signature.missing"
    root = parse(sign_xml(UNSIGNED, rsa_key()))
    root.append(etree.fromstring(etree.tostring(root[-1])))
    assert verify(root).code == "signature.multiple"


@pytest.mark.parametrize("old,new", [
    (RSA_SHA1, "http://www.w3.org/2000/09/xmldsig#dsa-sha1"),
    (SHA1, "http://www.w3.org/2001/04/xmldsig-more#md5"),
    (C14N + '"', 'http://www.w3.org/2001/10/xml-exc-c14n#"'),
])
def test_unsupported_algorithms(old: str, new: str) -> None:
    signed = sign_xml(UNSIGNED, rsa_key())
    result = verify(signed.replace(old.encode(), new.encode(), 1))
    assert result.code == "signature.unsupported_algorithm", result


@pytest.mark.parametrize("old,new", [
    (b'URI=""', b'URI="#other"'),
    (ENVELOPED.encode(), b"http://www.w3.org/TR/1999/REC-xpath-19991116"),
    (b"</ds:Transform>", b"</ds:Transform><ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>"),
])
def test_unsupported_references(old: bytes, new: bytes) -> None:
    root = parse(sign_xml(UNSIGNED, rsa_key()))
    text = etree.tostring(root)
    if old == b"</ds:Transform>":  # lxml writes the Transform as an empty element
        old = f'<ds:Transform Algorithm="{ENVELOPED}"/>'.encode()
        new = old + b'<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>'
    assert verify(replace_once(text, old, new)).code == "signature.unsupported_reference"


def test_trailing_c14n_transform_is_accepted() -> None:
    # A second transform that is plain C14N changes nothing for URI="" (what xmlsec templates often add);
    # the SignedInfo changed, so re-sign through an external signer to keep the value valid.
    key = rsa_key()
    root = parse(UNSIGNED)
    prepared = prepare(root, key)
    transforms = prepared.element.find(f"{DS}SignedInfo/{DS}Reference/{DS}Transforms")
    assert transforms is not None
    etree.SubElement(transforms, DS + "Transform", Algorithm=C14N)
    info = prepared.element.find(DS + "SignedInfo")
    assert info is not None
    prepared.finish(key.sign_bytes(c14n(info)))
    assert verify(root).ok


def test_malformed_signatures() -> None:
    signed = sign_xml(UNSIGNED, rsa_key())
    assert verify(re.sub(rb"<ds:DigestValue>[^<]*</ds:DigestValue>", b"", signed)).code == "signature.malformed"
    assert verify(re.sub(rb"<ds:SignatureValue>[^<]*", b"<ds:SignatureValue>", signed)).code == "signature.malformed"
    assert verify(re.sub(rb"<ds:SignatureValue>[^<]*", b"<ds:SignatureValue>@@@", signed)).code == \
        "signature.malformed"
    for bad in (b"", b"   ", b"<unclosed", b"\x00\x01", b'<!DOCTYPE r [<!ENTITY x "y">]><r>&x;</r>'):
        result = verify(bad)
        assert isinstance(result, VerifyResult) and not result.ok and result.code == "signature.malformed"


def test_key_name_must_match_the_certificate() -> None:
    signed = sign_xml(UNSIGNED, rsa_key())
    key_name = rsa_key().key_name.encode()
    result = verify(replace_once(signed, b"<ds:KeyName>" + key_name, b"<ds:KeyName>01" + key_name))
    assert result.code == "signature.key_name_mismatch"
    assert verify(replace_once(signed, b"<ds:KeyName>" + key_name, b"<ds:KeyName>zz")).code == \
        "signature.key_name_mismatch"


def test_certificate_pinning() -> None:
    signed = sign_xml(UNSIGNED, rsa_key())
    rsa_cert, sm2_cert = (DATA / "test-only-rsa-cert.pem").read_bytes(), (DATA / "test-only-sm2-cert.pem").read_bytes()
    assert verify(signed, trusted_certs=[rsa_cert]).ok
    assert verify(signed, trusted_certs=[sm2_cert, rsa_key().certificate_der]).ok  # PEM and DER both accepted
    assert verify(signed, trusted_certs=[sm2_cert]).code == "signature.untrusted_certificate"
    assert verify(signed, trusted_certs=[]).code == "signature.untrusted_certificate"
    assert verify(signed, trusted_certs=[b"garbage"]).code == "signature.untrusted_certificate"



@pytest.mark.parametrize("make", [rsa_key, sm2_key], ids=["rsa", "sm2"])
def test_a_certificate_outside_its_validity_fails(make: Callable[[], signing.SignatureBackend]) -> None:
    """Customs refuses a signature made with an expired certificate (DXP 1002): verify says so, with the date, at the
    certificate, rather than pass it on to be refused."""
    backend = make()
    signed = sign_xml(UNSIGNED, backend)
    since, until = signing.certificate_validity(backend.certificate_der)
    assert (since, until) == (datetime(2026, 11, 21, 0, 9, 8, tzinfo=UTC), datetime(2051, 7, 13, 0, 9, 8, tzinfo=UTC))
    assert verify(signed, at=until).ok and verify(signed, at=since).ok
    late = verify(signed, at=until + timedelta(seconds=1))
    assert (late.code, late.path) == ("signature.certificate_expired",
                                      "/CEB621Message/Signature/KeyInfo/X509Data/X509Certificate")  # fmt: skip
    assert "valid until 2051-07-13 00:09:08 UTC" in late.reason
    early = verify(signed, at=since - timedelta(days=1))
    assert early.code == "signature.certificate_not_yet_valid" and "valid from 2026-11-21" in early.reason
    # a pinned certificate found by KeyName alone is held to its dates too
    without = re.sub(rb"<ds:X509Data>.*</ds:X509Data>", b"", signed, flags=re.S)
    pinned = verify(without, trusted_certs=[backend.certificate_der], at=until + timedelta(days=1))
    assert (pinned.code, pinned.path) == ("signature.certificate_expired", "/CEB621Message/Signature/KeyInfo")


def test_the_gateway_says_when_its_own_signing_certificate_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cbec serve's signer of JSON declarations: an expired certificate is an error in the log at start, one expiring
    within 30 days a warning; the signer knows its date (/metrics shows it)."""
    import structlog
    from structlog.testing import capture_logs

    from gateway import server
    from gateway.config import Settings

    def configured(days: int) -> tuple[Settings, datetime]:
        key_pem, cert_pem = signing.generate_test_key("rsa", f"agent {days}", days=days)
        (tmp_path / f"key{days}.pem").write_bytes(key_pem)
        (tmp_path / f"cert{days}.pem").write_bytes(cert_pem)
        return (Settings(signing_key_file=tmp_path / f"key{days}.pem", signing_cert_file=tmp_path / f"cert{days}.pem"),
                signing.certificate_validity(cert_pem)[1])  # fmt: skip

    for days, event, level in ((0, "signing_certificate_expired", "error"),
                               (10, "signing_certificate_expires_soon", "warning"), (400, None, None)):  # fmt: skip
        settings, until = configured(days)
        with capture_logs() as logged:
            # a fresh logger: the module's may have been bound and cached by an earlier test's configuration, which
            # capture_logs does not reach
            monkeypatch.setattr(server, "log", structlog.get_logger("gateway.server"))
            signer = server.Signatures.from_settings(settings).signer
        assert signer.valid_until == until
        found = [(r["event"], r["log_level"]) for r in logged if r["event"].startswith("signing_certificate")]
        assert found == ([(event, level)] if event else []), logged
    root = parse(UNSIGNED)
    signer(root)  # valid for 400 days: signs
    assert verify(root).ok


@pytest.mark.parametrize("make", [rsa_key, sm2_key], ids=["rsa", "sm2"])
def test_the_gateways_signer_refuses_outside_its_certificates_validity(
    make: Callable[[], signing.SignatureBackend],
) -> None:
    """A signature customs would refuse (DXP 1002) is not made: outside its certificate's dates the signer raises
    SigningUnavailable, naming the date, and leaves the message unsigned."""
    signer = signing.Signer(make())
    since, until = signing.certificate_validity(signer.backend.certificate_der)
    assert (signer.valid_from, signer.valid_until) == (since, until)
    assert signer.refusal(since) is None and signer.refusal(until) is None
    late = signer.refusal(until + timedelta(seconds=1))
    assert late is not None and late.code == "signing.certificate_expired"
    assert f"({signer.backend.key_name}) expired at 2051-07-13 00:09:08 UTC" in late.message
    early = signer.refusal(since - timedelta(days=1))
    assert early is not None and early.code == "signing.certificate_not_yet_valid"
    assert "valid from 2026-11-21 00:09:08 UTC" in early.message

    expired = signing.Signer(RsaSha1Key.from_pem(*signing.generate_test_key("rsa", "expired agent", days=0)))
    root = parse(UNSIGNED)
    with pytest.raises(signing.SigningUnavailable) as refused:
        expired(root)
    assert refused.value.code == "signing.certificate_expired"
    assert root.find(f"{{{DS_NS}}}Signature") is None

def test_certificate_can_come_from_the_trusted_list_by_key_name() -> None:
    signed = sign_xml(UNSIGNED, sm2_key())
    without = re.sub(rb"<ds:X509Data>.*</ds:X509Data>", b"", signed, flags=re.S)
    assert verify(without).code == "signature.no_certificate"
    assert verify(without, trusted_certs=[(DATA / "test-only-rsa-cert.pem").read_bytes()]).code == \
        "signature.no_certificate"
    result = verify(without, trusted_certs=[(DATA / "test-only-sm2-cert.pem").read_bytes()])
    assert result.ok, result


def test_bad_and_mismatched_certificates() -> None:
    signed = sign_xml(UNSIGNED, sm2_key())
    cert_b64 = re.search(rb"<ds:X509Certificate>([^<]+)<", signed).group(1)  # type: ignore[union-attr]
    junk = base64.b64encode(b"not a certificate")
    assert verify(replace_once(signed, cert_b64, junk)).code == "signature.bad_certificate"
    # an RSA certificate under an sm2-sm3 SignatureMethod (KeyName adjusted so only the algorithm differs)
    rsa = rsa_key()
    swapped = replace_once(signed, cert_b64, base64.b64encode(rsa.certificate_der))
    swapped = replace_once(swapped, f"<ds:KeyName>{sm2_key().key_name}".encode(),
                           f"<ds:KeyName>{rsa.key_name}".encode())
    assert verify(swapped).code == "signature.algorithm_key_mismatch"
    # a P-256 certificate is an EC key, but not SM2
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    p256 = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p256")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(p256.public_key())
            .serial_number(5).not_valid_before(x509.load_der_x509_certificate(rsa.certificate_der).not_valid_before_utc)
            .not_valid_after(x509.load_der_x509_certificate(rsa.certificate_der).not_valid_after_utc)
            .sign(p256, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    p256_b64 = base64.b64encode(cert.public_bytes(Encoding.DER))
    assert verify(replace_once(signed, cert_b64, p256_b64)).code == "signature.bad_certificate"


def test_sm2_signature_encodings_and_ranges() -> None:
    r, s = 0x1234, signing._N - 1
    der = signing._der_seq(signing._der_int(r), signing._der_int(s))
    assert signing._sm2_decode_signature(der) == (r, s)
    assert signing._sm2_decode_signature(r.to_bytes(32, "big") + s.to_bytes(32, "big")) == (r, s)
    assert signing._sm2_decode_signature(b"\x30\x02\x02\x00") is None
    point = signing._read_certificate(sm2_key().certificate_der).sm2_point
    assert point is not None
    for bad_r, bad_s in [(0, 1), (1, 0), (signing._N, 1), (1, signing._N), (1, signing._N - 1)]:
        assert not signing._sm2_verify(point, signing.SM2_DEFAULT_USER_ID, b"m", bad_r, bad_s)


def test_every_code_is_documented() -> None:
    assert all(code.startswith(("signature.", "signing.")) and text for code, text in CODES.items())
    seen = {verify(UNSIGNED).code, verify(b"").code}
    assert seen <= set(CODES)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_verify_never_raises_on_mutated_input(data: st.DataObject) -> None:
    signed = GOLDEN_RSA
    position = data.draw(st.integers(0, len(signed) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = signed[:position] + bytes([byte]) + signed[position + 1 :]
    result = verify(mutated)
    assert isinstance(result, VerifyResult)
    assert result.ok == (result.code is None)
    if not result.ok:
        assert result.code in CODES



# --- interoperability ------------------------------------------------------------------------------


def _openssl_with_sm2() -> str | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run([exe, "list", "-public-key-algorithms"], capture_output=True, text=True, timeout=20)
    return exe if "sm2" in out.stdout.lower() else None


OPENSSL = _openssl_with_sm2()
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command with SM2")


def _signed_info_and_value(signed: bytes) -> tuple[bytes, bytes]:
    root = parse(signed)
    info = root.find(f"{DS}Signature/{DS}SignedInfo")
    assert info is not None
    value = base64.b64decode(root.findtext(f"{DS}Signature/{DS}SignatureValue") or "")
    return c14n(info), value


@needs_openssl
def test_openssl_verifies_our_sm2_signature(tmp_path: Path) -> None:
    assert OPENSSL is not None
    octets, value = _signed_info_and_value((DATA / "ceb621-signed-sm2-sm3.xml").read_bytes())
    (tmp_path / "si").write_bytes(octets)
    (tmp_path / "sig").write_bytes(value)
    pub = subprocess.run([OPENSSL, "x509", "-in", str(DATA / "test-only-sm2-cert.pem"), "-pubkey", "-noout"],
                         capture_output=True, check=True, timeout=20).stdout
    (tmp_path / "pub").write_bytes(pub)
    cmd = [OPENSSL, "dgst", "-sm3", "-verify", str(tmp_path / "pub"), "-sigopt", "distid:1234567812345678",
           "-signature", str(tmp_path / "sig"), str(tmp_path / "si")]
    assert subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    # and the same check fails with another user id, so the id really is part of what was signed
    cmd[cmd.index("distid:1234567812345678")] = "distid:1234567812345679"
    assert subprocess.run(cmd, capture_output=True, timeout=20).returncode != 0


@needs_openssl
def test_we_verify_an_openssl_sm2_signature(tmp_path: Path) -> None:
    assert OPENSSL is not None
    key_file = DATA / "test-only-sm2-key.pem"

    def openssl_sign(octets: bytes) -> bytes:
        (tmp_path / "si").write_bytes(octets)
        subprocess.run([OPENSSL, "dgst", "-sm3", "-sign", str(key_file), "-sigopt", "distid:1234567812345678",
                        "-out", str(tmp_path / "sig"), str(tmp_path / "si")], check=True, capture_output=True,
                       timeout=20)
        return (tmp_path / "sig").read_bytes()

    bridge = ExternalKey((DATA / "test-only-sm2-cert.pem").read_bytes(), openssl_sign)
    signed = sign_xml(UNSIGNED, bridge)
    assert verify(signed).ok


@needs_openssl
def test_openssl_reads_our_sm2_key_and_certificate(tmp_path: Path) -> None:
    assert OPENSSL is not None
    serial = subprocess.run([OPENSSL, "x509", "-in", str(DATA / "test-only-sm2-cert.pem"), "-noout", "-serial"],
                            capture_output=True, text=True, check=True, timeout=20).stdout
    assert serial.strip().lower() == f"serial={sm2_key().key_name}"
    from_key = subprocess.run([OPENSSL, "pkey", "-in", str(DATA / "test-only-sm2-key.pem"), "-pubout"],
                              capture_output=True, check=True, timeout=20).stdout
    from_cert = subprocess.run([OPENSSL, "x509", "-in", str(DATA / "test-only-sm2-cert.pem"), "-pubkey", "-noout"],
                               capture_output=True, check=True, timeout=20).stdout
    assert from_key == from_cert
    # a key OpenSSL generated loads here and signs verifiably
    subprocess.run([OPENSSL, "genpkey", "-algorithm", "SM2", "-out", str(tmp_path / "k.pem")], check=True,
                   capture_output=True, timeout=20)
    subprocess.run([OPENSSL, "req", "-x509", "-new", "-key", str(tmp_path / "k.pem"), "-sm3", "-subj", "/CN=t",
                    "-days", "2", "-sigopt", "distid:1234567812345678", "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True, timeout=20)
    key = Sm2Sm3Key.from_files(tmp_path / "k.pem", tmp_path / "c.pem")
    assert verify(sign_xml(UNSIGNED, key)).ok


def _xmlsec():  # type: ignore[no-untyped-def]
    try:
        import xmlsec
    except Exception:  # ImportError, or xmlsec's libxml2-version mismatch with lxml
        pytest.skip("python-xmlsec not usable here")
    return xmlsec


def test_xmlsec_verifies_our_rsa_signature() -> None:
    xmlsec = _xmlsec()
    root = parse(GOLDEN_RSA)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory((DATA / "test-only-rsa-cert.pem").read_bytes(),
                                     xmlsec.constants.KeyDataFormatCertPem)
    ctx.verify(xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature))  # raises on failure
    root.find(f"{CEB}BaseTransfer/{CEB}copCode").text = "X"
    with pytest.raises(xmlsec.Error):
        ctx.verify(xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature))


def test_we_verify_an_xmlsec_rsa_signature() -> None:
    xmlsec = _xmlsec()
    root = parse(UNSIGNED)
    sig = xmlsec.template.create(root, xmlsec.constants.TransformInclC14N, xmlsec.constants.TransformRsaSha1, ns="ds")
    root.append(sig)
    ref = xmlsec.template.add_reference(sig, xmlsec.constants.TransformSha1, uri="")
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    key_info = xmlsec.template.ensure_key_info(sig)
    xmlsec.template.add_key_name(key_info)
    xmlsec.template.add_x509_data(key_info)
    key = xmlsec.Key.from_memory((DATA / "test-only-rsa-key.pem").read_bytes(), xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_memory((DATA / "test-only-rsa-cert.pem").read_bytes(), xmlsec.constants.KeyDataFormatCertPem)
    key.name = rsa_key().key_name
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    ctx.sign(sig)
    signed = etree.tostring(root)
    assert b"\n" in signed.split(b"<ds:SignatureValue>")[1].split(b"</ds:SignatureValue>")[0]  # xmlsec wraps base64
    result = verify(signed)
    assert result.ok, result
    assert verify(signed.replace(b"DXPENT0000000001", b"DXPENT0000000002")).code == "signature.digest_mismatch"


# --- verification at ingest (Pipeline, cbec validate) ---------------------------------------------------


def test_the_pipeline_verifies_signatures_when_asked_and_pins_to_trusted_certificates(tmp_path: Path) -> None:
    from gateway.pipeline import Pipeline
    from gateway.schema import SchemaSet

    schemas = SchemaSet()
    tampered = GOLDEN_RSA.replace(b"</ceb:buyerName>", b"X</ceb:buyerName>", 1)
    assert tampered != GOLDEN_RSA
    assert Pipeline(schemas).check(tampered).message.signed  # off by default: presence only
    verifying = Pipeline(schemas, verify_signatures=True)
    verifying.check(GOLDEN_RSA)
    with pytest.raises(MessageRejected) as exc:
        verifying.check(tampered)
    [issue] = exc.value.issues
    assert (issue.code, issue.path) == ("signature.digest_mismatch", "/CEB621Message/Signature/SignedInfo/Reference/"
                                        "DigestValue")  # fmt: skip
    # pinned: the RSA and SM2 test certificates as one bundle file and as a folder
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes((DATA / "test-only-rsa-cert.pem").read_bytes() + (DATA / "test-only-sm2-cert.pem").read_bytes())
    folder = tmp_path / "certs"
    folder.mkdir()
    shutil.copy(DATA / "test-only-sm2-cert.pem", folder / "sm2.pem")
    assert len(signing.read_certificates(bundle)) == 2 and len(signing.read_certificates(folder)) == 1
    Pipeline(schemas, verify_signatures=True, trusted_certs=signing.read_certificates(bundle)).check(GOLDEN_RSA)
    pinned = Pipeline(schemas, verify_signatures=True, trusted_certs=signing.read_certificates(folder))
    pinned.check((DATA / "ceb621-signed-sm2-sm3.xml").read_bytes())
    with pytest.raises(MessageRejected) as exc:
        pinned.check(GOLDEN_RSA)
    assert exc.value.issues[0].code == "signature.untrusted_certificate"
    (tmp_path / "empty").mkdir()
    for unusable in (tmp_path / "empty", DATA / "test-only-rsa-key.pem"):
        with pytest.raises(ValueError):
            signing.read_certificates(unusable)


def test_cbec_validate_verifies_signatures_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.cli import main

    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(GOLDEN_RSA.replace(b"</ceb:buyerName>", b"X</ceb:buyerName>", 1))
    assert main(["validate", str(tampered)]) == 0
    capsys.readouterr()
    assert main(["validate", "--json", "--verify-signatures", str(tampered)]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert [e["code"] for e in result["errors"]] == ["signature.digest_mismatch"]
    rsa_signed = str(DATA / "ceb621-signed-rsa-sha1.xml")
    assert main(["validate", "--trusted-certs", str(DATA / "test-only-sm2-cert.pem"), rsa_signed]) == 1
    assert "signature.untrusted_certificate" in capsys.readouterr().out
    assert main(["validate", "--trusted-certs", str(tmp_path / "none.pem"), str(tampered)]) == 2
