"""The schema catalog: ids, fingerprints, history snapshots, compatibility, and the workflow.

The first group checks the repository's own catalog, so that a schema edited
without ``python -m schemas.catalog register`` (or registered incompatibly)
fails CI. The rest checks the tooling on private copies of ``schemas/``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.catalog import (
    CATALOG_FILE,
    SCHEMAS_DIR,
    TOPIC_SCHEMA_FILES,
    Catalog,
    check,
    compatibility_problems,
    default_problems,
    fingerprint,
    load_schema_file,
    main,
    register,
    sample_problems,
    subject_for,
)
from schemas.errors import CatalogError

CATALOG = Catalog.load()
VERSIONS = [
    (topic, version.version)
    for topic in TOPIC_SCHEMA_FILES
    for version in CATALOG.subject(topic).versions
]


def copy_schemas(tmp_path: Path) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def edit_schema(root: Path, topic: str, change: Any) -> None:
    path = root / TOPIC_SCHEMA_FILES[topic]
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2) + "\n")


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


# ---------------------------------------------------------------------------
# The repository's catalog


def test_repository_catalog_passes_check() -> None:
    assert check() == []


@pytest.mark.parametrize("topic", list(TOPIC_SCHEMA_FILES))
def test_latest_fingerprint_is_the_current_avsc(topic: str) -> None:
    """Changing an .avsc without registering a new version fails here."""
    current = load_schema_file(SCHEMAS_DIR / TOPIC_SCHEMA_FILES[topic])
    assert CATALOG.subject(topic).latest.fingerprint == fingerprint(current), (
        f"{TOPIC_SCHEMA_FILES[topic]} changed: run `python -m schemas.catalog register {topic}`"
    )


def test_fingerprint_is_sha256_of_the_parsing_canonical_form() -> None:
    schema = load_schema_file(SCHEMAS_DIR / TOPIC_SCHEMA_FILES["payments.requests"])
    canonical = to_parsing_canonical_form(copy.deepcopy(schema))
    assert fingerprint(schema) == fastavro_fingerprint(canonical, "SHA-256")


def test_ids_are_unique_across_the_catalog() -> None:
    raw = json.loads((SCHEMAS_DIR / CATALOG_FILE).read_text())
    ids = [v["id"] for versions in raw["subjects"].values() for v in versions]
    assert len(ids) == len(set(ids))
    assert all(type(i) is int and 0 < i < 2**31 for i in ids)


def test_every_topic_has_a_topic_name_strategy_subject() -> None:
    assert set(CATALOG.subjects) == {subject_for(t) for t in TOPIC_SCHEMA_FILES}
    assert subject_for("payments.requests") == "payments.requests-value"


@pytest.mark.parametrize(("topic", "version"), VERSIONS)
def test_history_snapshot_matches_its_fingerprint(topic: str, version: int) -> None:
    registered = CATALOG.subject(topic).versions[version - 1]
    assert registered.file == f"avro/history/{subject_for(topic)}/v{version}.avsc"
    assert fingerprint(load_schema_file(SCHEMAS_DIR / registered.file)) == registered.fingerprint


@pytest.mark.parametrize(("topic", "version"), VERSIONS)
def test_current_schema_reads_every_registered_version(topic: str, version: int) -> None:
    old = load_schema_file(SCHEMAS_DIR / CATALOG.subject(topic).versions[version - 1].file)
    current = load_schema_file(SCHEMAS_DIR / TOPIC_SCHEMA_FILES[topic])
    assert compatibility_problems(old, current) == []
    assert sample_problems(old, current) == []


@pytest.mark.parametrize("topic", list(TOPIC_SCHEMA_FILES))
def test_current_defaults_are_valid(topic: str) -> None:
    assert default_problems(load_schema_file(SCHEMAS_DIR / TOPIC_SCHEMA_FILES[topic])) == []


# ---------------------------------------------------------------------------
# The compatibility rules

BASE: dict[str, Any] = {
    "type": "record",
    "name": "Thing",
    "namespace": "paystream.v1",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount_minor", "type": "long"},
        {"name": "count", "type": "int"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["A", "B"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def evolve(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    change(schema)
    return schema


def test_identical_schemas_are_compatible() -> None:
    assert compatibility_problems(BASE, BASE) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["fields"].append({"name": "extra", "type": "string", "default": ""}),
        lambda s: s["fields"].append({"name": "x", "type": ["null", "long"], "default": None}),
        lambda s: s["fields"].pop(0),  # readers may ignore a writer's field
        lambda s: field(s, "count").update(type="long"),  # int -> long widens
        lambda s: field(s, "status")["type"]["symbols"].append("C"),
        lambda s: field(s, "note").update(type=["null", "string", "long"]),
        lambda s: field(s, "id").update(type=["null", "string"], default=None),
        lambda s: field(s, "id").update(doc="documentation only"),
    ],
    ids=[
        "field-with-default",
        "nullable-field",
        "field-removed",
        "int-to-long",
        "enum-symbol-added",
        "union-widened",
        "made-nullable",
        "doc",
    ],
)
def test_backward_compatible_changes(change: Any) -> None:
    new = evolve(change)
    assert compatibility_problems(BASE, new) == []
    assert sample_problems(BASE, new) == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (
            lambda s: s["fields"].append({"name": "extra", "type": "string"}),
            "Thing.extra: new field has no default",
        ),
        (
            lambda s: field(s, "status")["type"].update(symbols=["A"]),
            r"Thing.status: enum symbols \['B'\] removed",
        ),
        (lambda s: field(s, "amount_minor").update(type="int"), "from long to int"),
        (lambda s: field(s, "amount_minor").update(type="double"), "long promoted to double"),
        (lambda s: field(s, "count").update(type="float"), "int promoted to float"),
        (lambda s: field(s, "id").update(type="long"), "from string to long"),
        (
            lambda s: field(s, "note").update(type="string", default=""),
            r"Thing.note<null>: type changed from null to string",
        ),
        (
            lambda s: field(s, "id").update(type=["null", "long"], default=None),
            r"Thing.id: writer type string matches no branch",
        ),
        (
            lambda s: field(s, "status")["type"].update(name="State"),
            "enum renamed from paystream.v1.Status to paystream.v1.State",
        ),
        (
            lambda s: field(s, "at_ms").update(
                type={"type": "long", "logicalType": "timestamp-micros"}
            ),
            "logical type changed from timestamp-millis to timestamp-micros",
        ),
        (
            lambda s: field(s, "tags").update(type={"type": "array", "items": "long"}),
            r"Thing.tags\[\]: type changed from string to long",
        ),
        (lambda s: s.update(name="Other"), "record renamed"),
    ],
    ids=[
        "field-without-default",
        "enum-symbol-removed",
        "long-to-int",
        "long-to-double",
        "int-to-float",
        "string-to-long",
        "union-narrowed",
        "union-without-writer-type",
        "enum-renamed",
        "logical-type",
        "array-items",
        "record-renamed",
    ],
)
def test_incompatible_changes_are_named(change: Any, complaint: str) -> None:
    problems = compatibility_problems(BASE, evolve(change))
    assert problems, "expected a compatibility problem"
    assert any(re.search(complaint, p) for p in problems), problems


def test_enum_symbol_removal_is_allowed_with_a_reader_default() -> None:
    def change(schema: dict[str, Any]) -> None:
        field(schema, "status")["type"].update(symbols=["A", "UNKNOWN"], default="UNKNOWN")

    assert compatibility_problems(BASE, evolve(change)) == []


def test_renamed_record_with_alias_is_compatible() -> None:
    renamed = evolve(lambda s: s.update(name="New", aliases=["Thing"]))
    assert compatibility_problems(BASE, renamed) == []
    assert compatibility_problems(BASE, evolve(lambda s: s.update(aliases=["Old"]))) == []


def test_renamed_field_with_alias_is_compatible() -> None:
    def change(schema: dict[str, Any]) -> None:
        field(schema, "count").update(name="count_total", aliases=["count"])

    assert compatibility_problems(BASE, evolve(change)) == []


def test_invalid_defaults_are_reported() -> None:
    def change(schema: dict[str, Any]) -> None:
        # fastavro accepts all of these; other Avro implementations refuse them.
        field(schema, "note").update(default="not-null")  # a union default matches branch 0
        field(schema, "tags").update(default=[1])
        schema["fields"].append({"name": "small", "type": "int", "default": 2**40})
        schema["fields"].append(
            {
                "name": "kind",
                "type": {"type": "enum", "name": "K", "symbols": ["X"]},
                "default": "Y",
            }
        )

    problems = default_problems(evolve(change))
    assert [p.split(":")[0] for p in problems] == [
        "Thing.tags",
        "Thing.note",
        "Thing.small",
        "Thing.kind",
    ]
    assert "default 'not-null' does not match" in problems[1]


def test_schema_fastavro_rejects_is_reported_as_a_default_problem() -> None:
    def change(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "flag", "type": "boolean", "default": 0})

    (problem,) = default_problems(evolve(change))
    assert "Default value <0> must match schema type: boolean" in problem


# ---------------------------------------------------------------------------
# The workflow on a private copy


def test_unregistered_change_fails_check_and_register_fixes_it(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    before = Catalog.load(root)
    edit_schema(
        root,
        "payments.legs",
        lambda s: s["fields"].append(
            {"name": "batch_id", "type": ["null", "string"], "default": None}
        ),
    )
    problems = check(root)
    assert len(problems) == 1
    assert "register payments.legs" in problems[0]

    new = register("payments.legs", root)
    assert new is not None
    assert (new.version, new.schema_id) == (2, before.next_schema_id())
    assert (root / new.file).read_bytes() == (
        root / TOPIC_SCHEMA_FILES["payments.legs"]
    ).read_bytes()
    assert check(root) == []
    assert register("payments.legs", root) is None  # nothing changed since


def test_default_change_needs_a_new_version_although_the_fingerprint_is_equal(
    tmp_path: Path,
) -> None:
    root = copy_schemas(tmp_path)
    edit_schema(root, "fx.rates", lambda s: field(s, "spread_bps").update(default=10))
    assert len(check(root)) == 1
    assert "changed defaults" in check(root)[0]
    assert register("fx.rates", root) is not None
    assert check(root) == []


def test_doc_only_change_needs_no_new_version(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    edit_schema(root, "fx.rates", lambda s: field(s, "rate").update(doc="Reworded."))
    assert check(root) == []
    assert register("fx.rates", root) is None


def test_incompatible_change_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    catalog_before = (root / CATALOG_FILE).read_text()
    edit_schema(
        root, "notifications", lambda s: s["fields"].append({"name": "channel", "type": "string"})
    )
    with pytest.raises(CatalogError, match=r"notifications.*new field has no default"):
        register("notifications", root)
    assert (root / CATALOG_FILE).read_text() == catalog_before
    assert not (root / "avro/history/notifications-value/v2.avsc").exists()


def test_edited_snapshot_is_reported(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    snapshot = root / "avro/history/fraud.models-value/v1.avsc"
    schema = json.loads(snapshot.read_text())
    field(schema, "sha256").update(type="bytes")
    snapshot.write_text(json.dumps(schema))
    assert any("was edited after it was registered" in p for p in check(root))


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    raw = json.loads((root / CATALOG_FILE).read_text())
    raw["subjects"]["fx.rates-value"][0]["id"] = raw["subjects"]["notifications-value"][0]["id"]
    (root / CATALOG_FILE).write_text(json.dumps(raw))
    (problem,) = check(root)
    assert "is used by both notifications-value v1 and fx.rates-value v1" in problem
    with pytest.raises(CatalogError, match="used by both"):
        Catalog.load(root)


def test_versions_must_count_up_from_one(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    raw = json.loads((root / CATALOG_FILE).read_text())
    raw["subjects"]["fx.rates-value"][0]["version"] = 2
    (root / CATALOG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CatalogError, match="version is 2, expected 1"):
        Catalog.load(root)


def test_missing_subject_is_reported_and_register_creates_it(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    raw = json.loads((root / CATALOG_FILE).read_text())
    del raw["subjects"]["payments.dlq-value"]
    (root / CATALOG_FILE).write_text(json.dumps(raw))
    shutil.rmtree(root / "avro/history/payments.dlq-value")
    assert any("register payments.dlq" in p for p in check(root))
    new = register("payments.dlq", root)
    assert new is not None and new.version == 1
    assert check(root) == []


def test_bootstrap_from_nothing(tmp_path: Path) -> None:
    root = copy_schemas(tmp_path)
    (root / CATALOG_FILE).unlink()
    shutil.rmtree(root / "avro/history")
    assert main(["--root", str(root), "register", "--all"]) == 0
    catalog = Catalog.load(root)
    assert [catalog.subject(t).latest.schema_id for t in TOPIC_SCHEMA_FILES] == list(
        range(1, len(TOPIC_SCHEMA_FILES) + 1)
    )
    assert check(root) == []


def test_cli_status_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_schemas(tmp_path)
    assert main(["--root", str(root)]) == 0
    assert "catalog ok" in capsys.readouterr().out
    edit_schema(
        root,
        "fraud.labels",
        lambda s: s["fields"].append(
            {"name": "reviewer", "type": ["null", "string"], "default": None}
        ),
    )
    assert main(["--root", str(root), "status"]) == 1
    assert "register fraud.labels" in capsys.readouterr().err
    assert main(["--root", str(root), "register", "fraud.labels"]) == 0
    assert "registered fraud.labels-value v2 as id 10" in capsys.readouterr().out
