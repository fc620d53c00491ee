"""JSON-schema clean-up for tool parameters and structured output.

No I/O. Every upstream gets schemas without ``$schema`` (some backends reject
it); the ``gemini`` sanitizer also removes what Gemini's OpenAPI subset
refuses (PROTOCOL.md 5.9, FIELD-NOTES 9). Recursion depth is bounded by the
request nesting limit the handler enforces.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

# Keys Gemini's OpenAI endpoint answers "Unknown name" for.
_GEMINI_DROP = frozenset(
    {
        "$schema", "$id", "$ref", "$defs", "definitions", "$comment", "additionalProperties",
        "default", "examples", "title", "patternProperties", "if", "then", "else", "not",
        "propertyNames", "unevaluatedProperties", "dependentRequired", "dependentSchemas",
    }
)
_GEMINI_FORMATS = frozenset({"enum", "date-time"})
# Keywords whose values are schemas, or maps / lists of schemas.
_SCHEMA_VALUED = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAX_REF_DEPTH = 16


def strip_meta(schema: Dict[str, Any]) -> Dict[str, Any]:
    """``schema`` without ``$schema`` at any depth (input left unchanged)."""
    return _walk(schema, lambda node: {k: v for k, v in node.items() if k != "$schema"})


def _walk(node: Any, fix: Any) -> Any:
    """Apply ``fix`` to every schema object, children first."""
    if not isinstance(node, dict):
        return node
    out: Dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _walk(sub, fix) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_walk(sub, fix) for sub in value]
        elif key in _SCHEMA_VALUED:
            out[key] = [_walk(s, fix) for s in value] if isinstance(value, list) else _walk(value, fix)
        else:
            out[key] = value
    return fix(out)


def _inline_refs(node: Any, defs: Dict[str, Any], depth: int = 0) -> Any:
    """Replace local ``$ref``s to ``#/$defs/X`` / ``#/definitions/X`` by the definition."""
    if isinstance(node, list):
        return [_inline_refs(item, defs, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and depth < _MAX_REF_DEPTH:
        target = defs.get(ref.rsplit("/", 1)[-1])
        if isinstance(target, dict):
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline_refs(merged, defs, depth + 1)
    if isinstance(ref, str):
        return {"type": "object"}  # unresolvable or recursive: the loosest schema Gemini takes
    return {k: _inline_refs(v, defs, depth) for k, v in node.items()}


def _gemini_fix(node: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in node.items() if k not in _GEMINI_DROP}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in out:
            value = out.pop(exclusive)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(inclusive, value)
    if "format" in out and out["format"] not in _GEMINI_FORMATS:
        del out["format"]
    return out


def sanitize_gemini(schema: Dict[str, Any]) -> Dict[str, Any]:
    defs: Dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    inlined = _inline_refs(schema, defs)
    return _walk(inlined, _gemini_fix)  # type: ignore[no-any-return]


def clean_schema(schema: Optional[Dict[str, Any]], sanitizer: str) -> Dict[str, Any]:
    """A tool's ``parameters``: meta keys stripped, an object schema given ``properties``."""
    cleaned = strip_meta(schema or {})
    if sanitizer == "gemini":
        cleaned = sanitize_gemini(cleaned)
    if cleaned.get("type", "object") == "object" and "properties" not in cleaned:
        cleaned["properties"] = {}
    cleaned.setdefault("type", "object")
    return cleaned
