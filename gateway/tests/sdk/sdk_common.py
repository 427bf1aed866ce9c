"""What the Python client-library scripts of tests/sdk.rs share: the environment
tests/sdk.rs starts them with (SOLROUTER_BASE_URL, SOLROUTER_KEY, SOLROUTER_ADMIN_TOKEN,
SOLROUTER_ACCOUNT, SDK_CASES, SDK_FIXTURES, SDK_KINDS), the cases of cases.json as
OpenAI chat messages, the gateway's generation records, and the loop that runs every
case of the wanted kinds, checks that the balance fell by exactly the sum of the costs,
and prints `RESULTS <json>` (one `{case, id, cost}` per answer) for tests/sdk.rs; and a
case's JSON schema as a Pydantic model."""

import json
import os
import sys
from decimal import Decimal

import pydantic

# The scripts of tests/ share gateway_http.py, one directory up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gateway_http import BASE, get, usd  # noqa: E402

API = BASE + "/v1/api"
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


def available():
    return Decimal(get(f"/v1/admin/accounts/{ACCOUNT}", ADMIN)["available"])


def equal(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: {actual!r}, expected {expected!r}")


TYPES = {"string": str, "number": float, "integer": int, "boolean": bool}


def model_of(name, schema):
    """A Pydantic model of a JSON schema of objects, arrays and scalars (the properties
    of an object in the required list are required)."""

    def field_type(field_name, field):
        if field["type"] == "object":
            return model_of(field_name.title(), field)
        if field["type"] == "array":
            return list[field_type(field_name.removesuffix("s"), field["items"])]
        return TYPES[field["type"]]

    fields = {
        field_name: (field_type(field_name, field), ... if field_name in schema.get("required", []) else None)
        for field_name, field in schema["properties"].items()
    }
    return pydantic.create_model(name, **fields)


def check_answer(expect, result, call_id="a call id"):
    """The answer's text, reasoning (where the script reads it), finish reason, tool
    calls (names, arguments, ids) and parsed object against the recording's `expect`."""
    equal(result["text"], expect["text"], "text")
    if "reasoning" in result:
        equal(result["reasoning"], expect.get("reasoning", ""), "reasoning")
    equal(result["finish_reason"], expect["finish_reason"], "finish_reason")
    calls = expect.get("tool_calls", [])
    equal(
        [(call["name"], call["arguments"]) for call in result["tool_calls"]],
        [(call["name"], call["arguments"]) for call in calls],
        "tool calls",
    )
    for got, wanted in zip(result["tool_calls"], calls):
        equal(got["id"], wanted["id"] or got["id"] or call_id, "call id")
    if "object" in expect:
        equal(json.loads(result["text"]), expect["object"], "object")


def messages(case):
    """The case's prompt as OpenAI chat messages (the image as a data URL part)."""
    request = case["request"]
    out = []
    if "system" in request:
        out.append({"role": "system", "content": request["system"]})
    if request.get("image"):
        content = [
            {"type": "text", "text": request["prompt"]},
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        ]
    else:
        content = request["prompt"]
    out.append({"role": "user", "content": content})
    return out


def tools(case):
    """The case's tools as OpenAI function tools."""
    return [{"type": "function", "function": SPEC["tools"][name]} for name in case["request"].get("tools", [])]


def weather(location: str) -> str:
    """Get the weather in a location

    Args:
        location: The location to get the weather for
    """
    return f"sunny in {location}"


def current_time() -> str:
    """Get the current time"""
    return "noon"


# The tools of cases.json as Python functions, for libraries that make tools of them.
FUNCTIONS = {"weather": weather, "currentTime": current_time}
assert FUNCTIONS.keys() == SPEC["tools"].keys(), "a function for each tool of cases.json"


def check_calls(actual, case):
    """`actual`: (name, arguments as a dict) per tool call, against the recording."""
    wanted = [(call["name"], json.loads(call["arguments"] or "{}")) for call in case["expect"].get("tool_calls", [])]
    equal(actual, wanted, "tool calls")


def latest_generation():
    """The id of the account's newest answer, for a library that hides the answer's id
    (the scripts run one request at a time)."""
    return get("/v1/api/generations?limit=1", KEY)["data"][0]["id"]


def check_record(case, generation, cost=None):
    """The gateway's record of the answer `generation`: the case's model and tokens,
    and the cost the library exposed (if it does); returns the recorded cost."""
    record = get(f"/v1/api/generation?id={generation}", KEY)["data"]
    usage = case["expect"]["usage"]
    equal(
        (record["model"], record["status"], record["streamed"], record["tokens_prompt"], record["tokens_completion"]),
        (case["model"], 200, case["kind"].startswith("stream"), usage["prompt_tokens"], usage["completion_tokens"]),
        "record",
    )
    recorded = Decimal(record["cost_usd"])
    assert recorded > 0, f"record {record}: cost"
    if cost is not None:
        equal(usd(cost), recorded, "usage.cost")
    if "cost" in case["expect"]:
        equal(recorded, Decimal(case["expect"]["cost"]), "the provider's own bill")
    return recorded


def check_embedding(vectors, texts):
    """The answer to embedding `texts` with `mock/embed` (one vector each, one token a
    word at $1 per million) and its record; returns its `{id, cost}` for OTHERS."""
    equal(len(vectors), len(texts), "vectors")
    assert all(len(vector) > 0 and all(isinstance(x, float) for x in vector) for vector in vectors), "vectors"
    generation = latest_generation()
    record = get(f"/v1/api/generation?id={generation}", KEY)["data"]
    words = sum(len(text.split()) for text in texts)
    equal((record["model"], record["status"], record["tokens_prompt"]), ("mock/embed", 200, words), "record")
    equal(Decimal(record["cost_usd"]), Decimal(words) / 1_000_000, "embedding cost")
    return {"id": generation, "cost": record["cost_usd"]}


def main(library, run, others=()):
    """Runs `run(case)` for every case of the wanted kinds; it returns the answer's
    generation id and cost, having checked the answer (an exception fails the case),
    or None for a case the gateway refused as it must.
    Then each of `others`, answers outside the cases, each returning `{id, cost}`."""
    before = available()
    results, failures, total = [], [], Decimal(0)
    extra = []
    for case in SPEC["cases"]:
        if case["kind"] not in KINDS:
            continue
        try:
            outcome = run(case)
        except Exception as error:  # every case runs; all failures are reported
            failures.append(f"{case['id']}: {type(error).__name__}: {error}")
            continue
        if outcome is None:
            continue
        generation, cost = outcome
        total += cost
        results.append({"case": case["id"], "id": generation, "cost": str(cost)})
    for other in others:
        try:
            answer = other()
        except Exception as error:
            failures.append(f"{other.__name__}: {type(error).__name__}: {error}")
            continue
        total += Decimal(answer["cost"])
        extra.append(answer)
    drop = before - available()
    if drop != total:
        failures.append(f"the balance fell by {drop}, the costs add up to {total}")
    print("RESULTS " + json.dumps(results))
    print("OTHERS " + json.dumps(extra))
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"{library} ok: {len(results)} answers, ${total}")
