"""JSON-schema clean-up for tool parameters and structured output.

No I/O. Every upstream gets schemas without ``$schema`` (some backends reject
it); the ``gemini`` sanitizer also removes what Gemini's OpenAPI subset
refuses (PROTOCOL.md 5.9, FIELD-NOTES 9). Recursion depth is bounded by the
request nesting limit the handler enforces.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

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
_MAX_REF_REPEAT = 2  # times one definition is inlined along one path
_MAX_INLINED_NODES = 20000  # nodes all inlined definitions may add to one schema
_MAX_REF_CHAIN = 16  # definitions inlined one inside another
# Levels of objects and lists in the result: each definition may be nested as deep as the door lets
# a request be (door.MAX_NESTING), and 16 of them inside one another would reach the recursion limit
# of the walks after this one.
_MAX_OUTPUT_DEPTH = 200


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


class _RefInliner:
    """Replaces local ``$ref``s to ``#/$defs/X`` / ``#/definitions/X`` by the definition.

    Bounded twice. A definition is inlined at most ``_MAX_REF_REPEAT`` times along one path
    (a recursive filter tree gets one level of itself, then the loosest schema). And the whole
    schema gets at most ``_MAX_INLINED_NODES`` nodes out of the definitions: a definition that
    refers to itself (or to another) k times would otherwise be copied k^depth times -- a
    600-byte tool took gigabytes -- so past the budget every further ``$ref`` is the loosest
    schema too. Without refs, the copy is as large as the input, whose size the door bounds.
    """

    def __init__(self, defs: Dict[str, Any]) -> None:
        self.defs = defs
        self.budget = _MAX_INLINED_NODES
        self.sizes: Dict[str, int] = {}  # each definition counted once, however often it is named

    def inline(self, node: Any, path: Tuple[str, ...] = (), depth: int = 0) -> Any:
        if depth > _MAX_OUTPUT_DEPTH:
            return {"type": "object"}  # what is deeper than the translators may walk: the loosest schema
        if isinstance(node, list):
            return [self.inline(item, path, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._resolved(node, ref, path, depth)
        return {k: self.inline(v, path, depth + 1) for k, v in node.items()}

    def _resolved(self, node: Dict[str, Any], ref: str, path: Tuple[str, ...], depth: int) -> Any:
        name = ref.rsplit("/", 1)[-1]
        target = self.defs.get(name)
        if name not in self.sizes:
            self.sizes[name] = _nodes(target) if isinstance(target, dict) else 0
        size = self.sizes[name]
        if not size or path.count(name) >= _MAX_REF_REPEAT or len(path) >= _MAX_REF_CHAIN or size > self.budget:
            # Unresolvable, recursive, a chain too long or past the budget: the loosest schema Gemini takes.
            return {"type": "object"}
        self.budget -= size
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}  # type: ignore[dict-item]
        return self.inline(merged, path + (name,), depth)


def _nodes(value: Any, most: int = _MAX_INLINED_NODES + 1) -> int:
    """How many objects, lists and values ``value`` holds (counted up to ``most``)."""
    count, stack = 0, [value]
    while stack and count < most:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


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
    # The definitions themselves go (Gemini refuses $defs): inlined where they are, they would only
    # spend the budget.
    inlined = _RefInliner(defs).inline({k: v for k, v in schema.items() if k not in ("$defs", "definitions")})
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
