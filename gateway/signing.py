"""XML digital signature of CEB messages (spec §9): enveloped XML-DSig with RSA-SHA1 or SM2-SM3.

What is signed
    The whole message. ``ds:Signature`` sits inside the CEB root; its one ``Reference`` has ``URI=""``
    and the enveloped-signature transform, so the digest covers the inclusive C14N 1.0 (without
    comments) of the document *without* the Signature element — BaseTransfer and BaseSubscribe
    included. ``SignedInfo`` is canonicalised the same way *in its place in the document* (inclusive
    C14N renders every namespace in scope, e.g. ``xmlns:ceb`` and ``xmlns:xsi`` of the root) and that
    octet string is what the key signs. Any change after signing — pretty-printing, re-prefixing,
    reordering — breaks the signature, so sign last and send the bytes as they are.

Algorithms (URIs of the 2022 spec)
    * RSA-SHA1 ``http://www.w3.org/2000/09/xmldsig#rsa-sha1`` with digest ``…#sha1``: PKCS#1 v1.5,
      deterministic (the golden test relies on it), through ``cryptography``.
    * SM2-SM3 ``http://www.chinaport.gov.cn/2022/04/xmldsig#sm2-sm3`` with digest
      ``http://www.chinaport.gov.cn/2022/04/xmldsig#sm3``. SM3 comes from ``cryptography``
      (``hashes.SM3``); ``cryptography`` 50 has no SM2 curve, so the SM2 signature (GB/T 32918.2,
      GM/T 0003.2) is computed here on Python integers — see "SM2" below.
    * Verification also accepts RSA-SHA256/SHA-256 and the ``http://www.w3.org/2000/09/xmldsig#sm2-sm3``
      URI one public signer emits (spec §9, §13.5), so messages signed by others can be checked.

KeyInfo
    ``KeyName`` = the certificate serial number in lower-case hex, padded to whole bytes
    (``01691fe9``, ``03000000000cde6f`` as in the spec's examples) and ``X509Data/X509Certificate`` =
    base64 DER. Base64 values are written on one line; whitespace inside them is ignored on reading.

Position (spec §2.2)
    Import messages: the last child of the root (after BaseTransfer/BaseSubscribe/ExtendMessage).
    Export messages: before ``ExtendMessage`` (the export XSD puts Signature before it). The flow
    comes from the message-type registry (``MessageType.flow``) unless the caller names it.

SM2
    * User id (ZA): ``1234567812345678``, the default distinguishing identifier of GM/T 0009-2012
      §10 ("SM2密码算法使用规范"). Checked against public sources: the Linux kernel and OpenSSL
      define ``SM2_DEFAULT_USERID "1234567812345678"`` with a comment citing GM/T 0009-2012; Go and
      Rust SM2 libraries and BouncyCastle's SM3withSM2 use the same default, and the public CEB
      signers sign with SM3withSM2 without setting an id, i.e. with this default. ZA =
      SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) and e = SM3(ZA ‖ M) with M = canonical SignedInfo.
      ``Sm2Sm3Key(user_id=...)`` and ``verify(sm2_user_id=...)`` change it if customs ever asks.
    * Signature value: DER ``SEQUENCE { r INTEGER, s INTEGER }`` (GM/T 0009 §7.3; what JCE
      ``SM3withSM2`` providers — the server-crypto-device signers — return). Some UKeys return
      the raw 64-byte ``r ‖ s``; ``Sm2Sm3Key(signature_format="raw")`` writes that, and ``verify``
      accepts both (strict DER first, then 64 raw bytes).
    * Keys are PKCS#8 ``PRIVATE KEY`` (id-ecPublicKey + curve 1.2.156.10197.1.301, as OpenSSL writes)
      or SEC1 ``EC PRIVATE KEY``; certificates are ordinary X.509 v3 with an SM2 key. ``cryptography``
      can read such certificates (serial, names) but not their key, so the SubjectPublicKeyInfo is
      read here. ``generate_test_key("sm2", ...)`` builds a real self-signed SM2 certificate
      (signature sm2sign-with-sm3, 1.2.156.10197.1.501, default user id) with a small DER writer.
      OpenSSL 3 reads it; note that OpenSSL 3.0's certificate verification defaults to an *empty*
      SM2 id, so ``openssl verify -check_ss_sig`` rejects any certificate signed with the GM/T 0009
      id (its own ``req -sigopt distid:1234567812345678`` ones too) — the tests check the
      self-signature with ``openssl dgst -sm3 -sigopt distid:...`` instead.
    * Why not ``gmssl`` (pure Python, PyPI): 3.2.2 draws the SM2 nonce from ``random.choice`` (not
      a CSPRNG — a predictable nonce leaks the private key), strips the ``04`` prefix of public keys
      with ``str.lstrip("04")`` (corrupting keys whose x starts with 0 or 4), does not range-check
      r and s, hard-codes the user id, needs pycryptodomex, and is slower (about 5 ms to sign and
      9 ms to verify, against about 1 and 2 ms here). The arithmetic here is short, follows the
      standard, and is tested against OpenSSL's independent SM2 in both directions.
    * Pure-Python arithmetic is not constant-time. Verification uses public data only; for
      production signing keep SM2 keys in a UKey or a server crypto device (the backends below).

Pluggable signers (UKey / HSM)
    :class:`SignatureBackend` is all :func:`sign` needs: the two URIs, the certificate, a digest
    function and ``sign_bytes(signed_info_c14n) -> raw signature value``. :class:`RsaSha1Key` and
    :class:`Sm2Sm3Key` hold software keys; :class:`ExternalKey` wraps any callable, which is how a
    UKey or HSM plugs in. The E-Port UKey is driven through the card/key client control's local
    WebSocket service on the operator's PC (public signers: a JSON handshake with ``_method: "open"``,
    then ``{"_id": n, "_method": "cus-sec_SpcSignDataAsPEM", "args": {"inData": <text>, "passwd": <PIN>}}``
    answered by ``{"_id": n, "_status": "00", "_args": {"Result": true, "Data": [<base64 value>, <cert
    no>], "Error": []}}``; ``cus-sec_SpcGetSignCertAsPEM`` returns the certificate). A bridge for it
    is a backend whose ``sign_bytes``

    1. sends the canonical SignedInfo octets, as UTF-8 text, as ``inData`` (or posts them to an
       in-house signing service, e.g. ``POST http://127.0.0.1:<port>/sign`` ``{"data": ...}``);
    2. checks ``Result`` and returns the base64 value *decoded* (raw bytes: PKCS#1 v1.5 for RSA,
       DER or 64-byte r‖s for SM2), raising on an error so that nothing half-signed is sent;
    3. was built once with the certificate from the same service; ``key_name`` follows from its
       serial (the service's "cert no" should equal it).

    :class:`ExternalKey` is such a backend around any ``Callable[[bytes], bytes]``. The call is
    blocking I/O and a UKey signs about 250 messages a minute (spec §8.3): run :func:`sign` in a
    worker thread, or use the two halves :func:`prepare` (inserts the Signature, returns the octets
    to sign) and :meth:`PreparedSignature.finish` (writes the value) around an
    ``await`` on the bridge. No network code lives in this module.

Verification never raises on bad input: :func:`verify` returns a :class:`VerifyResult` whose
``code`` is one of :data:`CODES`. It checks the structure, the algorithms, the digest, the
KeyName against the embedded certificate, optional pinning (``trusted_certs``) and the signature
value. It does not build certificate chains or check validity dates (customs does that).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID
from lxml import etree

from gateway.messages import CEB_NS, DS_NS, lookup
from gateway.xmlsafe import parse_xml

# --- algorithm identifiers ---------------------------------------------------------------------

C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_WITH_COMMENTS = C14N + "#WithComments"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SM2_SM3 = "http://www.chinaport.gov.cn/2022/04/xmldsig#sm2-sm3"
SM3 = "http://www.chinaport.gov.cn/2022/04/xmldsig#sm3"
# Accepted when verifying only: RSA-SHA256 (2018 spec option) and the non-official SM2 URI (spec §13.5).
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SM2_SM3_W3C = "http://www.w3.org/2000/09/xmldsig#sm2-sm3"

#: GM/T 0009-2012 default SM2 distinguishing identifier (user id) for the ZA computation.
SM2_DEFAULT_USER_ID = b"1234567812345678"

CODES: dict[str, str] = {
    "signature.missing": "the message has no ds:Signature element under its root",
    "signature.multiple": "the message root carries more than one ds:Signature element",
    "signature.malformed": "the document or its ds:Signature cannot be read: not well-formed XML, a required "
    "Signature part (SignedInfo, Reference, DigestValue, SignatureValue) missing, or a value that is not base64",
    "signature.unsupported_algorithm": "CanonicalizationMethod, SignatureMethod or DigestMethod is not one the "
    "gateway supports (inclusive C14N 1.0; rsa-sha1, sm2-sm3; sha1, sm3; rsa-sha256 and sha256 on verify)",
    "signature.unsupported_reference": "the Reference is not URI=\"\" with the enveloped-signature transform "
    "(optionally followed by inclusive C14N)",
    "signature.digest_mismatch": "DigestValue does not match the canonicalised message: the message was changed "
    "after signing (any byte of BaseTransfer, the documents, even pretty-printing)",
    "signature.no_certificate": "KeyInfo carries no X509Certificate and no trusted certificate matches its KeyName",
    "signature.bad_certificate": "the X509Certificate cannot be read or holds a key that is neither RSA nor SM2",
    "signature.untrusted_certificate": "the signing certificate is not one of the trusted (pinned) certificates",
    "signature.key_name_mismatch": "KeyName is not the serial number (hex) of the certificate in KeyInfo",
    "signature.algorithm_key_mismatch": "SignatureMethod does not fit the certificate's key (e.g. sm2-sm3 with an "
    "RSA certificate)",
    "signature.bad_value": "SignatureValue does not verify against SignedInfo with the certificate's public key",
    "signature.certificate_expired": "the signing certificate's validity ended (notAfter) before the message came: "
    "customs refuses such a signature (DXP 1002, signature expired)",
    "signature.certificate_not_yet_valid": "the signing certificate's validity begins (notBefore) after the message "
    "came",
    "signing.certificate_expired": "a JSON declaration the gateway signs (CEB621; CEB603, 605, 507, 509, 607, 701 "
    "when declared) came after the certificate of the gateway's own signing key expired: not signed, not stored "
    "(HTTP 503); customs would refuse the signature (DXP 1002). The zone's operators install the renewed key "
    "(SIGHUP), then the sender sends it again",
    "signing.certificate_not_yet_valid": "as signing.certificate_expired, before the certificate's validity begins "
    "(notBefore)",
    "signing.ukey_unreachable": "a JSON declaration the gateway signs came while the E-Port client control of the UKey "
    "holding its key (signing_ukey_url) did not answer (the PC off, the control not running): not signed, not stored "
    "(HTTP 503, Retry-After); send it again",
    "signing.ukey_busy": "as signing.ukey_unreachable, when so many JSON declarations are waiting for the UKey "
    "already (32, about ten seconds of a card's signing) that this one would wait longer than its sender: not stored "
    "(HTTP 503, Retry-After); send it again in a moment",
    "signing.ukey_refused": "the UKey holding the gateway's key refused to sign (a wrong PIN, no card in the reader): "
    "not signed, not stored (HTTP 503); nothing more is sent to the card until the operators reload the configuration "
    "(SIGHUP) — a wrong PIN tried again and again would lock the card",
    "signing.ukey_bad_signature": "the UKey holding the gateway's key answered a signature that does not verify with "
    "the certificate it gives (or names another certificate twice), or holds an SM2 key while signing_ukey_method asks "
    "it for a SHA-1 digest's signature: not stored (HTTP 503); customs would refuse it",
}

_DS = f"{{{DS_NS}}}"
_WS = re.compile(r"\s+")


# --- the backend interface ---------------------------------------------------------------------


class SignatureBackend(Protocol):
    """What :func:`sign` needs from a key, wherever the key lives (file, UKey, HSM)."""

    algorithm: str  # SignatureMethod URI
    digest: str  # DigestMethod URI
    key_name: str  # certificate serial, lower-case hex
    certificate_der: bytes

    def digest_bytes(self, data: bytes) -> bytes:
        """Digest of the canonical document (the Reference's DigestValue, raw bytes)."""
        ...

    def sign_bytes(self, signed_info_c14n: bytes) -> bytes:
        """Raw signature value over the canonical SignedInfo — what a UKey or HSM returns."""
        ...


def _digest_function(uri: str) -> Callable[[bytes], bytes] | None:
    if uri == SHA1:
        return lambda data: hashlib.sha1(data).digest()
    if uri == SHA256:
        return lambda data: hashlib.sha256(data).digest()
    if uri == SM3:
        return sm3_digest
    return None


def sm3_digest(data: bytes) -> bytes:
    """SM3 (GB/T 32905) of ``data``, 32 bytes."""
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def key_name_for(serial: int) -> str:
    """KeyName of a certificate: its serial in lower-case hex, padded to whole bytes."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


class RsaSha1Key(SignatureBackend):
    """A software RSA key with its certificate; signs RSA-SHA1 (PKCS#1 v1.5, deterministic)."""

    algorithm = RSA_SHA1
    digest = SHA1

    def __init__(self, private_key: rsa.RSAPrivateKey, certificate_der: bytes) -> None:
        cert = _read_certificate(certificate_der)
        if cert.rsa_key is None:
            raise ValueError("the certificate does not hold an RSA public key")
        if cert.rsa_key.public_numbers() != private_key.public_key().public_numbers():
            raise ValueError("the private key does not belong to the certificate")
        self._key = private_key
        self.certificate_der = certificate_der
        self.key_name = key_name_for(cert.serial)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, password: bytes | None = None) -> RsaSha1Key:
        key = serialization.load_pem_private_key(key_pem, password=password)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return cls(key, certificate_to_der(cert_pem))

    @classmethod
    def from_files(cls, key_path: str | Path, cert_path: str | Path, password: bytes | None = None) -> RsaSha1Key:
        return cls.from_pem(Path(key_path).read_bytes(), Path(cert_path).read_bytes(), password)

    def digest_bytes(self, data: bytes) -> bytes:
        return hashlib.sha1(data).digest()

    def sign_bytes(self, signed_info_c14n: bytes) -> bytes:
        return self._key.sign(signed_info_c14n, padding.PKCS1v15(), hashes.SHA1())

    def sign_sha1_digest(self, digest: bytes) -> bytes:
        """The signature :meth:`sign_bytes` makes of the text whose SHA-1 ``digest`` this is (how a card signs a digest
        made elsewhere: gateway.sandbox.ukey)."""
        return self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA1()))


class Sm2Sm3Key(SignatureBackend):
    """A software SM2 key with its certificate; signs SM2-SM3 (randomised, so never byte-identical twice)."""

    algorithm = SM2_SM3
    digest = SM3

    def __init__(
        self,
        private_value: int,
        certificate_der: bytes,
        *,
        user_id: bytes = SM2_DEFAULT_USER_ID,
        signature_format: Literal["der", "raw"] = "der",
    ) -> None:
        if not 1 <= private_value <= _N - 2:
            raise ValueError("SM2 private key out of range")
        cert = _read_certificate(certificate_der)
        if cert.sm2_point is None:
            raise ValueError("the certificate does not hold an SM2 public key")
        if _sm2_public_point(private_value) != cert.sm2_point:
            raise ValueError("the private key does not belong to the certificate")
        if signature_format not in ("der", "raw"):
            raise ValueError("signature_format is 'der' or 'raw'")
        self._d = private_value
        self._public = cert.sm2_point
        self.user_id = user_id
        self.signature_format = signature_format
        self.certificate_der = certificate_der
        self.key_name = key_name_for(cert.serial)

    @classmethod
    def from_pem(
        cls,
        key_pem: bytes,
        cert_pem: bytes,
        *,
        user_id: bytes = SM2_DEFAULT_USER_ID,
        signature_format: Literal["der", "raw"] = "der",
    ) -> Sm2Sm3Key:
        return cls(_sm2_private_from_pem(key_pem), certificate_to_der(cert_pem),
                   user_id=user_id, signature_format=signature_format)

    @classmethod
    def from_files(
        cls,
        key_path: str | Path,
        cert_path: str | Path,
        *,
        user_id: bytes = SM2_DEFAULT_USER_ID,
        signature_format: Literal["der", "raw"] = "der",
    ) -> Sm2Sm3Key:
        return cls.from_pem(Path(key_path).read_bytes(), Path(cert_path).read_bytes(),
                            user_id=user_id, signature_format=signature_format)

    def digest_bytes(self, data: bytes) -> bytes:
        return sm3_digest(data)

    def sign_bytes(self, signed_info_c14n: bytes) -> bytes:
        r, s = _sm2_sign(self._d, self._public, self.user_id, signed_info_c14n)
        if self.signature_format == "raw":
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return _der_seq(_der_int(r), _der_int(s))


class ExternalKey(SignatureBackend):
    """A key that lives elsewhere (UKey bridge, HSM, signing service): ``sign`` gets the canonical
    SignedInfo and returns the raw signature value. Digests are computed here.

    The algorithm follows from the certificate (RSA → rsa-sha1, SM2 → sm2-sm3) unless given.
    """

    def __init__(self, certificate: bytes, sign: Callable[[bytes], bytes], *, algorithm: str | None = None) -> None:
        der = certificate_to_der(certificate)
        cert = _read_certificate(der)
        algorithm = algorithm or certificate_algorithm(der)
        if algorithm not in (RSA_SHA1, SM2_SM3):
            raise ValueError(f"unsupported signature algorithm {algorithm}")
        self.algorithm = algorithm
        self.digest = SM3 if algorithm == SM2_SM3 else SHA1
        self.certificate_der = der
        self.key_name = key_name_for(cert.serial)
        self._sign = sign

    def digest_bytes(self, data: bytes) -> bytes:
        return sm3_digest(data) if self.digest == SM3 else hashlib.sha1(data).digest()

    def sign_bytes(self, signed_info_c14n: bytes) -> bytes:
        return self._sign(signed_info_c14n)


# --- signing -------------------------------------------------------------------------------------


def _c14n(node: etree._Element | etree._ElementTree, with_comments: bool = False) -> bytes:
    # lxml's default for method="c14n" keeps comments; the spec's algorithm drops them.
    return etree.tostring(node, method="c14n", exclusive=False, with_comments=with_comments)


def _flow_of(root: etree._Element, flow: str | None) -> str:
    if flow is None:
        mtype = lookup(root.tag) if isinstance(root.tag, str) else None
        flow = mtype.flow if mtype is not None else "import"
    if flow not in ("import", "export"):
        raise ValueError(f"flow is 'import' or 'export', not {flow!r}")
    return flow


def insert_position(root: etree._Element, flow: str = "import") -> int:
    """Index among the root's children where ds:Signature belongs (spec §2.2).

    Import: after everything (the last child). Export: just before ``ExtendMessage``, or last when
    there is none. Existing Signature elements should be removed first (:func:`sign` does).
    """
    if flow not in ("import", "export"):
        raise ValueError(f"flow is 'import' or 'export', not {flow!r}")
    if flow == "export":
        for i, child in enumerate(root):
            if child.tag == f"{{{CEB_NS}}}ExtendMessage":
                return i
    return len(root)


def _signature_children(root: etree._Element) -> list[etree._Element]:
    return [c for c in root if c.tag == _DS + "Signature"]


def _remove_keep_text(el: etree._Element) -> None:
    """Remove an element, keeping the layout: its tail replaces the whitespace before it."""
    parent = el.getparent()
    assert parent is not None
    prev = el.getprevious()
    tail = el.tail
    if prev is not None:
        before = prev.tail
        prev.tail = tail if (before is None or before.isspace()) and (tail is None or tail.isspace()) \
            else (before or "") + (tail or "")
    else:
        before = parent.text
        parent.text = tail if (before is None or before.isspace()) and (tail is None or tail.isspace()) \
            else (before or "") + (tail or "")
    parent.remove(el)


def _insert_signature(root: etree._Element, sig: etree._Element, index: int) -> None:
    """Insert at ``index`` and follow the document's indentation, if it has any."""
    if index >= len(root):
        last = root[-1] if len(root) else None
        if last is not None and last.tail is not None and last.tail.isspace():
            indent = root.text if root.text is not None and root.text.isspace() else last.tail
            sig.tail, last.tail = last.tail, indent
        root.append(sig)
    else:
        prev = root[index - 1] if index > 0 else None
        space = prev.tail if prev is not None else root.text
        if space is not None and space.isspace():
            sig.tail = space
        root.insert(index, sig)


def _build_signature(backend: SignatureBackend) -> etree._Element:
    sig = etree.Element(_DS + "Signature", nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(sig, _DS + "SignedInfo")
    etree.SubElement(signed_info, _DS + "CanonicalizationMethod", Algorithm=C14N)
    etree.SubElement(signed_info, _DS + "SignatureMethod", Algorithm=backend.algorithm)
    reference = etree.SubElement(signed_info, _DS + "Reference", URI="")
    transforms = etree.SubElement(reference, _DS + "Transforms")
    etree.SubElement(transforms, _DS + "Transform", Algorithm=ENVELOPED)
    etree.SubElement(reference, _DS + "DigestMethod", Algorithm=backend.digest)
    etree.SubElement(reference, _DS + "DigestValue")
    etree.SubElement(sig, _DS + "SignatureValue")
    key_info = etree.SubElement(sig, _DS + "KeyInfo")
    etree.SubElement(key_info, _DS + "KeyName").text = backend.key_name
    x509_data = etree.SubElement(key_info, _DS + "X509Data")
    etree.SubElement(x509_data, _DS + "X509Certificate").text = base64.b64encode(backend.certificate_der).decode()
    return sig


def _document_without(sig: etree._Element) -> bytes:
    """C14N of the whole document with ``sig`` taken out (the enveloped-signature transform).

    The element is detached for the moment of canonicalisation and put back exactly as it was;
    the text around it stays, as the transform removes the element only.
    """
    parent = sig.getparent()
    assert parent is not None
    index = parent.index(sig)
    prev = sig.getprevious()
    saved = prev.tail if prev is not None else parent.text
    tail = sig.tail
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(sig)  # lxml moves the tail with the element; restored on insert
    try:
        return _c14n(parent.getroottree())
    finally:
        parent.insert(index, sig)
        if prev is not None:
            prev.tail = saved
        else:
            parent.text = saved


@dataclass
class PreparedSignature:
    """A Signature inserted with its digest, waiting for the signature value (two-phase signing)."""

    root: etree._Element
    element: etree._Element
    signed_info: bytes  # canonical SignedInfo: the octets the key must sign

    def finish(self, signature_value: bytes) -> None:
        """Write the raw signature value (as returned by the key, UKey or HSM) into SignatureValue."""
        if not isinstance(signature_value, bytes | bytearray) or not signature_value:
            raise ValueError("the signature value must be non-empty bytes")
        value = self.element.find(_DS + "SignatureValue")
        assert value is not None
        value.text = base64.b64encode(bytes(signature_value)).decode()


def prepare(root: etree._Element, backend: SignatureBackend, *, flow: str | None = None) -> PreparedSignature:
    """First half of :func:`sign`: replace any Signature, insert a new one at its place, fill the digest.

    ``flow`` ("import"/"export") defaults to the registry's flow of the message type.
    """
    if root.getparent() is not None:
        raise ValueError("sign the root element of the CEB message, not a part of it")
    flow = _flow_of(root, flow)
    for old in _signature_children(root):
        _remove_keep_text(old)
    sig = _build_signature(backend)
    _insert_signature(root, sig, insert_position(root, flow))
    digest = backend.digest_bytes(_document_without(sig))
    digest_value = sig.find(f"{_DS}SignedInfo/{_DS}Reference/{_DS}DigestValue")
    assert digest_value is not None
    digest_value.text = base64.b64encode(digest).decode()
    signed_info = sig.find(_DS + "SignedInfo")
    assert signed_info is not None
    return PreparedSignature(root, sig, _c14n(signed_info))


def sign(root: etree._Element, backend: SignatureBackend, *, flow: str | None = None) -> None:
    """Sign a CEB message in place: insert (or replace) its ds:Signature.

    ``flow`` ("import"/"export") decides the position; by default the registry's flow of the
    message type (import for unknown roots).
    """
    prepared = prepare(root, backend, flow=flow)
    prepared.finish(backend.sign_bytes(prepared.signed_info))


def sign_xml(xml: bytes, backend: SignatureBackend, *, flow: str | None = None) -> bytes:
    """Parse (safely), sign and serialise: UTF-8 with an XML declaration, layout otherwise untouched.

    Raises :class:`gateway.errors.MessageRejected` for input the safe parser refuses.
    """
    root = parse_xml(xml)
    sign(root, backend, flow=flow)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root.getroottree(), encoding="UTF-8")


# --- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`. ``code`` is None when ``ok``; ``path`` points at the failing part."""

    ok: bool
    code: str | None
    reason: str
    path: str = ""
    algorithm: str | None = None
    key_name: str | None = None
    certificate_der: bytes | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.ok


class _Fail(Exception):
    def __init__(self, code: str, reason: str, path: str) -> None:
        super().__init__(reason)
        self.code, self.reason, self.path = code, reason, path


def _b64(text: str | None, what: str, path: str) -> bytes:
    try:
        return base64.b64decode(_WS.sub("", text or ""), validate=True)
    except (binascii.Error, ValueError):
        raise _Fail("signature.malformed", f"{what} is not base64", path) from None


def _child(el: etree._Element, name: str, path: str) -> etree._Element:
    found = el.find(_DS + name)
    if found is None:
        raise _Fail("signature.malformed", f"ds:{name} is missing", f"{path}/{name}")
    return found


def verify(
    root_or_bytes: etree._Element | bytes,
    *,
    trusted_certs: Sequence[bytes] | None = None,
    sm2_user_id: bytes = SM2_DEFAULT_USER_ID,
    at: datetime | None = None,
) -> VerifyResult:
    """Check the enveloped signature of a CEB message: structure, algorithms, digest, KeyName,
    certificate pinning (``trusted_certs``: PEM or DER; when given the signing certificate must be
    one of them), the certificate's validity at ``at`` (default now) and the signature value with the
    embedded certificate's key.

    Never raises on bad input; a tree passed in is left as it was.
    """
    try:
        if isinstance(root_or_bytes, bytes | bytearray):
            try:
                root = parse_xml(bytes(root_or_bytes))
            except Exception as exc:  # MessageRejected and anything the parser might raise
                return VerifyResult(False, "signature.malformed", f"the document cannot be parsed: {exc}", "/")
        else:
            root = root_or_bytes
        return _verify(root, trusted_certs, sm2_user_id, at or datetime.now(UTC))
    except _Fail as f:
        return VerifyResult(False, f.code, f.reason, f.path)
    except Exception as exc:  # a bug or an input nobody foresaw must not escape: report, do not raise
        return VerifyResult(False, "signature.malformed", f"cannot verify: {type(exc).__name__}: {exc}", "/")


def _verify(root: etree._Element, trusted_certs: Sequence[bytes] | None, user_id: bytes, at: datetime) -> VerifyResult:
    root_name = etree.QName(root).localname if isinstance(root.tag, str) else "?"
    base = f"/{root_name}/Signature"
    sigs = _signature_children(root)
    if not sigs:
        raise _Fail("signature.missing", "no ds:Signature under the message root", base)
    if len(sigs) > 1:
        raise _Fail("signature.multiple", f"{len(sigs)} ds:Signature elements under the message root", base)
    sig = sigs[0]
    signed_info = _child(sig, "SignedInfo", base)
    si_path = f"{base}/SignedInfo"

    c14n_method = _child(signed_info, "CanonicalizationMethod", si_path).get("Algorithm")
    if c14n_method not in (C14N, C14N_WITH_COMMENTS):
        raise _Fail("signature.unsupported_algorithm", f"CanonicalizationMethod {c14n_method} is not supported",
                    f"{si_path}/CanonicalizationMethod")
    method = _child(signed_info, "SignatureMethod", si_path).get("Algorithm")
    if method not in (RSA_SHA1, RSA_SHA256, SM2_SM3, SM2_SM3_W3C):
        raise _Fail("signature.unsupported_algorithm", f"SignatureMethod {method} is not supported",
                    f"{si_path}/SignatureMethod")

    references = signed_info.findall(_DS + "Reference")
    ref_path = f"{si_path}/Reference"
    if len(references) != 1:
        raise _Fail("signature.unsupported_reference", f"{len(references)} Reference elements; exactly one expected",
                    ref_path)
    reference = references[0]
    if reference.get("URI") != "":
        raise _Fail("signature.unsupported_reference", f"Reference URI is {reference.get('URI')!r}, not \"\"",
                    ref_path)
    transforms = [t.get("Algorithm") for t in reference.iterfind(f"{_DS}Transforms/{_DS}Transform")]
    # URI="" already drops comments, so a trailing C14N (with or without comments) changes nothing.
    if not transforms or transforms[0] != ENVELOPED or any(t not in (C14N, C14N_WITH_COMMENTS) for t in transforms[1:]):
        raise _Fail("signature.unsupported_reference", f"transforms {transforms} are not the enveloped-signature "
                    "transform (optionally followed by C14N)", f"{ref_path}/Transforms")
    digest_method = _child(reference, "DigestMethod", ref_path).get("Algorithm")
    digest_function = _digest_function(digest_method or "")
    if digest_function is None:
        raise _Fail("signature.unsupported_algorithm", f"DigestMethod {digest_method} is not supported",
                    f"{ref_path}/DigestMethod")
    expected = _b64(_child(reference, "DigestValue", ref_path).text, "DigestValue", f"{ref_path}/DigestValue")
    signature_value = _b64(_child(sig, "SignatureValue", base).text, "SignatureValue", f"{base}/SignatureValue")
    if not signature_value:
        raise _Fail("signature.malformed", "SignatureValue is empty", f"{base}/SignatureValue")

    actual = digest_function(_document_without(sig))
    if not hmac.compare_digest(actual, expected):
        raise _Fail("signature.digest_mismatch", "the message does not match DigestValue: it was changed after "
                    "signing", f"{ref_path}/DigestValue")

    cert, key_name = _signing_certificate(sig, base, trusted_certs, at)
    is_sm2 = method in (SM2_SM3, SM2_SM3_W3C)
    signed_octets = _c14n(signed_info, with_comments=c14n_method == C14N_WITH_COMMENTS)
    value_path = f"{base}/SignatureValue"
    if is_sm2:
        if cert.sm2_point is None:
            raise _Fail("signature.algorithm_key_mismatch", f"{method} needs an SM2 certificate", value_path)
        rs = _sm2_decode_signature(signature_value)
        if rs is None or not _sm2_verify(cert.sm2_point, user_id, signed_octets, *rs):
            raise _Fail("signature.bad_value", "SignatureValue does not verify (SM2-SM3)", value_path)
    else:
        if cert.rsa_key is None:
            raise _Fail("signature.algorithm_key_mismatch", f"{method} needs an RSA certificate", value_path)
        hash_algorithm: hashes.HashAlgorithm = hashes.SHA1() if method == RSA_SHA1 else hashes.SHA256()
        try:
            cert.rsa_key.verify(signature_value, signed_octets, padding.PKCS1v15(), hash_algorithm)
        except (InvalidSignature, ValueError):
            raise _Fail("signature.bad_value", "SignatureValue does not verify (RSA)", value_path) from None
    return VerifyResult(True, None, "signature verified", base, method, key_name, cert.der)


def _signing_certificate(
    sig: etree._Element, base: str, trusted_certs: Sequence[bytes] | None, at: datetime
) -> tuple[_Certificate, str | None]:
    ki_path = f"{base}/KeyInfo"
    cert_path = ki_path
    key_info = sig.find(_DS + "KeyInfo")
    key_name_el = key_info.find(_DS + "KeyName") if key_info is not None else None
    key_name = _WS.sub("", key_name_el.text or "") if key_name_el is not None else None
    cert_el = key_info.find(f"{_DS}X509Data/{_DS}X509Certificate") if key_info is not None else None

    trusted: list[_Certificate] = []
    for item in trusted_certs or ():
        pinned = _pinned(bytes(item))
        if pinned is not None:  # an unreadable pin matches nothing
            trusted.append(pinned)
    if cert_el is not None:
        cert_path = f"{ki_path}/X509Data/X509Certificate"
        der = _b64(cert_el.text, "X509Certificate", cert_path)
        try:
            cert = _read_certificate(der)
        except ValueError as exc:
            raise _Fail("signature.bad_certificate", f"X509Certificate cannot be used: {exc}", cert_path) from None
        if trusted_certs is not None and not any(t.der == cert.der for t in trusted):
            raise _Fail("signature.untrusted_certificate", f"certificate {key_name_for(cert.serial)} is not trusted",
                        cert_path)
    else:
        matches = [t for t in trusted if key_name is not None and _same_serial(key_name, t.serial)]
        if not matches:
            raise _Fail("signature.no_certificate", "KeyInfo has no X509Certificate and no trusted certificate "
                        f"has serial {key_name}", ki_path)
        cert = matches[0]
    if key_name is not None and not _same_serial(key_name, cert.serial):
        raise _Fail("signature.key_name_mismatch", f"KeyName {key_name} is not the certificate serial "
                    f"{key_name_for(cert.serial)}", f"{ki_path}/KeyName")
    if at > cert.not_after:
        raise _Fail("signature.certificate_expired", f"certificate {key_name_for(cert.serial)} was valid until "
                    f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC", cert_path)
    if at < cert.not_before:
        raise _Fail("signature.certificate_not_yet_valid", f"certificate {key_name_for(cert.serial)} is valid from "
                    f"{cert.not_before:%Y-%m-%d %H:%M:%S} UTC", cert_path)
    return cert, key_name


def _same_serial(key_name: str, serial: int) -> bool:
    try:
        return int(key_name, 16) == serial
    except ValueError:
        return False


# --- certificates ----------------------------------------------------------------------------------


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), base64.b64decode(_WS.sub("", m.group(2).decode()))) for m in _PEM.finditer(data)]


def read_certificates(path: Path) -> list[bytes]:
    """The certificates (DER) in a PEM file (a bundle of any number) or in the files of a folder (PEM or DER:
    .pem, .crt, .cer, .der): what ``verify``'s ``trusted_certs`` pins to. ValueError when there are none."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pem", ".crt", ".cer", ".der")) \
        if path.is_dir() else [path]  # fmt: skip
    found: list[bytes] = []
    for file in files:
        data = file.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            found += [der for label, der in _pem_blocks(data) if label == "CERTIFICATE"]
        else:
            found.append(data)
    for der in found:
        try:
            _read_certificate(der)  # an RSA or SM2 certificate, as verify reads them
        except ValueError as exc:
            raise ValueError(f"{path}: a certificate cannot be used: {exc}") from None
    if not found:
        raise ValueError(f"{path}: no certificate found")
    return found


def certificate_to_der(cert: bytes) -> bytes:
    """A certificate given as PEM or DER, as DER."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        for label, der in _pem_blocks(cert):
            if label == "CERTIFICATE":
                return der
        raise ValueError("no CERTIFICATE block in the PEM data")
    return bytes(cert)


@dataclass(frozen=True)
class _Certificate:
    der: bytes
    serial: int
    rsa_key: rsa.RSAPublicKey | None
    sm2_point: tuple[int, int] | None
    not_before: datetime  # the validity period, UTC
    not_after: datetime


_OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_OID_SM2_CURVE = "1.2.156.10197.1.301"
_OID_SM2_WITH_SM3 = "1.2.156.10197.1.501"


@functools.lru_cache(maxsize=4096)
def _pinned(cert: bytes) -> _Certificate | None:
    """A trusted certificate as read once (verify at ingest sees the same pins for every message)."""
    try:
        return _read_certificate(certificate_to_der(cert))
    except ValueError:
        return None


def _read_certificate(der: bytes) -> _Certificate:
    """Serial and public key of an X.509 certificate with an RSA or SM2 key; ValueError otherwise."""
    try:
        cert = x509.load_der_x509_certificate(der)
        serial = cert.serial_number
        valid = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        spki = _spki_of(cert.tbs_certificate_bytes)
        algorithm = _der_items(_der_items(_der_expect(spki, 0x30))[0][1])[0]
        key_oid = _der_oid_decode(algorithm[1]) if algorithm[0] == 0x06 else ""
    except Exception as exc:
        raise ValueError(f"not an X.509 certificate ({exc})") from None
    if key_oid in (_OID_EC_PUBLIC_KEY, _OID_SM2_CURVE):
        # cryptography cannot load an SM2 key (and would accept other curves we do not want): read it here
        return _Certificate(der, serial, None, _sm2_point_from_spki(spki), *valid)
    try:
        public = cert.public_key()
    except Exception as exc:
        raise ValueError(f"unsupported public key ({exc})") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError(f"unsupported public key type {type(public).__name__}")
    return _Certificate(der, serial, public, None, *valid)


def _spki_of(tbs: bytes) -> bytes:
    """The SubjectPublicKeyInfo TLV of a TBSCertificate."""
    items = _der_items(_der_expect(tbs, 0x30))
    if items and items[0][0] == 0xA0:  # [0] version
        items = items[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    if len(items) < 6 or items[5][0] != 0x30:
        raise ValueError("TBSCertificate without SubjectPublicKeyInfo")
    return items[5][2]


def _sm2_point_from_spki(spki: bytes) -> tuple[int, int]:
    algorithm, key = _der_items(_der_expect(spki, 0x30))[:2]
    oids = [_der_oid_decode(c) for tag, c, _ in _der_items(algorithm[1]) if tag == 0x06]
    if _OID_SM2_CURVE not in oids:
        raise ValueError(f"EC key on a curve other than SM2 ({oids})")
    if key[0] != 0x03 or not key[1] or key[1][0] != 0:
        raise ValueError("bad subjectPublicKey")
    return _sm2_decode_point(key[1][1:])


def certificate_serial(cert: bytes) -> int:
    """The serial number of a certificate (PEM or DER) with an RSA or SM2 key; ValueError otherwise."""
    return _read_certificate(certificate_to_der(cert)).serial


def certificate_validity(cert: bytes) -> tuple[datetime, datetime]:
    """notBefore and notAfter (UTC) of a certificate (PEM or DER) with an RSA or SM2 key; ValueError otherwise."""
    read = _read_certificate(certificate_to_der(cert))
    return read.not_before, read.not_after


def certificate_algorithm(cert: bytes) -> str:
    """The SignatureMethod a certificate's key (PEM or DER) signs with: SM2_SM3 for an SM2 key, RSA_SHA1 for an RSA
    one; ValueError otherwise."""
    return SM2_SM3 if _read_certificate(certificate_to_der(cert)).sm2_point is not None else RSA_SHA1


def verify_bytes(cert: bytes, data: bytes, signature: bytes, *, user_id: bytes = SM2_DEFAULT_USER_ID) -> bool:
    """Whether ``signature`` is the raw signature over ``data`` of the key ``cert`` (PEM or DER) holds: RSA-SHA1
    (PKCS#1 v1.5) for an RSA key, SM2-SM3 (DER or raw r‖s) for an SM2 one — what :meth:`SignatureBackend.sign_bytes`
    makes. For signatures over other things than XML (the 179 upload, gateway.realtime)."""
    read = _read_certificate(certificate_to_der(cert))
    if read.sm2_point is not None:
        rs = _sm2_decode_signature(signature)
        return rs is not None and _sm2_verify(read.sm2_point, user_id, data, *rs)
    assert read.rsa_key is not None  # _read_certificate: RSA or SM2
    try:
        read.rsa_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA1())
    except (InvalidSignature, ValueError):
        return False
    return True


#: How long before its certificate's end the gateway's own signing key is said to expire soon (the log at every start,
#: the console's banner): time for the declaring agent to renew it with the E-Port CA.
EXPIRY_WARNING = timedelta(days=30)


class SigningUnavailable(Exception):
    """The gateway's own key cannot sign now: its certificate is outside its validity (customs would refuse the
    signature, DXP 1002), or the UKey holding it does not sign (gateway.ukey.UKeySigner). Nothing about the message is
    wrong: the declaration is not signed, nor taken, until the key signs again. ``code`` is one of :data:`CODES`'
    ``signing.*``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Signer:
    """Signs a CEB message root with one key (:func:`sign`): the gateway's signer of JSON declarations. It refuses
    (:class:`SigningUnavailable`) outside its certificate's validity rather than make a signature customs refuses."""

    backend: SignatureBackend
    valid_from: datetime = field(init=False)  # the certificate's notBefore and notAfter (UTC), read once
    valid_until: datetime = field(init=False)

    def __post_init__(self) -> None:
        since, until = certificate_validity(self.backend.certificate_der)
        object.__setattr__(self, "valid_from", since)
        object.__setattr__(self, "valid_until", until)

    def __call__(self, root: etree._Element) -> None:
        if (refusal := self.refusal(datetime.now(UTC))) is not None:
            raise refusal
        sign(root, self.backend)

    def standing(self, at: datetime) -> dict[str, Any]:
        """Where the key stands at ``at``, for the operators: ``state`` (``valid``, ``expires_soon`` within
        EXPIRY_WARNING, ``expired``, ``not_yet_valid``), the certificate's dates, whole days left, its serial."""
        left = self.valid_until - at
        state = ("expired" if left < timedelta(0) else "not_yet_valid" if at < self.valid_from
                 else "expires_soon" if left < EXPIRY_WARNING else "valid")  # fmt: skip
        return {"state": state, "valid_from": self.valid_from.isoformat(), "valid_until": self.valid_until.isoformat(),
                "days_left": math.floor(left / timedelta(days=1)), "key_name": self.backend.key_name}  # fmt: skip

    def refusal(self, at: datetime) -> SigningUnavailable | None:
        """Why the key may not sign at ``at`` (its certificate expired, or not yet valid); None when it may."""
        serial = self.backend.key_name
        if at > self.valid_until:
            return SigningUnavailable("signing.certificate_expired", f"the certificate of the gateway's signing key "
                                      f"({serial}) expired at {self.valid_until:%Y-%m-%d %H:%M:%S} UTC: customs would "
                                      "refuse the signature; the zone's operators must install the renewed one, then "
                                      "send this again")  # fmt: skip
        if at < self.valid_from:
            return SigningUnavailable("signing.certificate_not_yet_valid", f"the certificate of the gateway's signing "
                                      f"key ({serial}) is valid from {self.valid_from:%Y-%m-%d %H:%M:%S} UTC; send "
                                      "this again then")  # fmt: skip
        return None


def throwaway_signer(common_name: str) -> Signer:
    """Signs (RSA-SHA1) with a TEST key made for this process: the benchmark's corpus, ``cbec validate``'s JSON
    inventories — where a signature's presence and shape matter, never for customs."""
    return Signer(RsaSha1Key.from_pem(*generate_test_key("rsa", common_name)))


def generate_test_key(kind: Literal["rsa", "sm2"], common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A TEST key and self-signed certificate (PEM key, PEM certificate) for the sandbox and tests.

    RSA 2048 or SM2. Subject ``CN=<common_name>, O=cbec-gateway TEST KEY (not for customs)``; the
    serial is a random 63-bit number. Customs accepts only certificates issued by the E-Port CA.
    """
    serial = secrets.randbits(63) | 1
    not_before = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    not_after = not_before + timedelta(days=days)
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _TEST_ORGANISATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)
    if kind == "sm2":
        d = secrets.randbelow(_N - 2) + 1
        der = _sm2_self_signed_certificate(d, common_name, serial, not_before, not_after)
        return _pem("PRIVATE KEY", _sm2_pkcs8(d)), _pem("CERTIFICATE", der)
    raise ValueError(f"kind is 'rsa' or 'sm2', not {kind!r}")


_TEST_ORGANISATION = "cbec-gateway TEST KEY (not for customs)"


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def _sm2_private_from_pem(key_pem: bytes) -> int:
    """SM2 private value from PKCS#8 ``PRIVATE KEY`` or SEC1 ``EC PRIVATE KEY`` (unencrypted)."""
    for label, der in _pem_blocks(key_pem):
        if label == "PRIVATE KEY":
            _version, algorithm, octets = _der_items(_der_expect(der, 0x30))[:3]
            oids = [_der_oid_decode(c) for tag, c, _ in _der_items(algorithm[1]) if tag == 0x06]
            if _OID_SM2_CURVE not in oids or octets[0] != 0x04:
                raise ValueError(f"PKCS#8 key is not an SM2 key ({oids})")
            return _sm2_private_from_sec1(octets[1])
        if label == "EC PRIVATE KEY":
            return _sm2_private_from_sec1(der)
        if label == "ENCRYPTED PRIVATE KEY":
            raise ValueError("encrypted SM2 keys are not supported; decrypt it first (openssl pkcs8)")
    raise ValueError("no PRIVATE KEY or EC PRIVATE KEY block in the PEM data")


def _sm2_private_from_sec1(der: bytes) -> int:
    items = _der_items(_der_expect(der, 0x30))
    if len(items) < 2 or items[0][0] != 0x02 or items[1][0] != 0x04:
        raise ValueError("not an ECPrivateKey structure")
    d = int.from_bytes(items[1][1], "big")
    for tag, content, _ in items[2:]:
        if tag == 0xA0:  # [0] curve parameters
            curve = _der_items(content)
            if curve and curve[0][0] == 0x06 and _der_oid_decode(curve[0][1]) != _OID_SM2_CURVE:
                raise ValueError("EC private key on a curve other than SM2")
        if tag == 0xA1:  # [1] public key: must match the private value
            bits = _der_items(content)[0][1]
            if _sm2_decode_point(bits[1:]) != _sm2_public_point(d):
                raise ValueError("EC private key with an inconsistent public key")
    return d


def _sm2_pkcs8(d: int) -> bytes:
    x, y = _sm2_public_point(d)
    point = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    ec_private = _der_seq(_der_int(1), _tlv(0x04, d.to_bytes(32, "big")), _tlv(0xA1, _tlv(0x03, b"\x00" + point)))
    algorithm = _der_seq(_der_oid(_OID_EC_PUBLIC_KEY), _der_oid(_OID_SM2_CURVE))
    return _der_seq(_der_int(0), algorithm, _tlv(0x04, ec_private))


def _der_name(common_name: str) -> bytes:
    def rdn(oid: str, tag: int, value: str) -> bytes:
        return _tlv(0x31, _der_seq(_der_oid(oid), _tlv(tag, value.encode())))

    return _der_seq(rdn("2.5.4.6", 0x13, "CN"), rdn("2.5.4.10", 0x0C, _TEST_ORGANISATION),
                    rdn("2.5.4.3", 0x0C, common_name))


def _der_time(t: datetime) -> bytes:
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _sm2_self_signed_certificate(d: int, common_name: str, serial: int, not_before: datetime,
                                 not_after: datetime) -> bytes:
    """An X.509 v3 certificate for the SM2 key ``d``, signed by itself with SM2-SM3 (default user id)."""
    x, y = _sm2_public_point(d)
    spki = _der_seq(_der_seq(_der_oid(_OID_EC_PUBLIC_KEY), _der_oid(_OID_SM2_CURVE)),
                    _tlv(0x03, b"\x00\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")))
    signature_algorithm = _der_seq(_der_oid(_OID_SM2_WITH_SM3))
    name = _der_name(common_name)
    true = _tlv(0x01, b"\xff")
    basic_constraints = _der_seq(_der_oid("2.5.29.19"), true, _tlv(0x04, _der_seq()))
    # keyUsage digitalSignature + nonRepudiation: BIT STRING with 6 unused bits, 0b11000000
    key_usage = _der_seq(_der_oid("2.5.29.15"), true, _tlv(0x04, _tlv(0x03, b"\x06\xc0")))
    tbs = _der_seq(
        _tlv(0xA0, _der_int(2)),
        _der_int(serial),
        signature_algorithm,
        name,
        _der_seq(_der_time(not_before), _der_time(not_after)),
        name,
        spki,
        _tlv(0xA3, _der_seq(basic_constraints, key_usage)),
    )
    r, s = _sm2_sign(d, (x, y), SM2_DEFAULT_USER_ID, tbs)
    return _der_seq(tbs, signature_algorithm, _tlv(0x03, b"\x00" + _der_seq(_der_int(r), _der_int(s))))


# --- a little DER ---------------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _der_seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _der_int(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers")
    return _tlv(0x02, value.to_bytes((value.bit_length() + 8) // 8, "big"))


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _der_oid_decode(content: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("empty OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _der_next(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the content of the TLV at ``pos``; ValueError if it does not fit."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used here")
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _der_expect(data: bytes, tag: int) -> bytes:
    """Content of ``data``, which must be exactly one TLV with ``tag``."""
    found, start, end = _der_next(data, 0)
    if found != tag or end != len(data):
        raise ValueError(f"expected one DER element with tag {tag:#x}")
    return data[start:end]


def _der_items(content: bytes) -> list[tuple[int, bytes, bytes]]:
    """The TLVs in a constructed value: (tag, content, whole TLV)."""
    items = []
    pos = 0
    while pos < len(content):
        tag, start, end = _der_next(content, pos)
        items.append((tag, content[start:end], content[pos:end]))
        pos = end
    return items


# --- SM2 (GB/T 32918.2 / GM/T 0003.2 digital signature on the recommended 256-bit curve) ----------

_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
_GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

_Jacobian = tuple[int, int, int]  # (X, Y, Z) with x = X/Z², y = Y/Z³; Z == 0 is the point at infinity
_INFINITY: _Jacobian = (1, 1, 0)


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def _j_double(pt: _Jacobian) -> _Jacobian:
    x1, y1, z1 = pt
    if z1 == 0 or y1 == 0:
        return _INFINITY
    # a = -3: alpha = 3(X - Z²)(X + Z²)
    delta = z1 * z1 % _P
    gamma = y1 * y1 % _P
    beta = x1 * gamma % _P
    alpha = 3 * (x1 - delta) * (x1 + delta) % _P
    x3 = (alpha * alpha - 8 * beta) % _P
    z3 = ((y1 + z1) * (y1 + z1) - gamma - delta) % _P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % _P
    return x3, y3, z3


def _j_add_affine(pt: _Jacobian, x2: int, y2: int) -> _Jacobian:
    x1, y1, z1 = pt
    if z1 == 0:
        return x2, y2, 1
    z1z1 = z1 * z1 % _P
    u2 = x2 * z1z1 % _P
    s2 = y2 * z1 * z1z1 % _P
    h = (u2 - x1) % _P
    r = (s2 - y1) % _P
    if h == 0:
        return _j_double(pt) if r == 0 else _INFINITY
    hh = h * h % _P
    hhh = h * hh % _P
    v = x1 * hh % _P
    x3 = (r * r - hhh - 2 * v) % _P
    y3 = (r * (v - x3) - y1 * hhh) % _P
    return x3, y3, z1 * h % _P


def _to_affine(pt: _Jacobian) -> tuple[int, int] | None:
    x, y, z = pt
    if z == 0:
        return None
    zi = pow(z, -1, _P)
    zi2 = zi * zi % _P
    return x * zi2 % _P, y * zi2 * zi % _P


def _window_table(x: int, y: int) -> list[tuple[int, int] | None]:
    """[None, P, 2P, ..., 15P] in affine coordinates (4-bit window)."""
    table: list[tuple[int, int] | None] = [None, (x, y)]
    acc: _Jacobian = (x, y, 1)
    for _ in range(14):
        acc = _j_add_affine(acc, x, y)
        table.append(_to_affine(acc))
    return table


_G_TABLE = _window_table(_GX, _GY)


def _multi_mul(terms: Sequence[tuple[int, list[tuple[int, int] | None]]]) -> tuple[int, int] | None:
    """Σ kᵢ·Pᵢ with one shared chain of doublings (Straus/Shamir), 4-bit windows; None for infinity."""
    acc = _INFINITY
    for shift in range(252, -1, -4):
        for _ in range(4):
            acc = _j_double(acc)
        for k, table in terms:
            nibble = (k >> shift) & 0xF
            entry = table[nibble]
            if entry is not None:
                acc = _j_add_affine(acc, *entry)
    return _to_affine(acc)


def _sm2_public_point(d: int) -> tuple[int, int]:
    point = _multi_mul([(d, _G_TABLE)])
    assert point is not None
    return point


def _sm2_decode_point(octets: bytes) -> tuple[int, int]:
    if len(octets) != 65 or octets[0] != 0x04:
        raise ValueError("SM2 public key must be an uncompressed point (04 ‖ x ‖ y)")
    x, y = int.from_bytes(octets[1:33], "big"), int.from_bytes(octets[33:], "big")
    if not _on_curve(x, y):
        raise ValueError("SM2 public key is not on the curve")
    return x, y


def _sm2_za(user_id: bytes, public: tuple[int, int]) -> bytes:
    """ZA = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA); ENTL is the id length in bits, 2 bytes."""
    if len(user_id) * 8 > 0xFFFF:
        raise ValueError("SM2 user id too long")
    parts = [(len(user_id) * 8).to_bytes(2, "big"), user_id]
    parts += [v.to_bytes(32, "big") for v in (_A, _B, _GX, _GY, public[0], public[1])]
    return sm3_digest(b"".join(parts))


def _sm2_e(user_id: bytes, public: tuple[int, int], message: bytes) -> int:
    return int.from_bytes(sm3_digest(_sm2_za(user_id, public) + message), "big")


def _sm2_sign(d: int, public: tuple[int, int], user_id: bytes, message: bytes) -> tuple[int, int]:
    e = _sm2_e(user_id, public, message)
    d_inv = pow(1 + d, -1, _N)
    while True:
        k = secrets.randbelow(_N - 1) + 1  # CSPRNG nonce, fresh per signature
        point = _multi_mul([(k, _G_TABLE)])
        assert point is not None
        r = (e + point[0]) % _N
        if r == 0 or r + k == _N:
            continue
        s = d_inv * (k - r * d) % _N
        if s != 0:
            return r, s


def _sm2_verify(public: tuple[int, int], user_id: bytes, message: bytes, r: int, s: int) -> bool:
    if not (1 <= r < _N and 1 <= s < _N) or not _on_curve(*public):
        return False
    t = (r + s) % _N
    if t == 0:
        return False
    point = _multi_mul([(s, _G_TABLE), (t, _window_table(*public))])
    if point is None:
        return False
    return (_sm2_e(user_id, public, message) + point[0]) % _N == r


def _sm2_decode_signature(value: bytes) -> tuple[int, int] | None:
    """(r, s) from DER ``SEQUENCE {r, s}`` (strict) or from 64 raw bytes r ‖ s; None if neither."""
    try:
        items = _der_items(_der_expect(value, 0x30))
        if len(items) == 2 and all(tag == 0x02 and c and c[0] < 0x80 for tag, c, _ in items):
            return int.from_bytes(items[0][1], "big"), int.from_bytes(items[1][1], "big")
    except ValueError:
        pass
    if len(value) == 64:
        return int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big")
    return None
