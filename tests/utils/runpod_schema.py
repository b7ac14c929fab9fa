"""RunPod's published OpenAPI document for REST v2 (tests/fixtures/runpod_openapi_v2.json, structure
only) as a JSON Schema registry: `conforms(value, "Pod")` validates against one of its schemas,
`operation(method, path)` finds the documented operation a request is for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = Path(__file__).parents[1] / "fixtures" / "runpod_openapi_v2.json"
SPEC: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
REGISTRY = Registry().with_resource(
    "urn:runpod", Resource.from_contents(SPEC, default_specification=DRAFT202012))


def conforms(value: Any, schema: str | dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless `value` is valid for the named component schema
    (or an inline schema whose $refs point into the document)."""
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    # The document's refs are relative to it: point them at its registered copy.
    absolute = json.loads(json.dumps(schema).replace('"#/components/', '"urn:runpod#/components/'))
    jsonschema.Draft202012Validator(absolute, registry=REGISTRY,
                                    format_checker=jsonschema.FormatChecker()).validate(value)


def operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """(the documented path template, its operation) for a request; KeyError when the document
    has no such operation."""
    for template, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise KeyError(f"{method} {path} is not in RunPod's document")


def parameters(template: str, op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The operation's parameters by name (path-level ones included, $refs resolved)."""
    found = [*SPEC["paths"][template].get("parameters", []), *op.get("parameters", [])]
    resolved = [SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                if "$ref" in p else p for p in found]
    return {p["name"]: p for p in resolved}
