"""Schema layer: validate a parsed CEB message (or DXP envelope) against the customs 2022-05 XSDs.

The XSDs in ``schemas/`` are compiled with lxml/libxml2, lazily and once per thread (lxml schema
objects must not be shared between threads). Compilation never touches the network: the schema
documents are parsed with ``no_network=True`` and every include/import is resolved to a file in the
schema folder or refused.

Every libxml2 error becomes an :class:`~gateway.errors.Issue` with a stable ``schema.*`` code (see
:data:`CODES`), a prefix-free path in the gateway's style (``/CEB311Message/Order[2]/OrderHead/
acturalPaid``; the business element and the list lines always indexed) and a message that says what
is wrong and what was found. Structural errors are classified with the content models read from
the same XSD files, so "missing", "out of order", "too many" and "not allowed" are told apart.

A valid message costs one ``XMLSchema.validate`` call; all the work above happens only on errors.
"""

from __future__ import annotations

import functools
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lxml import etree

from gateway.errors import MAX_ISSUES, Issue, Layer
from gateway.messages import DXP_SCHEMA, IMPORT_SCHEMA, SCHEMA_DIR, MessageType

__all__ = ["CODES", "Particle", "SchemaLoadError", "SchemaSet", "element_particles", "element_sequences"]

CODES: dict[str, str] = {
    "schema.missing_element": "a required element is absent (path names the element that should be there)",
    "schema.unexpected_element": "an element the schema does not allow in this parent (unknown or misplaced name)",
    "schema.out_of_order": "an allowed element stands in the wrong position; the schema fixes the element order",
    "schema.too_many_occurrences": "an element repeats more often than allowed (e.g. > 100 documents, > 99 lines)",
    "schema.missing_attribute": "a required attribute (e.g. guid or version on the message root) is absent",
    "schema.unexpected_attribute": "an attribute the schema does not declare on this element",
    "schema.unexpected_text": "text inside an element that may only contain child elements (or nothing)",
    "schema.too_long": "a string is longer than its maximum length",
    "schema.too_short": "a string is shorter than its minimum length; most often a required value left empty",
    "schema.wrong_length": "a fixed-length string (guid 36, appTime 14, HS code 10 ...) has another length",
    "schema.too_many_digits": "a number has more digits in total than allowed (19 for amounts, 9 for packNo)",
    "schema.too_many_fraction_digits": "a decimal has more digits after the point than allowed (5)",
    "schema.invalid_value":
        "a value is not of its type (decimal, integer, date-time ...), or a text field holds elements",
    "schema.fixed_value": "a value differs from the one the schema fixes (currency 142, DxpMsg ver 1.0)",
    "schema.wrong_root": "the root element is not the one of the declared message type, or not declared at all",
    "schema.other": "any other XSD violation; the message carries libxml2's own description",
}


class SchemaLoadError(RuntimeError):
    """A schema file is missing, malformed or refers to something outside the schema folder."""


# ------------------------------------------------------------------------------------------------
# Content models, read from the XSD files themselves (used only to explain structural errors)
# ------------------------------------------------------------------------------------------------

XS = "http://www.w3.org/2001/XMLSchema"
_XS = f"{{{XS}}}"
UNBOUNDED = 1 << 30


@dataclass(frozen=True, slots=True)
class Particle:
    tag: str  # Clark name of the child element
    min: int
    max: int  # UNBOUNDED for maxOccurs="unbounded"


# key: Clark tags from the root down to the parent, e.g. ("{ceb}CEB311Message", "{ceb}Order")
ContentModels = dict[tuple[str, ...], tuple[Particle, ...]]


def _occurs(decl: etree._Element, name: str) -> int:
    v = decl.get(name, "1")
    return UNBOUNDED if v == "unbounded" else int(v)


def _qname(decl: etree._Element, value: str) -> str:
    """Resolve a QName attribute value (``ceb:OrderType``) in the scope of ``decl`` to Clark notation."""
    prefix, _, local = value.rpartition(":")
    ns = decl.nsmap.get(prefix or None)
    return f"{{{ns}}}{local}" if ns else local


class _ModelReader:
    """Walk the global elements of an XSD (and the schemas it imports from the same folder) and
    record the flat sequence of every complex element, keyed by its chain of tags from the root.

    Only the constructs our schemas use are understood (sequences of local elements or element
    refs, named or inline complex types, complexContent extension). Anything else (choice, xs:any,
    nested groups) leaves that element without a model; error explanations then fall back to
    libxml2's own wording.
    """

    def __init__(self, schema_dir: Path, parser: etree.XMLParser) -> None:
        self.dir = schema_dir
        self.parser = parser
        self.types: dict[str, etree._Element] = {}  # Clark name -> named complexType
        self.globals: dict[str, etree._Element] = {}  # Clark name -> global element declaration
        self.tns: dict[int, str] = {}  # id(schema root) -> its target namespace
        self.loaded: set[str] = set()
        self.models: ContentModels = {}

    def load(self, filename: str) -> etree._Element:
        doc = etree.parse(str(self.dir / filename), self.parser).getroot()
        self.loaded.add(filename)
        tns = doc.get("targetNamespace", "")
        self.tns[id(doc)] = tns
        for t in doc.iterfind(f"{_XS}complexType"):
            self.types[f"{{{tns}}}{t.get('name')}"] = t
        for e in doc.iterfind(f"{_XS}element"):
            self.globals[f"{{{tns}}}{e.get('name')}"] = e
        for imp in doc:
            if isinstance(imp.tag, str) and imp.tag in (f"{_XS}import", f"{_XS}include"):
                name = PurePosixPath(imp.get("schemaLocation", "")).name
                if name and name not in self.loaded and (self.dir / name).is_file():
                    self.load(name)
        return doc

    def read(self, filename: str) -> ContentModels:
        doc = self.load(filename)
        tns = self.tns[id(doc)]
        for top in doc.iterfind(f"{_XS}element"):
            self.visit(top, (f"{{{tns}}}{top.get('name')}",))
        return self.models

    def _tns_of(self, node: etree._Element) -> str:
        return self.tns.get(id(node.getroottree().getroot()), "")

    def _sequence(self, holder: etree._Element) -> tuple[list[Particle], dict[str, etree._Element]] | None:
        groups = [c for c in holder if isinstance(c.tag, str) and c.tag in (
            f"{_XS}sequence", f"{_XS}choice", f"{_XS}all", f"{_XS}group")]
        if not groups:
            return [], {}
        seq = groups[0]
        if len(groups) > 1 or seq.tag != f"{_XS}sequence" or seq.get("minOccurs") or seq.get("maxOccurs"):
            return None
        tns = self._tns_of(holder)
        parts: list[Particle] = []
        decls: dict[str, etree._Element] = {}
        for child in seq:
            if not isinstance(child.tag, str) or child.tag == f"{_XS}annotation":
                continue
            if child.tag != f"{_XS}element":
                return None
            if child.get("ref"):
                tag = _qname(child, child.get("ref", ""))
                decl = self.globals.get(tag)
            else:
                tag, decl = f"{{{tns}}}{child.get('name')}", child
            parts.append(Particle(tag, _occurs(child, "minOccurs"), _occurs(child, "maxOccurs")))
            if decl is not None:
                decls[tag] = decl
        return parts, decls

    def _content(self, ctype: etree._Element) -> tuple[list[Particle], dict[str, etree._Element]] | None:
        ext = ctype.find(f"{_XS}complexContent/{_XS}extension")
        if ext is not None:
            base = self.types.get(_qname(ext, ext.get("base", "")))
            head = self._content(base) if base is not None else None
            tail = self._sequence(ext)
            if head is None or tail is None:
                return None
            return head[0] + tail[0], {**head[1], **tail[1]}
        if ctype.find(f"{_XS}simpleContent") is not None:
            return [], {}
        if ctype.find(f"{_XS}complexContent") is not None:  # restriction: not used by our schemas
            return None
        return self._sequence(ctype)

    def visit(self, decl: etree._Element, key: tuple[str, ...]) -> None:
        if len(key) > 16:  # our schemas are 6 deep; guard against recursive types
            return
        ctype = decl.find(f"{_XS}complexType")
        if ctype is None and decl.get("type"):
            ctype = self.types.get(_qname(decl, decl.get("type", "")))
        content = self._content(ctype) if ctype is not None else None
        if content is None:
            return
        parts, decls = content
        self.models[key] = tuple(parts)
        for p in parts:
            child = decls.get(p.tag)
            if child is not None:
                self.visit(child, (*key, p.tag))


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


class _LocalOnlyResolver(etree.Resolver):
    """Resolve schema includes/imports to files in the schema folder; refuse everything else.

    A refused location resolves to an empty document, so libxml2 can neither fetch it nor fall
    back to its default loader; compilation then fails with a clear error.
    """

    def __init__(self, schema_dir: Path) -> None:
        super().__init__()
        self._dir = schema_dir.resolve()
        self.refused: list[str] = []

    def resolve(self, system_url: str | None, public_id: str | None, context: object) -> object:
        url = system_url or ""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("", "file"):
            candidate = Path(urllib.parse.unquote(parsed.path))
            if not candidate.is_absolute():
                candidate = self._dir / candidate
            candidate = candidate.resolve()
            if candidate.parent == self._dir and candidate.is_file():
                return self.resolve_filename(str(candidate), context)
            name = PurePosixPath(parsed.path).name
            if name and (self._dir / name).is_file():  # a relative name seen from another base
                return self.resolve_filename(str(self._dir / name), context)
        self.refused.append(url)
        return self.resolve_string("", context)


def _schema_parser(schema_dir: Path) -> tuple[etree.XMLParser, _LocalOnlyResolver]:
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True)
    resolver = _LocalOnlyResolver(schema_dir)
    parser.resolvers.add(resolver)
    return parser, resolver


def _compile(schema_dir: Path, filename: str) -> etree.XMLSchema:
    path = schema_dir / filename
    if not path.is_file():
        raise SchemaLoadError(f"schema file {path} does not exist")
    parser, resolver = _schema_parser(schema_dir)
    try:
        doc = etree.parse(str(path), parser)
        if doc.docinfo.doctype:
            raise SchemaLoadError(f"schema file {path} carries a DOCTYPE; schemas must load without DTDs")
        schema = etree.XMLSchema(doc)
    except (etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
        refused = f" (refused non-local locations: {', '.join(resolver.refused)})" if resolver.refused else ""
        raise SchemaLoadError(f"cannot compile {path}: {exc}{refused}") from exc
    if resolver.refused:
        raise SchemaLoadError(f"{path} refers to locations outside {schema_dir}: {', '.join(resolver.refused)}")
    return schema


# ------------------------------------------------------------------------------------------------
# Error mapping helpers
# ------------------------------------------------------------------------------------------------

_HEAD = re.compile(r"^Element '(?P<el>[^']*)'(?:, attribute '(?P<attr>[^']*)')?: (?P<rest>.*)$", re.S)
_LEN = re.compile(r"has a length of '(?P<n>\d+)'; this (?:exceeds|underruns|differs from) the allowed "
                  r"(?:maximum |minimum )?length of '(?P<limit>\d+)'")
_DIGITS = re.compile(r"than are allowed \('(?P<limit>\d+)'\)")
_TYPE = re.compile(r"is not a valid value of the (?:local )?(?:atomic |list |union )?type(?: '(?P<type>[^']*)')?")
_FIXED = re.compile(r"fixed value constraint '(?P<fixed>[^']*)'")
_REQ_ATTR = re.compile(r"The attribute '(?P<attr>[^']*)' is required but missing")
_EXPECTED = re.compile(r"Expected is(?: one of)? \( (?P<names>.*?) \)")
_CLARK = re.compile(r"\{[^}]*\}")
_SEGMENT = re.compile(r"^(?:(?P<prefix>[^:\[\]]+):)?(?P<name>[^\[\]]+)(?:\[(?P<idx>\d+)\])?$")

_TYPE_WORDS = {
    "N19.5": "a decimal number",
    "N9": "an integer of at most 9 digits",
    "xs:decimal": "a decimal number",
    "xs:int": "a whole number between -2147483648 and 2147483647",
    "xs:integer": "a whole number",
    "xs:dateTime": "a date and time like 2024-03-01T12:00:00",
    "xs:date": "a date like 2024-03-01",
    "xs:base64Binary": "base64 data",
    "xs:anyURI": "a URI",
    "xs:ID": "an XML name (xs:ID) that is unique in the document",
}

_MAX_SHOWN = 60


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@functools.cache
def element_particles(filename: str = IMPORT_SCHEMA, schema_dir: Path = SCHEMA_DIR) -> dict[str, tuple[Particle, ...]]:
    """The child elements (with their occurrences) of every complex element of a schema file, by the element's local
    name, in the order of its XSD sequence: what the schema declares, for the code that builds elements (JSON
    rendering, the sandbox's receipts) or describes them (the JSON schema of the API) to follow rather than
    transcribe. An element met in several places keeps its first sequence (in our schemas a name has one type)."""
    parser, _ = _schema_parser(schema_dir)
    particles: dict[str, tuple[Particle, ...]] = {}
    for key, parts in _ModelReader(schema_dir, parser).read(filename).items():
        particles.setdefault(_local(key[-1]), parts)
    return particles


@functools.cache
def element_sequences(filename: str = IMPORT_SCHEMA, schema_dir: Path = SCHEMA_DIR) -> dict[str, tuple[str, ...]]:
    """The names of :func:`element_particles`, in order."""
    particles = element_particles(filename, schema_dir)
    return {name: tuple(_local(p.tag) for p in parts) for name, parts in particles.items()}


def _strip_ns(text: str) -> str:
    return _CLARK.sub("", text)


def _show(value: str) -> str:
    """Quote a found value for a message, shortened so that messages stay one line."""
    v = value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 1] + "…"
    return "'" + v.replace("\n", "\\n") + "'"


def _elements(parent: etree._Element) -> list[etree._Element]:
    return [c for c in parent if isinstance(c.tag, str)]


def _locate(root: etree._Element, path: str | None) -> etree._Element | None:
    """Find the element a libxml2 error path points at.

    libxml2 writes ``/ceb:CEB311Message/ceb:Order[2]/ceb:OrderHead`` for prefixed elements and
    ``/*/*[2]/*[1]`` for elements in a default namespace (index among all element siblings).
    """
    if not path or not path.startswith("/"):
        return None
    segments = path[1:].split("/")
    node: etree._Element | None = None
    for i, seg in enumerate(segments):
        m = _SEGMENT.match(seg)
        if m is None:
            return None
        prefix, name, idx = m.group("prefix"), m.group("name"), int(m.group("idx") or 1)
        candidates = [root] if i == 0 else _elements(node) if node is not None else []
        if name != "*":
            candidates = [c for c in candidates if _local(c.tag) == name and (c.prefix or None) == prefix]
        if len(candidates) < idx:
            return None
        node = candidates[idx - 1]
    return node


@dataclass(frozen=True, slots=True)
class _Structural:
    code: str
    path_el: etree._Element  # element the path points at (the parent for a missing element)
    missing: str | None  # Clark tag of a missing child
    message: str




class _Explainer:
    """Turns one validation run's libxml2 errors into Issues for one root element."""

    def __init__(self, root: etree._Element, mtype: MessageType | None, models: ContentModels) -> None:
        self.root = root
        self.models = models
        self.document = mtype.document if mtype else None
        self.lines = mtype.lines if mtype else None
        self.missing_in: list[etree._Element] = []  # parents libxml2 found a required child missing in

    def all_missing(self) -> list[Issue]:
        """Every required child absent from the parents that lack one: libxml2 stops at the first of each
        sequence, and a sender (a seller filling a JSON form most of all) should learn them all at once."""
        out: list[Issue] = []
        for parent in dict.fromkeys(self.missing_in):
            present = {c.tag for c in _elements(parent)}
            pname = _local(parent.tag)
            for p in self.models.get(self.model_key(parent), ()):
                if p.min >= 1 and p.tag not in present:
                    out.append(Issue(Layer.SCHEMA, "schema.missing_element", f"{self.path(parent)}/{_local(p.tag)}",
                                     f"required element {_local(p.tag)} is missing in {pname}"))  # fmt: skip
        return out

    # -- paths ---------------------------------------------------------------------------------

    def path(self, el: etree._Element) -> str:
        chain: list[etree._Element] = []
        node: etree._Element | None = el
        while node is not None:
            chain.append(node)
            if node is self.root:
                break
            node = node.getparent()
        chain.reverse()
        parts: list[str] = []
        for depth, node in enumerate(chain):
            name = _local(node.tag)
            parent = node.getparent() if depth else None
            if parent is None:
                parts.append(name)
                continue
            same = [c for c in parent if c.tag == node.tag]
            always = (depth == 1 and name == self.document) or (depth >= 2 and name == self.lines
                                                                and _local(parent.tag) == self.document)
            parts.append(f"{name}[{same.index(node) + 1}]" if always or len(same) > 1 else name)
        return "/" + "/".join(parts)

    def fallback_path(self, raw: str | None) -> str:
        if not raw:
            return f"/{_local(self.root.tag)}"
        return "/".join(seg.split(":", 1)[-1] for seg in raw.split("/"))

    def model_key(self, el: etree._Element) -> tuple[str, ...]:
        key: list[str] = []
        node: etree._Element | None = el
        while node is not None:
            key.append(node.tag)
            if node is self.root:
                break
            node = node.getparent()
        return tuple(reversed(key))

    # -- structure -----------------------------------------------------------------------------

    def structural(self, el: etree._Element, missing_children: bool, expected: list[str]) -> _Structural | None:
        """Explain a content-model error reported on ``el`` (the parent if ``missing_children``)."""
        parent = el if missing_children else el.getparent()
        if parent is None:
            return None
        model = self.models.get(self.model_key(parent))
        if model is None:
            return None
        children = _elements(parent)
        tags = [c.tag for c in children]
        allowed = {p.tag: p for p in model}
        pname = _local(parent.tag)
        # Walk the sequence greedily: our content models are flat sequences of distinct names,
        # so the first mismatch found this way is the one libxml2 reported.
        i = 0
        for p in model:
            count = 0
            while i < len(tags) and tags[i] == p.tag and count < p.max:
                i += 1
                count += 1
            if i < len(tags) and tags[i] == p.tag:  # the run of p is longer than maxOccurs
                n = sum(1 for t in tags if t == p.tag)
                return _Structural("schema.too_many_occurrences", children[i], None,
                                   f"{_local(p.tag)} occurs {n} times in {pname}; at most {p.max} allowed")
            if count < p.min:
                found = children[i] if i < len(children) else None
                if found is not None and found.tag not in allowed:
                    return self._not_allowed(found, allowed, pname)
                if found is not None and p.tag in tags[i + 1:]:
                    return _Structural("schema.out_of_order", found, None,
                                       f"{_local(found.tag)} is out of order in {pname}: "
                                       f"{_local(p.tag)} must come before it")
                where = f" (found {_local(found.tag)} in its place)" if found is not None else ""
                return _Structural("schema.missing_element", parent, p.tag,
                                   f"required element {_local(p.tag)} is missing in {pname}{where}")
        if i >= len(children):
            return None
        extra = children[i]
        if extra.tag not in allowed:
            return self._not_allowed(extra, allowed, pname)
        exp = f"; expected {' or '.join(expected)} here" if expected else ""
        return _Structural("schema.out_of_order", extra, None,
                           f"{_local(extra.tag)} is not allowed at this position in {pname}{exp}")

    @staticmethod
    def _not_allowed(el: etree._Element, allowed: dict[str, Particle], pname: str) -> _Structural:
        name = _local(el.tag)
        ns_note = ""
        if any(_local(t) == name for t in allowed):  # right name, wrong namespace (Signature outside ds:)
            ns = el.tag[1:].split("}")[0] if el.tag.startswith("{") else "(none)"
            ns_note = f" in namespace {ns}"
        return _Structural("schema.unexpected_element", el, None, f"element {name}{ns_note} is not allowed in {pname}")

    # -- one error -----------------------------------------------------------------------------

    def issue(self, entry: etree._LogEntry) -> Issue:
        msg = entry.message or ""
        head = _HEAD.match(msg)
        rest = head.group("rest") if head else msg
        attr = head.group("attr") if head else None
        el = _locate(self.root, entry.path)
        name = _local(head.group("el")) if head else (_local(el.tag) if el is not None else "?")
        path = (self.path(el) if el is not None else self.fallback_path(entry.path))
        if attr:
            path += f"/@{attr}"
        kind = entry.type_name
        what = f"attribute {attr}" if attr else name

        def value() -> str:
            if el is None:
                return ""
            if attr:
                return el.get(attr, "")
            return str(el.xpath("string()"))

        def issue(code: str, message: str, at: str = path) -> Issue:
            return Issue(Layer.SCHEMA, code, at, message)

        if kind == "SCHEMAV_ELEMENT_CONTENT" and el is not None:
            m_exp = _EXPECTED.search(rest)
            expected = [_local(n.strip()) for n in m_exp.group("names").split(",")] if m_exp else []
            missing_children = "Missing child element" in rest
            s = self.structural(el, missing_children, expected)
            if s is not None:
                if s.code == "schema.missing_element":
                    self.missing_in.append(s.path_el)
                at = self.path(s.path_el) + (f"/{_local(s.missing)}" if s.missing else "")
                return issue(s.code, s.message, at)
            # No content model for this parent (a choice inside ds:KeyInfo, xs:any ...): go by
            # libxml2's list of what it expected instead.
            if missing_children:
                options = f" (one of {', '.join(expected)})" if len(expected) > 1 else ""
                first = expected[0] if expected else "a child element"
                return issue("schema.missing_element", f"required element {first}{options} is missing in {name}",
                             f"{path}/{expected[0]}" if expected else path)
            parent = el.getparent()
            if len(expected) == 1 and parent is not None and expected[0] not in {_local(c.tag) for c in parent}:
                return issue("schema.missing_element", f"required element {expected[0]} is missing in "
                                                       f"{_local(parent.tag)} (found {name} in its place)",
                             f"{self.path(parent)}/{expected[0]}")
            exp = f"; expected {' or '.join(expected)}" if expected else ""
            return issue("schema.unexpected_element", f"element {name} is not allowed here{exp}")
        if kind == "SCHEMAV_CVC_MAXLENGTH_VALID" and (m := _LEN.search(rest)):
            return issue("schema.too_long", f"{what} is {m['n']} characters long; at most {m['limit']} allowed "
                                            f"(found {_show(value())})")
        if kind == "SCHEMAV_CVC_MINLENGTH_VALID" and (m := _LEN.search(rest)):
            if m["n"] == "0":
                chars = "1 character" if m["limit"] == "1" else f"{m['limit']} characters"
                return issue("schema.too_short", f"{what} is empty; at least {chars} required")
            return issue("schema.too_short", f"{what} is {m['n']} characters long; at least {m['limit']} required "
                                             f"(found {_show(value())})")
        if kind == "SCHEMAV_CVC_LENGTH_VALID" and (m := _LEN.search(rest)):
            return issue("schema.wrong_length", f"{what} must be exactly {m['limit']} characters long; found "
                                                f"{m['n']} ({_show(value())})")
        if kind == "SCHEMAV_CVC_TOTALDIGITS_VALID" and (m := _DIGITS.search(rest)):
            return issue("schema.too_many_digits", f"{what} has more than {m['limit']} digits (found "
                                                   f"{_show(value().strip())})")
        if kind == "SCHEMAV_CVC_FRACTIONDIGITS_VALID" and (m := _DIGITS.search(rest)):
            return issue("schema.too_many_fraction_digits", f"{what} has more than {m['limit']} digits after the "
                                                            f"decimal point (found {_show(value().strip())})")
        if kind.startswith("SCHEMAV_CVC_DATATYPE_VALID") or kind == "SCHEMAV_CVC_ATTRIBUTE_3":
            m = _TYPE.search(rest)
            tname = _strip_ns(m["type"]) if m and m["type"] else ""
            words = _TYPE_WORDS.get(tname, f"a valid {tname}" if tname else "a valid value")
            return issue("schema.invalid_value", f"{what} must be {words} (found {_show(value().strip())})")
        if kind in ("SCHEMAV_CVC_TYPE_3_1_2", "SCHEMAV_CVC_COMPLEX_TYPE_2_2"):
            return issue("schema.invalid_value", f"{what} must contain text only; found child element(s)")
        if kind in ("SCHEMAV_CVC_COMPLEX_TYPE_2_1", "SCHEMAV_CVC_COMPLEX_TYPE_2_3"):
            if rest.startswith("Element content"):
                return issue("schema.unexpected_element", f"{what} must not contain child elements")
            text = "".join(t for t in [el.text, *(c.tail for c in el)] if t).strip() if el is not None else ""
            return issue("schema.unexpected_text", f"{what} may not contain text"
                                                   + (f" (found {_show(text)})" if text else ""))
        if kind.startswith("SCHEMAV_CVC_ELT_5_2_2") or kind == "SCHEMAV_CVC_AU":
            m = _FIXED.search(rest)
            fixed = f" {m['fixed']}" if m else " its fixed value"
            return issue("schema.fixed_value", f"{what} must be{fixed} (found {_show(value().strip())})")
        if kind == "SCHEMAV_CVC_COMPLEX_TYPE_4" and (m := _REQ_ATTR.search(rest)):
            return issue("schema.missing_attribute", f"attribute {m['attr']} is required on {name}",
                         f"{path}/@{m['attr']}")
        if kind in ("SCHEMAV_CVC_COMPLEX_TYPE_3_2_1", "SCHEMAV_CVC_COMPLEX_TYPE_3_2_2", "SCHEMAV_CVC_TYPE_3_1_1"):
            return issue("schema.unexpected_attribute", f"attribute {attr or '?'} is not allowed on {name}")
        if kind == "SCHEMAV_CVC_ELT_1":
            return issue("schema.wrong_root", f"root element {name} is not declared by the schema")
        return issue("schema.other", f"{name}: {_strip_ns(rest).strip()}" if head else _strip_ns(msg).strip())


# ------------------------------------------------------------------------------------------------
# The public object
# ------------------------------------------------------------------------------------------------


class SchemaSet:
    """The customs XSDs of one schema folder, ready to validate from any thread.

    Compiled lxml schemas live in a ``threading.local`` and are built on first use in each thread;
    content models (plain Python data, used only to explain errors) are shared.
    """

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.schema_dir = Path(schema_dir)
        if not self.schema_dir.is_dir():
            raise SchemaLoadError(f"schema folder {self.schema_dir} does not exist")
        self._local = threading.local()
        self._models: dict[str, ContentModels] = {}
        self._models_lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------

    def _schema(self, filename: str) -> etree.XMLSchema:
        cache: dict[str, etree.XMLSchema] | None = getattr(self._local, "schemas", None)
        if cache is None:
            cache = self._local.schemas = {}
        schema = cache.get(filename)
        if schema is None:
            schema = cache[filename] = _compile(self.schema_dir, filename)
        return schema

    def _content_models(self, filename: str) -> ContentModels:
        models = self._models.get(filename)
        if models is None:
            with self._models_lock:
                models = self._models.get(filename)
                if models is None:
                    parser, _ = _schema_parser(self.schema_dir)
                    models = self._models[filename] = _ModelReader(self.schema_dir, parser).read(filename)
        return models

    def preload(self, *filenames: str) -> None:
        """Compile the given schema files (default: all ``*.xsd`` roots we use) in this thread now.

        Call it at start-up to fail fast on a broken schema folder instead of on the first message.
        """
        from gateway.messages import MESSAGE_TYPES

        names = filenames or tuple(sorted({t.schema for t in MESSAGE_TYPES} | {DXP_SCHEMA}))
        for name in names:
            self._schema(name)
            self._content_models(name)

    # -- validation ----------------------------------------------------------------------------

    def validate(self, root: etree._Element, mtype: MessageType) -> list[Issue]:
        """Validate a CEB message root against its type's XSD; ``[]`` when it is valid."""
        issues: list[Issue] = []
        if root.tag != mtype.tag:
            found = _local(root.tag) if isinstance(root.tag, str) else "?"
            issues.append(Issue(Layer.SCHEMA, "schema.wrong_root", f"/{found}",
                                f"root element {root.tag} does not match message type {mtype.code} "
                                f"(expected {mtype.root} in namespace {mtype.tag[1:].split('}')[0]})"))
        schema = self._schema(mtype.schema)
        if schema.validate(root):
            return issues
        return issues + self._explain(schema, root, mtype, mtype.schema)

    def validate_dxp(self, root: etree._Element) -> list[Issue]:
        """Validate a DxpMsg / DxpRep envelope; ``[]`` when it is valid."""
        schema = self._schema(DXP_SCHEMA)
        if schema.validate(root):
            return []
        return self._explain(schema, root, None, DXP_SCHEMA)

    def _explain(self, schema: etree.XMLSchema, root: etree._Element, mtype: MessageType | None,
                 filename: str) -> list[Issue]:
        explainer = _Explainer(root, mtype, self._content_models(filename))
        out: list[Issue] = []
        seen: set[tuple[str, str, str]] = set()
        for entry in schema.error_log:
            issue = explainer.issue(entry)
            key = (issue.code, issue.path, issue.message)
            if key not in seen:
                seen.add(key)
                out.append(issue)
                if len(out) >= MAX_ISSUES:
                    return out
        reported = {(i.code, i.path) for i in out}
        out += [i for i in explainer.all_missing() if (i.code, i.path) not in reported][: MAX_ISSUES - len(out)]
        return out
