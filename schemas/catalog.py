"""The schema catalog: which schema id and version every topic's value schema has had.

``schemas/catalog.json`` lists, per subject (``<topic>-value``, Confluent's
TopicNameStrategy), every version ever registered: ``{version, id, file,
fingerprint}``. ``file`` is an immutable snapshot under
``avro/history/<subject>/v<N>.avsc``; the newest snapshot equals the current
``avro/*.avsc`` file, which is what producers write. The fingerprint is the
SHA-256 of the Avro Parsing Canonical Form; since that form drops defaults,
aliases and logical types, :func:`check` also compares the current file with
its newest snapshot minus ``doc`` (:func:`contract_form`). Doc-only edits need
no new version; every other edit does.

Without a Schema Registry the codec takes its ids from here, and decodes a
message written with any catalogued id of its subject by resolving that
version's schema to the current one. A schema change is therefore:

1. edit ``schemas/avro/<name>.avsc``;
2. ``python -m schemas.catalog register <topic>``: refuses changes the current
   schema could not read old data with, then snapshots the file as the next
   version with the next free id;
3. ``python -m schemas.catalog`` (or :func:`check`, run by the test suite)
   fails while any ``.avsc`` differs from its newest registered version.

Compatibility here is BACKWARD_TRANSITIVE: the current schema must read data
written with every earlier version. Readers upgrade before writers.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import fastavro
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many

from schemas.errors import CatalogError

SCHEMAS_DIR: Final[Path] = Path(__file__).resolve().parent
"""The directory holding ``catalog.json`` and ``avro/``; every catalog path is relative to it."""

CATALOG_FILE: Final[str] = "catalog.json"
HISTORY_DIR: Final[str] = "avro/history"
SUBJECT_SUFFIX: Final[str] = "-value"

TOPIC_SCHEMA_FILES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "payments.requests": "avro/payment_request.avsc",
        "payments.decisions": "avro/payment_decision.avsc",
        "payments.legs": "avro/payment_leg.avsc",
        "ledger.entries": "avro/ledger_transaction.avsc",
        "notifications": "avro/notification.avsc",
        "fx.rates": "avro/fx_rate.avsc",
        "fraud.labels": "avro/fraud_label.avsc",
        "fraud.models": "avro/model_announcement.avsc",
        "payments.dlq": "avro/dead_letter.avsc",
    }
)
"""Logical topic name -> its current value schema. Adding a topic: add it here and register it."""

SCHEMA_ID_MAX: Final[int] = 2**31 - 1
"""Confluent schema ids are signed 32-bit integers."""

COMPATIBILITY_SAMPLE_COUNT: Final[int] = 200
"""Generated records per (old version, current) pair in the resolution check."""

COMPATIBILITY_SAMPLE_SEED: Final[int] = 20_240_101
"""Fixed so that a failing sample check fails the same way on every run."""

TEMPORAL_LOGICAL_TYPES: Final[frozenset[str]] = frozenset(
    {
        "date",
        "time-millis",
        "time-micros",
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    }
)
"""Logical types the codec leaves as plain ints (see :func:`wire_schema`)."""

_PRIMITIVES: Final[frozenset[str]] = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_INTEGER_TYPES: Final[frozenset[str]] = frozenset({"int", "long"})
_FLOAT_TYPES: Final[frozenset[str]] = frozenset({"float", "double"})
_NAMED_TYPES: Final[frozenset[str]] = frozenset({"record", "enum", "fixed", "error"})

Schema = Any
"""A JSON Avro schema as loaded from an ``.avsc`` file (dict, list or str)."""


def subject_for(topic: str) -> str:
    """The Confluent TopicNameStrategy subject of ``topic``'s values."""
    return f"{topic}{SUBJECT_SUFFIX}"


def topic_of(subject: str) -> str:
    """The topic a ``<topic>-value`` subject belongs to."""
    if not subject.endswith(SUBJECT_SUFFIX):
        raise CatalogError(f"subject {subject!r} does not end with {SUBJECT_SUFFIX!r}")
    return subject[: -len(SUBJECT_SUFFIX)]


def history_file(subject: str, version: int) -> str:
    """Catalog-relative path of the immutable snapshot of ``subject`` version ``version``."""
    return f"{HISTORY_DIR}/{subject}/v{version}.avsc"


# ---------------------------------------------------------------------------
# Schema files and their forms


def load_schema_file(path: Path) -> Schema:
    """Read an ``.avsc`` file and check that fastavro accepts it."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CatalogError(f"schema file {path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise CatalogError(f"schema file {path} is not readable JSON: {exc}") from exc
    try:
        fastavro.parse_schema(copy.deepcopy(schema))
    except Exception as exc:
        raise CatalogError(f"schema file {path} is not a valid Avro schema: {exc}") from exc
    return schema


def fingerprint(schema: Schema) -> str:
    """SHA-256 (hex) of the Avro Parsing Canonical Form: what identifies a schema version."""
    canonical = to_parsing_canonical_form(copy.deepcopy(schema))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def contract_form(schema: Schema) -> Schema:
    """The schema without ``doc``: what must not change without a new version.

    The canonical form (and so the fingerprint) also drops defaults, aliases and
    logical types, which change how data is read; this form keeps them.
    """
    if isinstance(schema, dict):
        return {key: contract_form(value) for key, value in schema.items() if key != "doc"}
    if isinstance(schema, list):
        return [contract_form(item) for item in schema]
    return schema


def _strip_temporal(schema: Schema) -> Schema:
    if isinstance(schema, list):
        return [_strip_temporal(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    stripped = {key: _strip_temporal(value) for key, value in schema.items()}
    if stripped.get("logicalType") in TEMPORAL_LOGICAL_TYPES:
        del stripped["logicalType"]
    return stripped


def wire_schema(schema: Schema) -> dict[str, Any]:
    """The fastavro-parsed schema the codec reads and writes with.

    Temporal logical types are dropped: the bytes are the same ``long``, and
    every timestamp field is an ``*_ms`` integer, so converting to ``datetime``
    on every decode would only cost time and change the field's type.
    """
    parsed: Any = fastavro.parse_schema(_strip_temporal(copy.deepcopy(schema)))
    if not isinstance(parsed, dict):
        raise CatalogError(f"a topic's value schema must be a record, not {parsed!r}")
    return parsed


# ---------------------------------------------------------------------------
# The catalog


@dataclass(frozen=True)
class SchemaVersion:
    """One registered version of a subject; ``file`` is relative to the schemas directory."""

    subject: str
    version: int
    schema_id: int
    file: str
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """The catalog.json form (``id`` rather than ``schema_id``)."""
        return {
            "version": self.version,
            "id": self.schema_id,
            "file": self.file,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Subject:
    """A subject and its versions, oldest first."""

    name: str
    versions: tuple[SchemaVersion, ...]

    @property
    def topic(self) -> str:
        """The logical topic this subject holds values for."""
        return topic_of(self.name)

    @property
    def latest(self) -> SchemaVersion:
        """The newest version: the one producers write."""
        return self.versions[-1]


@dataclass(frozen=True)
class Catalog:
    """The parsed ``catalog.json`` of one schemas directory."""

    root: Path
    subjects: Mapping[str, Subject]

    @classmethod
    def load(cls, root: Path = SCHEMAS_DIR) -> Catalog:
        """Read and structurally validate ``root/catalog.json``."""
        path = root / CATALOG_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CatalogError(
                f"{path} is missing: run `python -m schemas.catalog register --all`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path} is not readable JSON: {exc}") from exc
        return cls.from_json(root, raw)

    @classmethod
    def empty(cls, root: Path = SCHEMAS_DIR) -> Catalog:
        """A catalog with no subjects (before the first registration)."""
        return cls(root=root, subjects=MappingProxyType({}))

    @classmethod
    def from_json(cls, root: Path, raw: Any) -> Catalog:
        """Build from the JSON document, raising :class:`CatalogError` listing every defect."""
        problems: list[str] = []
        subjects: dict[str, Subject] = {}
        raw_subjects = raw.get("subjects") if isinstance(raw, dict) else None
        if not isinstance(raw_subjects, dict):
            raise CatalogError(f"{root / CATALOG_FILE}: expected an object with 'subjects'")
        for name, raw_versions in raw_subjects.items():
            subject = _parse_subject(name, raw_versions, problems)
            if subject is not None:
                subjects[name] = subject
        problems.extend(_duplicate_id_problems(subjects.values()))
        if problems:
            raise CatalogError(f"{root / CATALOG_FILE} is inconsistent: " + "; ".join(problems))
        return cls(root=root, subjects=MappingProxyType(subjects))

    def to_json(self) -> dict[str, Any]:
        """The catalog.json document, subjects in :data:`TOPIC_SCHEMA_FILES` order."""
        order = {subject_for(topic): index for index, topic in enumerate(TOPIC_SCHEMA_FILES)}
        names = sorted(self.subjects, key=lambda name: (order.get(name, len(order)), name))
        return {
            "subjects": {
                name: [version.to_json() for version in self.subjects[name].versions]
                for name in names
            }
        }

    def subject(self, topic: str) -> Subject:
        """The subject of a logical topic's values."""
        name = subject_for(topic)
        found = self.subjects.get(name)
        if found is None:
            raise CatalogError(
                f"topic {topic!r} has no subject {name!r} in {self.root / CATALOG_FILE}: "
                f"run `python -m schemas.catalog register {topic}`"
            )
        return found

    def path(self, relative: str) -> Path:
        """Absolute path of a catalog-relative file."""
        return self.root / relative

    def current_file(self, topic: str) -> Path:
        """The current ``.avsc`` of a logical topic."""
        return self.root / TOPIC_SCHEMA_FILES[topic]

    def next_schema_id(self) -> int:
        """The id a new version gets: one past the largest id in the catalog."""
        ids = [v.schema_id for s in self.subjects.values() for v in s.versions]
        return max(ids, default=0) + 1


def _parse_subject(name: Any, raw_versions: Any, problems: list[str]) -> Subject | None:
    if not isinstance(name, str) or not name.endswith(SUBJECT_SUFFIX):
        problems.append(f"subject {name!r} does not end with {SUBJECT_SUFFIX!r}")
        return None
    if not isinstance(raw_versions, list) or not raw_versions:
        problems.append(f"{name}: expected a non-empty list of versions")
        return None
    versions: list[SchemaVersion] = []
    for index, raw in enumerate(raw_versions, start=1):
        version = _parse_version(name, index, raw, problems)
        if version is not None:
            versions.append(version)
    if len(versions) != len(raw_versions):
        return None
    return Subject(name=name, versions=tuple(versions))


def _parse_version(
    subject: str, expected: int, raw: Any, problems: list[str]
) -> SchemaVersion | None:
    where = f"{subject} entry {expected}"
    if not isinstance(raw, dict) or set(raw) != {"version", "id", "file", "fingerprint"}:
        problems.append(f"{where}: expected exactly the keys version, id, file, fingerprint")
        return None
    version, schema_id, file, digest = raw["version"], raw["id"], raw["file"], raw["fingerprint"]
    if type(version) is not int or version != expected:
        problems.append(
            f"{where}: version is {version!r}, expected {expected} (1, 2, ... in order)"
        )
        return None
    if type(schema_id) is not int or not 1 <= schema_id <= SCHEMA_ID_MAX:
        problems.append(f"{where}: id {schema_id!r} is not an integer in 1..{SCHEMA_ID_MAX}")
        return None
    if not isinstance(file, str) or not file.endswith(".avsc") or file.startswith("/"):
        problems.append(f"{where}: file {file!r} is not a relative .avsc path")
        return None
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        problems.append(f"{where}: fingerprint {digest!r} is not a lowercase SHA-256 hex digest")
        return None
    return SchemaVersion(subject, version, schema_id, file, digest)


def _duplicate_id_problems(subjects: Iterable[Subject]) -> list[str]:
    owners: dict[int, str] = {}
    problems = []
    for subject in subjects:
        for version in subject.versions:
            owner = f"{subject.name} v{version.version}"
            if version.schema_id in owners:
                problems.append(
                    f"id {version.schema_id} is used by both "
                    f"{owners[version.schema_id]} and {owner}"
                )
            else:
                owners[version.schema_id] = owner
    return problems


def _write_catalog(catalog: Catalog) -> None:
    text = json.dumps(catalog.to_json(), indent=2) + "\n"
    _write_atomically(catalog.root / CATALOG_FILE, text.encode("utf-8"))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------
# Compatibility: can the current (reader) schema read data of an older (writer) one?


def compatibility_problems(writer: Schema, reader: Schema) -> list[str]:
    """Why ``reader`` cannot safely read data written with ``writer``; empty if it can.

    Avro's resolution rules, made stricter for money: a reader field missing from
    the writer needs a default; enum symbols may only be dropped if the reader
    enum has a default; no narrowing (``long`` to ``int``, ``double`` to
    ``float``) and no integer-to-floating-point promotion, which Avro allows but
    which would turn minor units into floats; logical types and names must match.
    """
    parsed_writer = fastavro.parse_schema(copy.deepcopy(writer))
    parsed_reader = fastavro.parse_schema(copy.deepcopy(reader))
    walker = _CompatibilityWalker(_named_schemas(parsed_writer), _named_schemas(parsed_reader))
    walker.compare(parsed_writer, parsed_reader, _schema_label(parsed_reader))
    return walker.problems


def _named_schemas(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, dict):
        named: dict[str, Any] = parsed.get("__named_schemas", {})
        return named
    return {}


def _schema_label(parsed: Any) -> str:
    if isinstance(parsed, dict) and "name" in parsed:
        return str(parsed["name"]).rsplit(".", 1)[-1]
    return "<root>"


def _type_of(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _CompatibilityWalker:
    def __init__(self, writer_names: dict[str, Any], reader_names: dict[str, Any]) -> None:
        self.writer_names = writer_names
        self.reader_names = reader_names
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def _resolve(self, schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return names[schema]
        return schema

    def compare(self, writer: Any, reader: Any, path: str) -> None:
        writer = self._resolve(writer, self.writer_names)
        reader = self._resolve(reader, self.reader_names)
        if isinstance(writer, list):
            for branch in writer:
                self.compare(branch, reader, f"{path}<{_type_of(branch)}>")
            return
        if isinstance(reader, list):
            for branch in reader:
                resolved = self._resolve(branch, self.reader_names)
                if self._branch_matches(writer, resolved):
                    self.compare(writer, resolved, path)
                    return
            self.problems.append(
                f"{path}: writer type {_type_of(writer)} matches no branch of the reader union "
                f"{[_type_of(self._resolve(b, self.reader_names)) for b in reader]}"
            )
            return
        self._compare_single(writer, reader, path)

    def _branch_matches(self, writer: Any, reader: Any) -> bool:
        writer_type, reader_type = _type_of(writer), _type_of(reader)
        if writer_type in _NAMED_TYPES or reader_type in _NAMED_TYPES:
            return writer_type == reader_type and self._names_match(writer, reader)
        if writer_type == reader_type:
            return True
        return (writer_type, reader_type) in {
            ("int", "long"),
            ("float", "double"),
            ("string", "bytes"),
            ("bytes", "string"),
        }

    def _names_match(self, writer: dict[str, Any], reader: dict[str, Any]) -> bool:
        accepted = {reader["name"], _short_name(reader["name"])}
        for alias in reader.get("aliases", ()):
            accepted.update({alias, _short_name(alias)})
        return writer["name"] in accepted or _short_name(writer["name"]) in accepted

    def _compare_single(self, writer: Any, reader: Any, path: str) -> None:
        writer_type, reader_type = _type_of(writer), _type_of(reader)
        if writer_type in _PRIMITIVES and reader_type in _PRIMITIVES:
            self._compare_primitive(writer, reader, path)
            return
        if writer_type != reader_type:
            self.problems.append(f"{path}: type changed from {writer_type} to {reader_type}")
            return
        if writer_type in _NAMED_TYPES and not self._names_match(writer, reader):
            self.problems.append(
                f"{path}: {writer_type} renamed from {writer['name']} to {reader['name']} "
                "without an alias"
            )
            return
        if writer_type in ("record", "error"):
            self._compare_record(writer, reader, path)
        elif writer_type == "enum":
            self._compare_enum(writer, reader, path)
        elif writer_type == "fixed":
            if writer["size"] != reader["size"]:
                self.problems.append(
                    f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
                )
        elif writer_type == "array":
            self.compare(writer["items"], reader["items"], f"{path}[]")
        elif writer_type == "map":
            self.compare(writer["values"], reader["values"], f"{path}{{}}")

    def _compare_primitive(self, writer: Any, reader: Any, path: str) -> None:
        writer_type, reader_type = _type_of(writer), _type_of(reader)
        writer_logical = writer.get("logicalType") if isinstance(writer, dict) else None
        reader_logical = reader.get("logicalType") if isinstance(reader, dict) else None
        if writer_logical != reader_logical:
            self.problems.append(
                f"{path}: logical type changed from {writer_logical} to {reader_logical}"
            )
        if writer_type == reader_type:
            return
        if writer_type in _INTEGER_TYPES and reader_type in _FLOAT_TYPES:
            self.problems.append(
                f"{path}: {writer_type} promoted to {reader_type}: integers (minor units, "
                "milliseconds) must never become floating point"
            )
        elif (writer_type, reader_type) not in {
            ("int", "long"),
            ("float", "double"),
            ("string", "bytes"),
            ("bytes", "string"),
        }:
            self.problems.append(
                f"{path}: type changed from {writer_type} to {reader_type} (narrowing or "
                "unrelated types cannot be resolved)"
            )

    def _compare_record(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> None:
        key = (writer["name"], reader["name"])
        if key in self._seen:  # recursive types: compared once
            return
        self._seen.add(key)
        writer_fields = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            match = next((writer_fields[n] for n in names if n in writer_fields), None)
            field_path = f"{path}.{field['name']}"
            if match is not None:
                self.compare(match["type"], field["type"], field_path)
            elif "default" not in field:
                self.problems.append(
                    f"{field_path}: new field has no default, so data written before it "
                    "existed cannot be read; give it a default"
                )

    def _compare_enum(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> None:
        removed = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if removed and "default" not in reader:
            self.problems.append(
                f"{path}: enum symbols {removed} removed and the reader enum has no default"
            )


def default_problems(schema: Schema) -> list[str]:
    """Field defaults that do not match their field's type (a union's default must match its
    first branch), which fastavro does not always reject but other Avro libraries do."""
    try:
        parsed = fastavro.parse_schema(copy.deepcopy(schema))
    except Exception as exc:
        return [f"not a valid Avro schema: {exc}"]
    names = _named_schemas(parsed)
    problems: list[str] = []
    seen: set[str] = set()

    def visit(node: Any, path: str) -> None:
        node = names.get(node, node) if isinstance(node, str) else node
        kind = _type_of(node)
        if kind == "union":
            for branch in node:
                visit(branch, path)
        elif kind in ("record", "error") and node["name"] not in seen:
            seen.add(node["name"])
            for field in node["fields"]:
                field_path = f"{path}.{field['name']}"
                if "default" in field and not _default_fits(field["type"], field["default"], names):
                    problems.append(
                        f"{field_path}: default {field['default']!r} does not match the field's "
                        "type (for a union: its first branch)"
                    )
                visit(field["type"], field_path)
        elif kind == "array":
            visit(node["items"], f"{path}[]")
        elif kind == "map":
            visit(node["values"], f"{path}{{}}")

    visit(parsed, _schema_label(parsed))
    return problems


def _default_fits(schema: Any, value: Any, names: Mapping[str, Any]) -> bool:
    schema = names.get(schema, schema) if isinstance(schema, str) else schema
    kind = _type_of(schema)
    if kind == "union":
        return bool(schema) and _default_fits(schema[0], value, names)
    checks: dict[str, Any] = {
        "null": lambda: value is None,
        "boolean": lambda: isinstance(value, bool),
        "int": lambda: type(value) is int and -(2**31) <= value < 2**31,
        "long": lambda: type(value) is int and -(2**63) <= value < 2**63,
        "float": lambda: type(value) in (int, float),
        "double": lambda: type(value) in (int, float),
        "string": lambda: isinstance(value, str),
        "bytes": lambda: isinstance(value, str),
        "fixed": lambda: isinstance(value, str) and len(value) == schema["size"],
        "enum": lambda: value in schema["symbols"],
        "array": lambda: (
            isinstance(value, list)
            and all(_default_fits(schema["items"], item, names) for item in value)
        ),
        "map": lambda: (
            isinstance(value, dict)
            and all(_default_fits(schema["values"], item, names) for item in value.values())
        ),
        "record": lambda: (
            isinstance(value, dict)
            and all(
                _default_fits(f["type"], value[f["name"]], names)
                if f["name"] in value
                else "default" in f
                for f in schema["fields"]
            )
        ),
    }
    check = checks.get(kind)
    return bool(check()) if check is not None else False


def sample_problems(
    writer: Schema, reader: Schema, count: int = COMPATIBILITY_SAMPLE_COUNT
) -> list[str]:
    """Write ``count`` generated records with ``writer`` and read them with ``reader``.

    The structural check above is the rule; this confirms fastavro agrees on
    real bytes. Generation is seeded, and the global ``random`` state restored.
    """
    writer_parsed, reader_parsed = wire_schema(writer), wire_schema(reader)
    state = random.getstate()
    random.seed(COMPATIBILITY_SAMPLE_SEED)
    try:
        records = list(generate_many(writer_parsed, count))
    finally:
        random.setstate(state)
    for index, record in enumerate(records):
        buffer = BytesIO()
        try:
            fastavro.schemaless_writer(buffer, writer_parsed, record)
            buffer.seek(0)
            fastavro.schemaless_reader(buffer, writer_parsed, reader_parsed)
        except Exception as exc:
            return [f"generated record {index} written with the old schema is unreadable: {exc!r}"]
    return []


# ---------------------------------------------------------------------------
# Maintenance: check and register


def check(root: Path = SCHEMAS_DIR) -> list[str]:
    """Every reason the catalog and the ``.avsc`` files are not in a releasable state.

    Empty means: every topic has a subject, ids are unique, every snapshot is
    intact, every current schema equals its newest registered version, field
    defaults are valid, and every current schema reads every older version.
    """
    try:
        catalog = Catalog.load(root)
    except CatalogError as exc:
        return [str(exc)]
    problems: list[str] = []
    expected = {subject_for(topic) for topic in TOPIC_SCHEMA_FILES}
    for name in sorted(set(catalog.subjects) - expected):
        problems.append(
            f"{name}: in the catalog but {topic_of(name)!r} is not in TOPIC_SCHEMA_FILES"
        )
    for topic in TOPIC_SCHEMA_FILES:
        if subject_for(topic) not in catalog.subjects:
            problems.append(
                f"{topic}: no subject {subject_for(topic)} in the catalog: "
                f"run `python -m schemas.catalog register {topic}`"
            )
            continue
        problems.extend(_topic_problems(catalog, topic))
    return problems


def _topic_problems(catalog: Catalog, topic: str) -> list[str]:
    subject = catalog.subject(topic)
    snapshots: dict[int, Schema] = {}
    problems: list[str] = []
    for version in subject.versions:
        expected_file = history_file(subject.name, version.version)
        if version.file != expected_file:
            problems.append(f"{subject.name} v{version.version}: file should be {expected_file}")
        try:
            schema = load_schema_file(catalog.path(version.file))
        except CatalogError as exc:
            problems.append(f"{subject.name} v{version.version}: {exc}")
            continue
        if fingerprint(schema) != version.fingerprint:
            problems.append(
                f"{subject.name} v{version.version}: {version.file} was edited after it was "
                "registered; snapshots are immutable, restore it from version control"
            )
        snapshots[version.version] = schema
    try:
        current = load_schema_file(catalog.current_file(topic))
    except CatalogError as exc:
        return [*problems, f"{topic}: {exc}"]
    latest = subject.latest
    register_hint = f"run `python -m schemas.catalog register {topic}`"
    if fingerprint(current) != latest.fingerprint:
        problems.append(
            f"{topic}: {TOPIC_SCHEMA_FILES[topic]} differs from registered v{latest.version} "
            f"(id {latest.schema_id}): {register_hint}"
        )
    elif latest.version in snapshots and contract_form(current) != contract_form(
        snapshots[latest.version]
    ):
        problems.append(
            f"{topic}: {TOPIC_SCHEMA_FILES[topic]} changed defaults, aliases or logical types "
            f"since v{latest.version}: {register_hint}"
        )
    problems.extend(f"{topic}: {p}" for p in default_problems(current))
    for version_number, old in snapshots.items():
        label = f"{topic}: current schema cannot read v{version_number}"
        structural = compatibility_problems(old, current)
        problems.extend(f"{label}: {p}" for p in structural)
        if not structural:
            problems.extend(f"{label}: {p}" for p in sample_problems(old, current))
    return problems


def register(topic: str, root: Path = SCHEMAS_DIR) -> SchemaVersion | None:
    """Register the current ``.avsc`` of ``topic`` as its next version.

    Returns the new version, or ``None`` if the current file already is the
    newest version. Raises :class:`CatalogError` if the current schema cannot
    read every earlier version (nothing is written then).
    """
    if topic not in TOPIC_SCHEMA_FILES:
        raise CatalogError(f"unknown topic {topic!r}; known: {', '.join(TOPIC_SCHEMA_FILES)}")
    try:
        catalog = Catalog.load(root)
    except CatalogError:
        if (root / CATALOG_FILE).exists():
            raise
        catalog = Catalog.empty(root)
    current = load_schema_file(catalog.current_file(topic))
    name = subject_for(topic)
    existing = catalog.subjects.get(name)
    versions = existing.versions if existing is not None else ()
    if versions:
        latest_schema = load_schema_file(catalog.path(versions[-1].file))
        if fingerprint(current) == versions[-1].fingerprint and contract_form(
            current
        ) == contract_form(latest_schema):
            return None
    problems = [f"default: {p}" for p in default_problems(current)]
    for version in versions:
        old = load_schema_file(catalog.path(version.file))
        problems.extend(f"v{version.version}: {p}" for p in compatibility_problems(old, current))
        problems.extend(f"v{version.version}: {p}" for p in sample_problems(old, current))
    if problems:
        raise CatalogError(
            f"not registering {topic}: the new schema is not backward compatible: "
            + "; ".join(problems)
        )
    number = len(versions) + 1
    new = SchemaVersion(
        subject=name,
        version=number,
        schema_id=catalog.next_schema_id(),
        file=history_file(name, number),
        fingerprint=fingerprint(current),
    )
    snapshot = catalog.path(new.file)
    if snapshot.exists():
        raise CatalogError(f"{snapshot} already exists but is not in the catalog; remove it first")
    _write_atomically(snapshot, catalog.current_file(topic).read_bytes())
    subjects = dict(catalog.subjects)
    subjects[name] = Subject(name=name, versions=(*versions, new))
    _write_catalog(Catalog(root=root, subjects=MappingProxyType(subjects)))
    return new


def status_lines(root: Path = SCHEMAS_DIR) -> list[str]:
    """One line per topic: subject, newest version, its id and fingerprint prefix."""
    try:
        catalog = Catalog.load(root)
    except CatalogError as exc:
        return [str(exc)]
    lines = []
    for topic in TOPIC_SCHEMA_FILES:
        subject = catalog.subjects.get(subject_for(topic))
        if subject is None:
            lines.append(f"{subject_for(topic):28} (not registered)")
            continue
        latest = subject.latest
        lines.append(
            f"{subject.name:28} v{latest.version:<3} id {latest.schema_id:<6} "
            f"{latest.fingerprint[:16]}  {TOPIC_SCHEMA_FILES[topic]}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m schemas.catalog [status | register TOPIC... | register --all]``."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.catalog",
        description="Show and check the schema catalog, or register changed schemas.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("status", help="list subjects and check the catalog (the default)")
    register_parser = commands.add_parser(
        "register", help="register the current .avsc of topics as their next version"
    )
    register_parser.add_argument("topics", nargs="*", metavar="TOPIC")
    register_parser.add_argument("--all", action="store_true", help="every topic")
    parser.add_argument("--root", type=Path, default=SCHEMAS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.command == "register":
        topics = list(TOPIC_SCHEMA_FILES) if args.all else args.topics
        if not topics:
            parser.error("name at least one TOPIC, or --all")
        for topic in topics:
            try:
                new = register(topic, root)
            except CatalogError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            if new is None:
                print(f"{topic}: unchanged")
            else:
                print(f"{topic}: registered {new.subject} v{new.version} as id {new.schema_id}")
    for line in status_lines(root):
        print(line)
    problems = check(root)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("catalog ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
