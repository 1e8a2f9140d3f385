"""The JSON Schema of a config, with every registered pattern's own fields (for editors)."""

from __future__ import annotations

from typing import Any

from prunekit.config.model import PruningConfig
from prunekit.plugins.default import default_host
from prunekit.plugins.host import PluginHost


def config_json_schema(host: PluginHost | None = None) -> dict[str, Any]:
    """The JSON Schema of a config, with every registered pattern's own fields.

    Each pattern's options are added under an ``if`` on the ``pattern`` field (its exact
    name, or its family grammar), and ``unevaluatedProperties: false`` keeps unknown keys
    out, so editors can complete and check configs, plugin fields included.
    """
    schema = PruningConfig.model_json_schema(by_alias=False)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    properties = schema.setdefault("properties", {})
    properties["pruning_type"] = {
        "$ref": "#/properties/criterion",
        "description": "INC's name for 'criterion'.",
    }
    schema.pop("additionalProperties", None)
    schema["unevaluatedProperties"] = False
    names: list[str] = []
    families: list[dict[str, str]] = []
    branches: list[dict[str, Any]] = []
    defs = schema.setdefault("$defs", {})
    for entry in (host or default_host()).patterns.entries():
        if entry.spec is not None:
            # JSON Schema regexes are ECMA-262: named groups are written (?<name>...).
            regex = "^(?:" + entry.spec.pattern.replace("(?P<", "(?<") + ")$"
            families.append({"pattern": regex, "description": f"{entry.name}: {entry.description}"})
            condition: dict[str, Any] = {"pattern": regex}
        else:
            names.append(entry.name)
            condition = {"const": entry.name}
        option_schema = entry.obj.Options.model_json_schema()
        option_properties = option_schema.get("properties", {})
        if not option_properties:
            continue
        defs.update(option_schema.pop("$defs", {}))
        branches.append(
            {
                "if": {"properties": {"pattern": condition}},
                "then": {"properties": option_properties},
            }
        )
    properties["pattern"]["anyOf"] = [*([{"enum": names}] if names else []), *families]
    if branches:
        schema["allOf"] = branches
    return schema
