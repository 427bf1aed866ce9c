"""Drives a running `solrouter dev` with the OpenAI Agents SDK (`openai-agents`): an
Agent on `OpenAIChatCompletionsModel` over an `AsyncOpenAI` client whose base URL is the
gateway, through the streamed-text, streamed-tool, structured-output and image cases of
cases.json (see sdk_common.py); tracing off. Streamed cases run by `Runner.run_streamed`:
the tool agent has the case's tool as a Python function tool and stops at the first
tool call (one model request per case), so the tool's output is the run's final output.
The others run by `Runner.run`: an image as an `input_image` item, structured output as
an `output_type` Pydantic model of the case's schema (for a case wanting a JSON object,
which its model (DeepSeek R1) has instead of JSON schemas, the SDK's `extra_body` asks
for `json_object` and the same model validates the text). Checks the text, tool call or
object and the run's token usage against the recording; the SDK keeps neither the
answer's id nor `usage.cost`, so each cost is checked through the account's newest
generation record."""

import asyncio
import json
from importlib.metadata import version

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallItem
from openai import AsyncOpenAI

from sdk_common import API, FUNCTIONS, IMAGE_URL, KEY, check_calls, check_record, equal, latest_generation, main, model_of

set_tracing_disabled(True)


TOOLS = {name: function_tool(function, name_override=name) for name, function in FUNCTIONS.items()}


def user_input(request):
    """The case's prompt as the run's input: text, or a message with the image."""
    if not request.get("image"):
        return request["prompt"]
    content = [{"type": "input_text", "text": request["prompt"]}, {"type": "input_image", "image_url": IMAGE_URL}]
    return [{"role": "user", "content": content}]


async def run_case(case):
    request, expect = case["request"], case["expect"]
    wanted = request.get("response_format")
    output_type, extra_body = None, None
    if wanted is not None:
        output_type = model_of(wanted["name"], wanted["schema"])
        if wanted["type"] == "json_object":
            output_type, extra_body = None, {"response_format": {"type": "json_object"}}
    settings = ModelSettings(
        include_usage=True, temperature=request.get("temperature"), max_tokens=request.get("max_tokens"), extra_body=extra_body
    )
    agent = Agent(
        name="matrix",
        instructions=request.get("system"),
        # A client per case: each case runs in its own event loop.
        model=OpenAIChatCompletionsModel(model=case["model"], openai_client=AsyncOpenAI(base_url=API, api_key=KEY, max_retries=0, timeout=60)),
        model_settings=settings,
        tools=[TOOLS[name] for name in request.get("tools", [])],
        tool_use_behavior="stop_on_first_tool",
        output_type=output_type,
    )
    if case["kind"].startswith("stream"):
        result = Runner.run_streamed(agent, user_input(request), max_turns=1)
        async for _ in result.stream_events():
            pass
    else:
        result = await Runner.run(agent, user_input(request), max_turns=1)
    if case["kind"] == "stream_tools":
        calls = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
        check_calls([(call.name, json.loads(call.arguments or "{}")) for call in calls], case)
        name, arguments = calls[0].name, json.loads(calls[0].arguments or "{}")
        equal(result.final_output, FUNCTIONS[name](**arguments), "the tool's output")
    elif case["kind"] == "structured":
        answer = result.final_output
        if output_type is None:
            answer = model_of(wanted["name"], wanted["schema"]).model_validate_json(answer)
        equal(answer.model_dump(), expect["object"], "object")
    else:
        equal(result.final_output, expect["text"], "text")
    usage = result.context_wrapper.usage
    wanted = expect["usage"]
    equal(
        (usage.input_tokens, usage.output_tokens, usage.output_tokens_details.reasoning_tokens, usage.input_tokens_details.cached_tokens),
        (wanted["prompt_tokens"], wanted["completion_tokens"], wanted["reasoning_tokens"], wanted["cached_tokens"]),
        "usage",
    )
    generation = latest_generation()
    return generation, check_record(case, generation)


def run(case):
    return asyncio.run(run_case(case))


main(f"openai-agents {version('openai-agents')}", run)
