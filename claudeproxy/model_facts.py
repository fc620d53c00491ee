"""Built-in model facts (context window, output cap, prices). Placeholder until the table lands. No I/O."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

PRICES_CHECKED = ""


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    context_window: Optional[int] = None
    max_output: Optional[int] = None
    input_price: Optional[float] = None
    output_price: Optional[float] = None
    cache_read_price: Optional[float] = None
    cache_write_price: Optional[float] = None
    responses_only: bool = False

    def merged(self, override: "ModelFacts") -> "ModelFacts":
        changes = {f.name: getattr(override, f.name) for f in dataclasses.fields(self)
                   if getattr(override, f.name) not in (None, False)}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}


_TABLE = {"o3": ModelFacts(200000, 100000), "gpt-4o": ModelFacts(128000, 16384), "gpt-4o-mini": ModelFacts(128000, 16384)}


def builtin_facts(model: str) -> ModelFacts:
    return _TABLE.get(model.lower(), ModelFacts())


def facts_from_dict(obj: Mapping[str, Any], path: str) -> ModelFacts:
    keys = {"context_window": "context_window", "max_output_tokens": "max_output", "max_output": "max_output",
            "input_price": "input_price", "output_price": "output_price", "cache_read_price": "cache_read_price",
            "cache_write_price": "cache_write_price", "responses_only": "responses_only"}
    out = {}
    for key, value in obj.items():
        if key not in keys:
            raise ValueError(f"{path}.{key}: unknown model fact")
        out[keys[key]] = value
    return ModelFacts(**out)
