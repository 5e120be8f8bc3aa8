"""Tool-call requests and the check of a returned call, shared by the tool suites."""

from __future__ import annotations

import json

import jsonschema

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def check_call(call: dict, name: str | None = None) -> dict:
    assert set(call) == {"id", "type", "function"} and call["type"] == "function"
    assert call["id"].startswith("call_")
    assert set(call["function"]) == {"name", "arguments"}
    assert isinstance(call["function"]["arguments"], str)
    arguments = json.loads(call["function"]["arguments"])
    if name is not None:
        assert call["function"]["name"] == name
    if call["function"]["name"] == "get_weather":
        jsonschema.validate(arguments, WEATHER)
    return arguments
