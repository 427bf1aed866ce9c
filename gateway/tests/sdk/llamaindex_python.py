"""Drives a running `solrouter dev` with LlamaIndex's OpenAI-like LLM
(`llama-index-llms-openai-like` OpenAILike, its API base set to the gateway) through
the cases of cases.json (see sdk_common.py): `stream_chat` for streamed text,
`stream_chat_with_tools` with a FunctionTool for streamed tool calls, `chat` with a
`response_format` for structured output and `chat` with an ImageBlock; then
`llama-index-embeddings-openai` OpenAIEmbedding on `mock/embed`. Checks the text, tool
calls, JSON and usage against the recording, and `usage.cost` of the raw answer (the
last chunk of a stream) against the gateway's record."""

import base64
import json
from importlib.metadata import version

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.openai_like import OpenAILike

from sdk_common import (
    API,
    FUNCTIONS,
    IMAGE_URL,
    KEY,
    SPEC,
    check_calls,
    check_embedding,
    check_record,
    equal,
    main,
)


def chat_messages(case):
    request = case["request"]
    out = []
    if "system" in request:
        out.append(ChatMessage(role="system", content=request["system"]))
    blocks = [TextBlock(text=request["prompt"])]
    if request.get("image"):
        header, data = IMAGE_URL.split(",", 1)
        mimetype = header.removeprefix("data:").removesuffix(";base64")
        blocks.append(ImageBlock(image=base64.b64decode(data), image_mimetype=mimetype))
    out.append(ChatMessage(role="user", blocks=blocks))
    return out


def function_tool(name):
    return FunctionTool.from_defaults(fn=FUNCTIONS[name], name=name, description=SPEC["tools"][name]["description"])


def run(case):
    request, expect = case["request"], case["expect"]
    options = {field: request[field] for field in ("temperature", "max_tokens") if field in request}
    llm = OpenAILike(
        model=case["model"],
        api_base=API,
        api_key=KEY,
        is_chat_model=True,
        is_function_calling_model=True,
        max_retries=0,
        timeout=60,
        **options,
    )
    if case["kind"] == "stream_text":
        for answer in llm.stream_chat(chat_messages(case)):
            pass
        equal(answer.message.content, expect["text"], "text")
    elif case["kind"] == "stream_tools":
        tools = [function_tool(name) for name in request["tools"]]
        # LlamaIndex asks for `parallel_tool_calls: false` by default.
        stream = llm.stream_chat_with_tools(tools, chat_history=chat_messages(case))
        for answer in stream:
            pass
        calls = llm.get_tool_calls_from_response(answer, error_on_no_tool_call=True)
        check_calls([(call.tool_name, call.tool_kwargs) for call in calls], case)
    elif case["kind"] == "structured":
        wanted = request["response_format"]
        if wanted["type"] == "json_object":
            response_format = {"type": "json_object"}
        else:
            schema = {key: wanted[key] for key in ("name", "description", "schema")}
            response_format = {"type": "json_schema", "json_schema": schema}
        answer = llm.chat(chat_messages(case), response_format=response_format)
        equal(json.loads(answer.message.content), expect["object"], "object")
    else:
        answer = llm.chat(chat_messages(case))
        equal(answer.message.content, expect["text"], "text")
    usage = answer.raw.usage
    wanted = expect["usage"]
    equal(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.completion_tokens_details.reasoning_tokens,
            usage.prompt_tokens_details.cached_tokens,
        ),
        (wanted["prompt_tokens"], wanted["completion_tokens"], wanted["reasoning_tokens"], wanted["cached_tokens"]),
        "usage",
    )
    return answer.raw.id, check_record(case, answer.raw.id, usage.cost)


def embeddings():
    texts = ["the first text to embed", "and a second one"]
    model = OpenAIEmbedding(model_name="mock/embed", api_base=API, api_key=KEY, max_retries=0, timeout=60)
    return check_embedding(model.get_text_embedding_batch(texts), texts)


main(f"llama-index-llms-openai-like {version('llama-index-llms-openai-like')}", run, [embeddings])
