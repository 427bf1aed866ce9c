"""Drives a running `solrouter dev` with the official `openai` Python package through every
case of cases.json: streamed text, streamed tool calls, structured output and an image,
to each provider wire format behind the gateway (answered by a fixture upstream with
recorded provider traffic). Started by tests/sdk.rs with SOLROUTER_BASE_URL,
SOLROUTER_KEY, SOLROUTER_ADMIN_TOKEN, SOLROUTER_ACCOUNT, SDK_CASES, SDK_FIXTURES and
SDK_KINDS (the case kinds to run) set.

For each case it checks what the SDK returns against the recording (text, tool-call ids,
names and arguments, parsed JSON, finish reason, usage), that `usage.cost` is present
and equals the gateway's generation record, and at the end that the balance fell by
exactly the sum of the costs (the case loop of sdk_common.py). Prints `RESULTS <json>`
for tests/sdk.rs; exits non-zero listing every failed case."""


import openai

from sdk_common import API, KEY, check_answer, check_record, equal, main, messages, tools


def params(case):
    request = case["request"]
    out = {"model": case["model"], "messages": messages(case)}
    for field in ("temperature", "max_tokens"):
        if field in request:
            out[field] = request[field]
    if "tools" in request:
        out["tools"] = tools(case)
    if "response_format" in request:
        wanted = request["response_format"]
        if wanted["type"] == "json_object":
            out["response_format"] = {"type": "json_object"}
        else:
            schema = {key: wanted[key] for key in ("name", "description", "schema")}
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
    if case["kind"].startswith("stream"):
        out["stream"] = True
    return out


def streamed(stream):
    """Assembles a stream the way a client does: text, tool calls by index, usage."""
    result = {"id": None, "text": "", "reasoning": "", "tool_calls": [], "finish_reason": None, "usage": None}
    for chunk in stream:
        result["id"] = result["id"] or chunk.id
        for choice in chunk.choices:
            delta = choice.delta
            result["text"] += delta.content or ""
            # The gateway's `reasoning` (OpenRouter's field), which the SDK keeps as an extra.
            result["reasoning"] += (delta.model_extra or {}).get("reasoning") or ""
            for call in delta.tool_calls or []:
                while len(result["tool_calls"]) <= call.index:
                    result["tool_calls"].append({"id": "", "name": "", "arguments": ""})
                entry = result["tool_calls"][call.index]
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                result["finish_reason"] = choice.finish_reason
        if chunk.usage is not None:
            result["usage"] = chunk.usage
    return result


def whole(completion):
    choice = completion.choices[0]
    calls = [
        {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
        for call in choice.message.tool_calls or []
    ]
    return {
        "id": completion.id,
        "text": choice.message.content or "",
        "reasoning": (choice.message.model_extra or {}).get("reasoning") or "",
        "tool_calls": calls,
        "finish_reason": choice.finish_reason,
        "usage": completion.usage,
    }


def check(case, result):
    """Compares one answer with the case's expectations; returns its cost."""
    expect = case["expect"]
    check_answer(expect, result)
    usage = result["usage"]
    assert usage is not None, "no usage"
    counts = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens,
        "cached_tokens": usage.prompt_tokens_details.cached_tokens,
    }
    equal(counts, expect["usage"], "usage")
    cost = getattr(usage, "cost", None)
    assert isinstance(cost, (int, float)) and cost > 0, f"usage.cost {cost!r}"
    return check_record(case, result["id"], cost)


def run(client, case):
    expect = case["expect"]
    if "error" in expect:
        try:
            client.chat.completions.create(**params(case))
        except openai.APIStatusError as error:
            wanted = expect["error"]
            equal((error.status_code, error.body["param"]), (wanted["status"], wanted["param"]), "error")
            return None
        raise AssertionError("the request succeeded")
    answer = client.chat.completions.create(**params(case))
    result = streamed(answer) if case["kind"].startswith("stream") else whole(answer)
    return result["id"], check(case, result)


CLIENT = openai.OpenAI(base_url=API, api_key=KEY, max_retries=0, timeout=60)
main(f"openai python sdk {openai.__version__}", lambda case: run(CLIENT, case))
