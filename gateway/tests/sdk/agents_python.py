"""Drives a running `solrouter dev` with the OpenAI Agents SDK (`openai-agents`): an
Agent on `OpenAIChatCompletionsModel` over an `AsyncOpenAI` client whose base URL is the
gateway, run by `Runner.run_streamed`, through the streamed-text and streamed-tool
cases of cases.json (see sdk_common.py); tracing off. The tool agent has the case's
tool as a Python function tool and stops at the first tool call (one model request per
case), so the tool's output is the run's final output. Checks the text or tool call and
the run's token usage against the recording; the SDK keeps neither the answer's id nor
`usage.cost`, so each cost is checked through the account's newest generation record."""

import asyncio
import json
from importlib.metadata import version

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallItem
from openai import AsyncOpenAI

from sdk_common import API, FUNCTIONS, KEY, check_calls, check_record, equal, latest_generation, main

set_tracing_disabled(True)


TOOLS = {name: function_tool(function, name_override=name) for name, function in FUNCTIONS.items()}


async def run_case(case):
    request, expect = case["request"], case["expect"]
    settings = ModelSettings(include_usage=True, temperature=request.get("temperature"), max_tokens=request.get("max_tokens"))
    agent = Agent(
        name="matrix",
        instructions=request.get("system"),
        # A client per case: each case runs in its own event loop.
        model=OpenAIChatCompletionsModel(model=case["model"], openai_client=AsyncOpenAI(base_url=API, api_key=KEY, max_retries=0, timeout=60)),
        model_settings=settings,
        tools=[TOOLS[name] for name in request.get("tools", [])],
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_streamed(agent, request["prompt"], max_turns=1)
    async for _ in result.stream_events():
        pass
    if case["kind"] == "stream_text":
        equal(result.final_output, expect["text"], "text")
    else:
        calls = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
        check_calls([(call.name, json.loads(call.arguments or "{}")) for call in calls], case)
        name, arguments = calls[0].name, json.loads(calls[0].arguments or "{}")
        equal(result.final_output, FUNCTIONS[name](**arguments), "the tool's output")
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
