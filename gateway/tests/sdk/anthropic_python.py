"""Drives a running `solrouter dev` with the official `anthropic` Python package through
the cases of cases.json whose kind is in SDK_KINDS (streamed text, streamed tool calls,
structured output through `output_config.format`, an image), with the gateway's root as base URL: Claude models answered natively by the
recorded Anthropic traffic, every other wire format translated to and from Anthropic's
shape. Started by tests/sdk.rs with SOLROUTER_BASE_URL, SOLROUTER_KEY,
SOLROUTER_ADMIN_TOKEN, SOLROUTER_ACCOUNT, SDK_CASES, SDK_FIXTURES and SDK_KINDS set.

For each case it checks what the SDK returns against the recording (text, the JSON it
parses to, tool-use ids, names and inputs, stop reason, usage), that `usage.cost` is present (in the final
`message_delta` of a stream) and equals the gateway's generation record, then that the
model list reads, errors come back as the SDK's typed errors and a stream broken
mid-answer raises with the cost of what it delivered, and at the end that the balance
fell by exactly the sum of the costs. Prints `RESULTS <json>` (the cases' answers) and
`OTHERS <json>` (the broken stream) for tests/sdk.rs; exits non-zero listing every
failed case."""

import json
import sys
from decimal import Decimal

import anthropic

from sdk_common import BASE, IMAGE_URL, KEY, KINDS, SPEC, available, equal, get, usd

# A case without a completion limit asks for as many tokens as the model allows (the
# gateway caps `max_tokens` at the model's output limit), as the OpenAI SDKs do by
# sending none.
MAX_TOKENS_ANY = 65536
# The cases a Messages request cannot ask for (tests/sdk.rs expects them skipped):
SKIPPED = {
    # `output_config.format` asks for a JSON schema only; DeepSeek's case wants just any
    # JSON object (`json_object`).
    "openai-compatible/structured",
    # Claude Sonnet 4 predates structured outputs, and a Claude model's Messages request
    # goes to Anthropic as sent, `output_config` included, which Anthropic refuses for
    # it; the recording answers the forced tool only the Chat Completions translation
    # sends.
    "anthropic/structured",
}
# OpenAI finish reasons of cases.json as Anthropic stop reasons.
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def image_source():
    media_type, data = IMAGE_URL.removeprefix("data:").split(";base64,")
    return {"type": "base64", "media_type": media_type, "data": data}


IMAGE_SOURCE = image_source()


def params(case):
    """The case as a Messages request. Claude's prompts are text blocks, as the recorded
    Anthropic requests sent them; others' a string, as the recorded OpenAI ones did."""
    request = case["request"]
    if request.get("image"):
        content = [
            {"type": "text", "text": request["prompt"]},
            {"type": "image", "source": IMAGE_SOURCE},
        ]
    elif case["provider"] == "anthropic":
        content = [{"type": "text", "text": request["prompt"]}]
    else:
        content = request["prompt"]
    out = {
        "model": case["model"],
        "max_tokens": request.get("max_tokens", MAX_TOKENS_ANY),
        "messages": [{"role": "user", "content": content}],
    }
    if "system" in request:
        out["system"] = request["system"]
    if "temperature" in request:
        # This SDK version no longer lists `temperature`; the API still takes it.
        out["extra_body"] = {"temperature": request["temperature"]}
    if "tools" in request:
        out["tools"] = [
            {"name": tool["name"], "description": tool["description"], "input_schema": tool["parameters"]}
            for tool in (SPEC["tools"][name] for name in request["tools"])
        ]
    format = request.get("response_format")
    if format is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": format["schema"]}}
    return out


def result_of(message, cost):
    text = "".join(block.text for block in message.content if block.type == "text")
    thinking = "".join(block.thinking for block in message.content if block.type == "thinking")
    calls = [
        {"id": block.id, "name": block.name, "input": block.input}
        for block in message.content
        if block.type == "tool_use"
    ]
    return {"id": message.id, "text": text, "thinking": thinking, "tool_calls": calls, "stop_reason": message.stop_reason,
            "usage": message.usage, "cost": cost}


def streamed(client, case):
    """Streams through the SDK's own accumulator; the cost is the final message_delta's."""
    cost = None
    with client.messages.stream(**params(case)) as stream:
        for event in stream:
            if event.type == "message_delta":
                cost = (event.usage.model_extra or {}).get("cost")
        message = stream.get_final_message()
    return result_of(message, cost)


def whole(client, case):
    message = client.messages.create(**params(case))
    return result_of(message, (message.usage.model_extra or {}).get("cost"))


def check(case, result):
    """Compares one answer with the case's expectations; returns its cost."""
    expect = case["expect"]
    equal(result["text"], expect["text"], "text")
    if "object" in expect:
        equal(json.loads(result["text"]), expect["object"], "object")
    equal(result["thinking"], expect.get("reasoning", ""), "thinking")
    equal(result["stop_reason"], STOP_REASONS[expect["finish_reason"]], "stop_reason")
    calls = expect.get("tool_calls", [])
    equal(
        [(call["name"], call["input"]) for call in result["tool_calls"]],
        [(call["name"], json.loads(call["arguments"])) for call in calls],
        "tool uses",
    )
    for got, wanted in zip(result["tool_calls"], calls):
        equal(got["id"], wanted["id"] or got["id"] or "a tool use id", "tool use id")
    usage = result["usage"]
    cached = usage.cache_read_input_tokens or 0
    counts = {
        "prompt_tokens": usage.input_tokens + cached + (usage.cache_creation_input_tokens or 0),
        "completion_tokens": usage.output_tokens,
        "cached_tokens": cached,
    }
    wanted = {name: expect["usage"][name] for name in counts}
    equal(counts, wanted, "usage")
    cost = result["cost"]
    assert isinstance(cost, (int, float)) and cost > 0, f"usage.cost {cost!r}"
    cost = usd(cost)
    if "cost" in expect:
        equal(cost, Decimal(expect["cost"]), "cost")
    equal(result["id"][:4], "gen-", "id")
    record = get(f"/v1/api/generation?id={result['id']}", KEY)["data"]
    equal(Decimal(record["cost_usd"]), cost, f"record {record}: cost")
    equal(
        (record["model"], record["status"], record["streamed"], record["tokens_prompt"], record["tokens_completion"]),
        (case["model"], 200, case["kind"].startswith("stream"), counts["prompt_tokens"], counts["completion_tokens"]),
        "record",
    )
    return cost


def check_models(client):
    """The model list, in Anthropic's shape, names the catalogue's models."""
    ids = [model.id for model in client.models.list()]
    assert "mock/echo" in ids and "anthropic/claude-sonnet-4" in ids, ids


def check_broken_stream(client):
    """A stream the provider breaks mid-answer raises the SDK's APIStatusError from the
    `error` event, which carries the cost of what was delivered; returns the answer's id
    and that cost."""
    request = {"model": "mock/echo", "max_tokens": 100,
               "messages": [{"role": "user", "content": "[[mock words=30 cut_after=6]] go"}]}
    text, generation = "", None
    try:
        with client.messages.stream(**request) as stream:
            for event in stream:
                if event.type == "message_start":
                    generation = event.message.id
                if event.type == "content_block_delta":
                    text += event.delta.text
    except anthropic.APIStatusError as error:
        equal(error.body["error"]["type"], "api_error", "error type")
        assert text, "nothing was delivered before the break"
        return {"id": generation, "cost": usd(error.body["usage"]["cost"])}
    raise AssertionError("the broken stream raised nothing")


def check_errors(client):
    """Refusals arrive as the SDK's typed errors, with Anthropic's error types."""
    request = {"model": "mock/echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    bad_key = anthropic.Anthropic(base_url=BASE, api_key="sr_bogus", max_retries=0)
    cases = [
        (bad_key, request, anthropic.AuthenticationError, "authentication_error"),
        (client, {**request, "model": "nobody/nothing"}, anthropic.NotFoundError, "not_found_error"),
        (client, {**request, "extra_body": {"top_k": 3}}, anthropic.BadRequestError, "invalid_request_error"),
    ]
    for sender, body, error_type, kind in cases:
        try:
            sender.messages.create(**body)
        except error_type as error:
            equal(error.body["error"]["type"], kind, f"{body}: error type")
            continue
        raise AssertionError(f"{body}: no {error_type.__name__}")


def main():
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=60)
    before = available()
    results, failures, total = [], [], Decimal(0)
    for case in SPEC["cases"]:
        if case["kind"] not in KINDS or case["id"] in SKIPPED:
            continue
        try:
            result = streamed(client, case) if case["kind"].startswith("stream") else whole(client, case)
            cost = check(case, result)
        except Exception as error:  # every case runs; all failures are reported
            failures.append(f"{case['id']}: {type(error).__name__}: {error}")
            continue
        total += cost
        results.append({"case": case["id"], "id": result["id"], "cost": str(cost)})
    others = []
    for check_more in (check_models, check_errors, check_broken_stream):
        try:
            other = check_more(client)
        except Exception as error:
            failures.append(f"{check_more.__name__}: {type(error).__name__}: {error}")
            continue
        if other is not None:
            total += other["cost"]
            others.append({"id": other["id"], "cost": str(other["cost"])})
    drop = before - available()
    if drop != total:
        failures.append(f"the balance fell by {drop}, the costs add up to {total}")
    print("RESULTS " + json.dumps(results))
    print("OTHERS " + json.dumps(others))
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"anthropic python sdk {anthropic.__version__} ok: {len(results)} answers, ${total}")


main()
