"""Drives a running `solrouter dev` with the official `openai` Python package through every
case of cases.json: streamed text, streamed tool calls, structured output and an image,
to each provider wire format behind the gateway (answered by a fixture upstream with
recorded provider traffic). Started by tests/sdk.rs with SOLROUTER_BASE_URL,
SOLROUTER_KEY, SOLROUTER_ADMIN_TOKEN, SOLROUTER_ACCOUNT, SDK_CASES, SDK_FIXTURES and
SDK_KINDS (the case kinds to run) set.

For each case it checks what the SDK returns against the recording (text, tool-call ids,
names and arguments, parsed JSON, finish reason, usage), that `usage.cost` is present
and equals the gateway's generation record, and at the end that the balance fell by
exactly the sum of the costs. Prints `RESULTS <json>` for tests/sdk.rs; exits non-zero
listing every failed case."""

import json
import os
import sys
import urllib.request
from decimal import Decimal

import openai

BASE = os.environ["SOLROUTER_BASE_URL"]
KEY = os.environ["SOLROUTER_KEY"]
ADMIN = os.environ["SOLROUTER_ADMIN_TOKEN"]
ACCOUNT = os.environ["SOLROUTER_ACCOUNT"]
with open(os.environ["SDK_CASES"], encoding="utf-8") as file:
    SPEC = json.load(file)
FIXTURES = os.environ["SDK_FIXTURES"]
KINDS = os.environ["SDK_KINDS"].split(",")


def pointer(value, path):
    for token in path.split("/")[1:]:
        value = value[int(token)] if isinstance(value, list) else value[token]
    return value


def load_image():
    with open(os.path.join(FIXTURES, SPEC["image"]["file"]), encoding="utf-8") as file:
        return pointer(json.load(file), SPEC["image"]["pointer"])


IMAGE_URL = load_image()


def get(path, bearer):
    request = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + bearer})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def available():
    return Decimal(get(f"/v1/admin/accounts/{ACCOUNT}", ADMIN)["available"])


def usd(cost):
    """A usage.cost number as an exact decimal (costs here have at most 12 decimals)."""
    return Decimal(repr(cost)).quantize(Decimal("1e-12"))


def params(case):
    request = case["request"]
    messages = []
    if "system" in request:
        messages.append({"role": "system", "content": request["system"]})
    if request.get("image"):
        content = [
            {"type": "text", "text": request["prompt"]},
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        ]
    else:
        content = request["prompt"]
    messages.append({"role": "user", "content": content})
    out = {"model": case["model"], "messages": messages}
    for field in ("temperature", "max_tokens"):
        if field in request:
            out[field] = request[field]
    if "tools" in request:
        out["tools"] = [{"type": "function", "function": SPEC["tools"][name]} for name in request["tools"]]
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
    result = {"id": None, "text": "", "tool_calls": [], "finish_reason": None, "usage": None}
    for chunk in stream:
        result["id"] = result["id"] or chunk.id
        for choice in chunk.choices:
            delta = choice.delta
            result["text"] += delta.content or ""
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
        "tool_calls": calls,
        "finish_reason": choice.finish_reason,
        "usage": completion.usage,
    }


def equal(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: {actual!r}, expected {expected!r}")


def check(case, result):
    """Compares one answer with the case's expectations; returns its cost."""
    expect = case["expect"]
    equal(result["text"], expect["text"], "text")
    equal(result["finish_reason"], expect["finish_reason"], "finish_reason")
    calls = expect.get("tool_calls", [])
    equal(
        [(call["name"], call["arguments"]) for call in result["tool_calls"]],
        [(call["name"], call["arguments"]) for call in calls],
        "tool calls",
    )
    for got, wanted in zip(result["tool_calls"], calls):
        equal(got["id"], wanted["id"] or got["id"] or "a tool call id", "tool call id")
    if "object" in expect:
        equal(json.loads(result["text"]), expect["object"], "object")
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
    cost = usd(cost)
    if "cost" in expect:
        equal(cost, Decimal(expect["cost"]), "cost")
    record = get(f"/v1/api/generation?id={result['id']}", KEY)["data"]
    equal(Decimal(record["cost_usd"]), cost, f"record {record}: cost")
    equal(
        (record["model"], record["status"], record["streamed"], record["tokens_prompt"], record["tokens_completion"]),
        (case["model"], 200, case["kind"].startswith("stream"), counts["prompt_tokens"], counts["completion_tokens"]),
        "record",
    )
    return cost


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


def main():
    client = openai.OpenAI(base_url=BASE + "/v1/api", api_key=KEY, max_retries=0, timeout=60)
    before = available()
    results, failures, total = [], [], Decimal(0)
    for case in SPEC["cases"]:
        if case["kind"] not in KINDS:
            continue
        try:
            outcome = run(client, case)
        except Exception as error:  # every case runs; all failures are reported
            failures.append(f"{case['id']}: {type(error).__name__}: {error}")
            continue
        if outcome is not None:
            generation, cost = outcome
            total += cost
            results.append({"case": case["id"], "id": generation, "cost": str(cost)})
    drop = before - available()
    if drop != total:
        failures.append(f"the balance fell by {drop}, the costs add up to {total}")
    print("RESULTS " + json.dumps(results))
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"openai python sdk {openai.__version__} ok: {len(results)} answers, ${total}")


main()
