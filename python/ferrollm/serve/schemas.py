"""Request bodies of the OpenAI API as pydantic models: the fields OpenAI defines plus
llama.cpp's sampling extras. Unknown fields and wrong types are refused (HTTP 400 with the
field named), never silently ignored."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: StrictBool = False


class JsonSchemaFormat(Strict):
    name: StrictStr
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(Strict):
    """OpenAI's ``text`` / ``json_object`` / ``json_schema``; ``schema`` beside ``json_object``
    is llama-cpp-python's spelling of a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


Number = Union[StrictInt, float]


class Sampling(Strict):
    """Fields both endpoints share."""

    model: StrictStr | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    top_k: Annotated[StrictInt, Field(ge=0)] = 40
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    repeat_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys are token ids; {key!r} is not one")
        return bias

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None  # only 1: no server-side ranking

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]  # one prompt of token ids
        return list(p)  # several prompts, text or token ids


class ContentPart(BaseModel):
    """A content part: text, or any other kind (image_url, input_audio, ...), which the chat
    renderer refuses with a message that names it (not a schema error about strings)."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class FunctionCall(Strict):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends it


class ToolCall(Strict):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Strict):
    # "function": the legacy spelling of a tool result (with the function's name)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    # The legacy spelling of one call; answers with one call carry it beside tool_calls, so a
    # client that sends an answer back sends both.
    function_call: FunctionCall | None = None
    tool_call_id: StrictStr | None = None  # the call a tool message answers

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        for field in ("tool_calls", "function_call"):
            if getattr(self, field) is not None and self.role != "assistant":
                raise ValueError(f"{field} belongs to assistant messages, not {self.role!r} ones")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id belongs to tool messages, not {self.role!r} ones")
        return self

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            if all(part.type == "text" for part in content):
                content = "".join(part.text or "" for part in content)
            else:  # as sent: the renderer refuses it, naming the part
                content = [part.model_dump(exclude_none=True) for part in content]
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        # "" rather than None: a Jinja template would print None as "None".
        out: dict[str, Any] = {"role": role, "content": content or ""}
        calls = self.tool_calls
        if not calls and self.function_call is not None:
            calls = [ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=self.function_call)]
        if calls:
            out["tool_calls"] = [call.model_dump() for call in calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and role == "tool":
            out["name"] = self.name
        return out


class FunctionDef(Strict):
    name: Annotated[StrictStr, Field(min_length=1)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: StrictBool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: StrictStr


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDef] | None = None  # the legacy spelling of tools
    function_call: Literal["auto", "none"] | FunctionName | None = None
    parallel_tool_calls: StrictBool = True
    # The tools as the client wrote them (checked above): templates print them as JSON, so a
    # re-dumped model's key order would change the prompt.
    _sent_tools: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_sent_tools(cls, data: Any, handler: Any) -> ChatRequest:
        request = handler(data)
        if isinstance(data, dict):
            request.keep_sent_tools(data)
        return request

    def keep_sent_tools(self, data: dict[str, Any]) -> None:
        self._sent_tools = {k: data[k] for k in ("tools", "functions") if data.get(k) is not None}

    def tool_request(self) -> dict[str, Any]:
        """The tool fields as ``Llama.prepare_chat`` takes them."""
        fields = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
        return {**{name: _plain(getattr(self, name)) for name in fields}, **self._sent_tools}

    def limit(self) -> int:
        """0: until the context is full."""
        value = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return value or 0


def _plain(value: Any) -> Any:
    """A field's value as plain JSON data (lists and dicts rather than models)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


class TokenizeRequest(Strict):
    content: StrictStr
    add_special: StrictBool = False
    with_pieces: StrictBool = False


class DetokenizeRequest(Strict):
    tokens: list[StrictInt]
