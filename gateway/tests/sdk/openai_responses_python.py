"""Drives a running `solrouter dev` with the official `openai` Python package through the
Responses API (`client.responses.create`, plain and `stream=True`, and the
`client.responses.stream` helper, which checks the event sequence's consistency) for
every case of cases.json: streamed text, streamed function calls, structured output
(`text.format`) and an image input, to each provider wire format behind the gateway
(answered by a fixture upstream with recorded provider traffic). Started by
tests/sdk.rs with SOLROUTER_BASE_URL, SOLROUTER_KEY, SOLROUTER_ADMIN_TOKEN,
SOLROUTER_ACCOUNT, SDK_CASES, SDK_FIXTURES and SDK_KINDS set.

Each function call answer is followed by the round trip's second request (the call and
its `function_call_output` in `input`) to `mock/echo`, which answers the question again;
those answers are listed as OTHERS. For each answer it checks what the SDK returns
against the recording (text, call ids, names and arguments, parsed JSON, status, usage),
that `usage.cost` equals the gateway's generation record, and at the end that the
balance fell by exactly the sum of the costs. Prints `RESULTS <json>` and `OTHERS
<json>` for tests/sdk.rs; exits non-zero listing every failed case."""

import json
import sys
from decimal import Decimal

import openai

from sdk_common import BASE, IMAGE_URL, KEY, KINDS, SPEC, available, check_answer, equal, get, usd

# Answers the round trip's second request: the built-in mock, echoing the question (it
# takes no tools, so the request declares none; tests/responses.rs declares them to
# models that take them).
ECHO = "mock/echo"


def tools(request):
    return [{"type": "function", **SPEC["tools"][name]} for name in request.get("tools", [])]


def params(case):
    request = case["request"]
    if request.get("image"):
        content = [
            {"type": "input_text", "text": request["prompt"]},
            {"type": "input_image", "image_url": IMAGE_URL},
        ]
        input_ = [{"role": "user", "content": content}]
    else:
        input_ = request["prompt"]
    out = {"model": case["model"], "input": input_}
    if "system" in request:
        out["instructions"] = request["system"]
    if "temperature" in request:
        out["temperature"] = request["temperature"]
    if "max_tokens" in request:
        out["max_output_tokens"] = request["max_tokens"]
    if "tools" in request:
        out["tools"] = tools(request)
    if "response_format" in request:
        wanted = request["response_format"]
        if wanted["type"] == "json_object":
            out["text"] = {"format": {"type": "json_object"}}
        else:
            schema = {key: wanted[key] for key in ("name", "description", "schema")}
            out["text"] = {"format": {"type": "json_schema", **schema}}
    return out


def read(response):
    """What a whole `response` holds: text, function calls, how it ended, usage."""
    calls = [
        {"id": item.call_id, "name": item.name, "arguments": item.arguments}
        for item in response.output
        if item.type == "function_call"
    ]
    if response.status == "incomplete":
        finish = "length"
    else:
        equal(response.status, "completed", "status")
        finish = "tool_calls" if calls else "stop"
    return {
        "id": response.id,
        "text": response.output_text,
        "tool_calls": calls,
        "finish_reason": finish,
        "usage": response.usage,
        "output": response.output,
    }


def streamed(events):
    """Assembles a raw event stream the way a client does, and checks it against the
    final response: the same text and calls, every event numbered in order."""
    text, calls, final, sequence = "", {}, None, 0
    for event in events:
        equal(event.sequence_number, sequence, f"{event.type}: sequence_number")
        sequence += 1
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.output_item.added" and event.item.type == "function_call":
            calls[event.output_index] = {"id": event.item.call_id, "name": event.item.name, "arguments": ""}
        elif event.type == "response.function_call_arguments.delta":
            calls[event.output_index]["arguments"] += event.delta
        elif event.type == "response.completed":
            final = event.response
        elif event.type in ("error", "response.failed"):
            raise AssertionError(f"the stream failed: {event}")
    assert final is not None, "no response.completed"
    result = read(final)
    equal(text, result["text"], "streamed text")
    equal([calls[index] for index in sorted(calls)], result["tool_calls"], "streamed calls")
    return result


def helper_streamed(client, case):
    """The same through the SDK's `responses.stream` helper, which accumulates the
    events into the final response and raises on any inconsistency among them."""
    with client.responses.stream(**params(case)) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    result = read(final)
    equal(text, result["text"], "streamed text")
    return result


def charged(result, model, streamed_):
    """`usage.cost` of an answer, checked against its generation record."""
    cost = getattr(result["usage"], "cost", None)
    assert isinstance(cost, (int, float)) and cost > 0, f"usage.cost {cost!r}"
    cost = usd(cost)
    record = get(f"/v1/api/generation?id={result['id']}", KEY)["data"]
    equal(Decimal(record["cost_usd"]), cost, f"record {record}: cost")
    equal(
        (record["model"], record["status"], record["streamed"], record["tokens_prompt"], record["tokens_completion"]),
        (model, 200, streamed_, result["usage"].input_tokens, result["usage"].output_tokens),
        "record",
    )
    return cost


def check(case, result):
    """Compares one answer with the case's expectations; returns its cost."""
    expect = case["expect"]
    check_answer(expect, result)
    usage = result["usage"]
    counts = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "reasoning_tokens": usage.output_tokens_details.reasoning_tokens,
        "cached_tokens": usage.input_tokens_details.cached_tokens,
    }
    equal(counts, expect["usage"], "usage")
    cost = charged(result, case["model"], case["kind"].startswith("stream"))
    if "cost" in expect:
        equal(cost, Decimal(expect["cost"]), "cost")
    return cost


def round_trip(client, case, result):
    """The second request of a function call round trip: the answer's output items as
    the SDK gave them (reasoning, text, calls), each call's output, then the echo of the
    question."""
    request = case["request"]
    input_ = [{"role": "user", "content": request["prompt"]}]
    input_ += [item.model_dump(exclude_none=True) for item in result["output"]]
    input_ += [
        {"type": "function_call_output", "call_id": call["id"], "output": json.dumps({"answer": 42})}
        for call in result["tool_calls"]
    ]
    answer = read(client.responses.create(model=ECHO, input=input_))
    equal(answer["text"], request["prompt"], "the round trip's answer")
    equal(answer["finish_reason"], "stop", "the round trip's end")
    return answer["id"], charged(answer, ECHO, False)


def run(client, case):
    """One case: its answer's id and cost, and the round trip's (id, cost) if any."""
    kind = case["kind"]
    if kind == "stream_text":
        result = streamed(client.responses.create(**params(case), stream=True))
    elif kind == "stream_tools":
        result = helper_streamed(client, case)
    else:
        result = read(client.responses.create(**params(case)))
    cost = check(case, result)
    other = round_trip(client, case, result) if result["tool_calls"] else None
    return (result["id"], cost), other


def main():
    client = openai.OpenAI(base_url=BASE + "/v1/api", api_key=KEY, max_retries=0, timeout=60)
    before = available()
    results, others, failures, total = [], [], [], Decimal(0)
    for case in SPEC["cases"]:
        if case["kind"] not in KINDS or "error" in case["expect"]:
            continue
        try:
            (generation, cost), other = run(client, case)
        except Exception as error:  # every case runs; all failures are reported
            failures.append(f"{case['id']}: {type(error).__name__}: {error}")
            continue
        total += cost
        results.append({"case": case["id"], "id": generation, "cost": str(cost)})
        if other is not None:
            total += other[1]
            others.append({"id": other[0], "cost": str(other[1])})
    drop = before - available()
    if drop != total:
        failures.append(f"the balance fell by {drop}, the costs add up to {total}")
    print("RESULTS " + json.dumps(results))
    print("OTHERS " + json.dumps(others))
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"openai python sdk {openai.__version__} (Responses) ok: {len(results)} answers, {len(others)} round trips, ${total}")


main()
