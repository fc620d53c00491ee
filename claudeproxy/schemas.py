"""JSON-schema clean-up for tool parameters and structured output.

No I/O. Every upstream gets schemas without ``$schema`` (some backends reject
it); the ``gemini`` sanitizer also removes what Gemini's OpenAPI subset
refuses (PROTOCOL.md 5.9, FIELD-NOTES 9). Recursion depth is bounded by the
request nesting limit the handler enforces.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

# What a schema object may hold for Gemini: the fields of its Schema message, which its OpenAI endpoint
# parses tool parameters into, answering "Unknown name X ... Cannot find field" for any other key
# (oneOf, allOf, uniqueItems, multipleOf, prefixItems, ...) and "Proto field is not repeating" for a
# type list (zed#44875, zed#53919, kilocode#5333). Not title and default, which it has but older
# versions refused, and which tell the model little.
_GEMINI_KEYS = frozenset(
    {
        "type", "format", "description", "nullable", "enum", "maxItems", "minItems", "properties", "required",
        "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
        "propertyOrdering", "items", "minimum", "maximum",
    }
)
_GEMINI_FORMATS = frozenset({"enum", "date-time"})
# The Gemini type of an enum's value, by its exact class (a bool is no integer here).
_JSON_KIND = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}
# Keywords whose values are schemas, or maps / lists of schemas.
_SCHEMA_VALUED = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAX_REF_REPEAT = 2  # times one definition is inlined along one path
_MAX_INLINED_NODES = 20000  # nodes all inlined definitions may add to one schema
# ... and to all the tools of one request together: 600 tools of 20,000 each made a 1.1 MB request a
# 128 MB upstream body (22 s, 1.2 GB; the tool memo then kept 700 MB).
MAX_REQUEST_INLINED_NODES = 100000
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

    def __init__(self, defs: Dict[str, Any], budget: int = _MAX_INLINED_NODES) -> None:
        self.defs = defs
        self.budget = min(budget, _MAX_INLINED_NODES)
        self.flattened = False  # a definition was past the budget
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
            self.flattened = self.flattened or (bool(size) and size > self.budget)
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
    """One schema object in Gemini's terms (its children are already): what JSON Schema says with
    keywords Gemini lacks is said with the ones it has where that keeps the meaning, else left out."""
    out = dict(node)
    if "const" in out:
        out["enum"] = [out.pop("const")]
    _enum_of_strings(out)
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in out:
            value = out.pop(exclusive)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(inclusive, value)
    if "format" in out and not (isinstance(out["format"], str) and out["format"] in _GEMINI_FORMATS):
        del out["format"]
    _merge_all_of(out)
    _one_of_as_any_of(out)
    _tuple_as_items(out)
    _type_list_as_nullable(out)
    _null_member_as_nullable(out)
    if out.get("type") == "array" and not isinstance(out.get("items"), dict):
        # "items: missing field" (cline#7339): any item was allowed, so text items are allowed.
        out["items"] = {"type": "string"}
    fixed = {k: v for k, v in out.items() if k in _GEMINI_KEYS}
    if isinstance(fixed.get("required"), list) and isinstance(fixed.get("properties"), dict):
        # Gemini refuses a required name that is no property (one an allOf or a dropped key left).
        fixed["required"] = [name for name in fixed["required"] if isinstance(name, str) and name in fixed["properties"]]
        if not fixed["required"]:
            del fixed["required"]
    return fixed


def _enum_of_strings(out: Dict[str, Any]) -> None:
    """An enum as Gemini takes one: strings, on a string ("enum: only allowed for STRING type",
    "Invalid value at '...enum[1]' (TYPE_STRING), 2": an MCP server's integer choices failed every
    turn). A null member is ``nullable``; other values stay a number or a flag the model sends, the
    enum said in the description instead (a string "2" would fail the tool's own check)."""
    values = out.get("enum")
    if not isinstance(values, list):
        out.pop("enum", None)
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        out["enum"], out["type"] = values, "string"
        return
    del out["enum"]
    if not values:
        return
    kinds = {_JSON_KIND[type(v)] for v in values if type(v) in _JSON_KIND}
    if "type" not in out and len(kinds) == 1:
        out["type"] = kinds.pop()
    listed = ", ".join(json.dumps(v, ensure_ascii=False) for v in values)
    said = f"One of: {listed}." if len(values) > 1 else f"Always {listed}."
    description = out.get("description")
    out["description"] = f"{description} {said}" if isinstance(description, str) and description else said


def _merge_all_of(out: Dict[str, Any]) -> None:
    """allOf: every member's constraints on the one object (pydantic's wrapped $ref, zod's .and())."""
    members = out.pop("allOf", None)
    for member in members if isinstance(members, list) else ():
        if not isinstance(member, dict):
            continue
        for key, value in member.items():
            if key == "properties" and isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**value, **out[key]}
            elif key == "required" and isinstance(value, list) and isinstance(out.get(key), list):
                out[key] = out[key] + [name for name in value if name not in out[key]]
            else:
                _take(out, key, value)


def _take(out: Dict[str, Any], key: str, value: Any) -> None:
    """A merged member's keyword, where the object has none of its own; both descriptions are kept
    (the member's may say its choices: pydantic's Optional[IntEnum] with a Field description lost them)."""
    mine = out.get(key)
    if key == "description" and isinstance(mine, str) and isinstance(value, str) and value not in mine:
        out[key] = f"{mine} {value}" if mine else value
    else:
        out.setdefault(key, value)


def _one_of_as_any_of(out: Dict[str, Any]) -> None:
    """oneOf as anyOf: "exactly one" is "at least one" wherever the members exclude each other,
    as a tool's alternatives do."""
    members = out.pop("oneOf", None)
    if isinstance(members, list):
        out["anyOf"] = (out["anyOf"] if isinstance(out.get("anyOf"), list) else []) + members


def _tuple_as_items(out: Dict[str, Any]) -> None:
    """A tuple (prefixItems, or draft 4's list of items) as one item schema any of its members fits."""
    listed = out.pop("items") if isinstance(out.get("items"), list) else None
    tuple_ = out.pop("prefixItems", None)
    members = [m for m in (tuple_ if isinstance(tuple_, list) else listed) or () if isinstance(m, dict)]
    if members and "items" not in out:
        out["items"] = members[0] if len(members) == 1 else {"anyOf": members}


def _type_list_as_nullable(out: Dict[str, Any]) -> None:
    """"type": ["string", "null"] as "type": "string" with nullable; several types as anyOf."""
    kinds = out.get("type")
    if not isinstance(kinds, list):
        return
    named = [k for k in kinds if isinstance(k, str) and k != "null"]
    if "null" in kinds:
        out["nullable"] = True
    del out["type"]
    if len(named) == 1:
        out["type"] = named[0]
    elif named and "anyOf" not in out:
        out["anyOf"] = [{"type": kind} for kind in named]


def _null_member_as_nullable(out: Dict[str, Any]) -> None:
    """anyOf [X, {"type": "null"}] (pydantic's Optional[X]) as X with nullable."""
    members = out.get("anyOf")
    if not isinstance(members, list) or not any(isinstance(m, dict) and m.get("type") == "null" for m in members):
        return
    rest = [m for m in members if not (isinstance(m, dict) and m.get("type") == "null")]
    out["nullable"] = True
    del out["anyOf"]
    if len(rest) == 1 and isinstance(rest[0], dict):
        for key, value in rest[0].items():
            _take(out, key, value)
    elif rest:
        out["anyOf"] = rest


class InlineBudget:
    """Nodes the ``$ref`` inlining may still add, shared by the schemas of one request."""

    def __init__(self, left: int = MAX_REQUEST_INLINED_NODES) -> None:
        self.left = left
        self.flattened = False  # a $ref went as the loosest schema for want of budget: said once (chat_tools)


def sanitize_gemini(schema: Dict[str, Any], shared: Optional[InlineBudget] = None) -> Dict[str, Any]:
    defs: Dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    # The definitions themselves go (Gemini refuses $defs): inlined where they are, they would only
    # spend the budget.
    inliner = _RefInliner(defs, shared.left if shared is not None else _MAX_INLINED_NODES)
    inlined = inliner.inline({k: v for k, v in schema.items() if k not in ("$defs", "definitions")})
    if shared is not None:
        shared.left -= min(shared.left, _MAX_INLINED_NODES) - inliner.budget
        shared.flattened = shared.flattened or inliner.flattened
    return _walk(inlined, _gemini_fix)  # type: ignore[no-any-return]


def clean_schema(schema: Optional[Dict[str, Any]], sanitizer: str,
                 shared: Optional[InlineBudget] = None) -> Dict[str, Any]:
    """A tool's ``parameters``: meta keys stripped, an object schema given ``properties``
    (``shared``: the inlining budget of the request's other schemas)."""
    cleaned = strip_meta(schema or {})
    if sanitizer == "gemini":
        cleaned = sanitize_gemini(cleaned, shared)
    if cleaned.get("type", "object") == "object" and "properties" not in cleaned:
        cleaned["properties"] = {}
    cleaned.setdefault("type", "object")
    return cleaned
