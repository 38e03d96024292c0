"""Hypothesis strategies for values of a fastavro-parsed schema, shared by the schema tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def avro_values(
    parsed: dict[str, Any],
    primitives: dict[str, st.SearchStrategy[Any]],
    keys: st.SearchStrategy[str],
    collection_size_max: int,
) -> st.SearchStrategy[Any]:
    """Values valid for ``parsed``, with each primitive type drawn from ``primitives``
    and map keys from ``keys``."""
    names: dict[str, Any] = parsed.get("__named_schemas", {})

    def build(schema: Any) -> st.SearchStrategy[Any]:
        if isinstance(schema, str) and schema in names:
            schema = names[schema]
        if isinstance(schema, list):
            return st.one_of([build(branch) for branch in schema])
        kind = schema["type"] if isinstance(schema, dict) else schema
        if kind == "record":
            return st.fixed_dictionaries({f["name"]: build(f["type"]) for f in schema["fields"]})
        if kind == "array":
            return st.lists(build(schema["items"]), max_size=collection_size_max)
        if kind == "map":
            return st.dictionaries(keys, build(schema["values"]), max_size=collection_size_max)
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "fixed":
            return st.binary(min_size=schema["size"], max_size=schema["size"])
        return primitives[kind]

    return build(parsed)
