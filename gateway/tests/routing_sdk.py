"""Drives provider routing through a running `solrouter dev` with the official `openai`
package: the model `mock/shared` is served by the hosts `mock` ($2/$4 per million
tokens, fast) and `mock-slow` ($1/$2, slower). Started by tests/routing.rs with
SOLROUTER_BASE_URL, SOLROUTER_KEY and ROUTING_PHASE set: phase `both` while both hosts
answer, phase `failed` after the test stopped `mock-slow`. Exits non-zero (with an
assertion message) on any mismatch; prints `routing ok: …` on success."""

import os
import urllib.error
from decimal import Decimal

import openai

from gateway_http import BASE, get, usd

KEY = os.environ["SOLROUTER_KEY"]
PHASE = os.environ["ROUTING_PHASE"]
MODEL = "mock/shared"
# USD per token, prompt and completion, of each host.
PRICES = {"mock": (Decimal("0.000002"), Decimal("0.000004")),
          "mock-slow": (Decimal("0.000001"), Decimal("0.000002"))}


client = openai.OpenAI(base_url=BASE + "/v1/api", api_key=KEY, max_retries=0, timeout=30)


def ask(text, provider=None, model=MODEL, stream=False, **extra):
    """One completion; checks that the answer, its charge and its record all name the
    same host, and that the charge is that host's price of the usage. Returns the host."""
    body = {"provider": provider} if provider is not None else None
    messages = [{"role": "user", "content": text}]
    if stream:
        chunks = list(client.chat.completions.create(
            model=model, messages=messages, stream=True, extra_body=body, **extra))
        answer_id = chunks[0].id
        host = chunks[-1].model_extra["provider"]
        assert all(chunk.model_extra["provider"] == host for chunk in chunks), chunks
        usage = chunks[-1].usage
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        answer = client.chat.completions.create(
            model=model, messages=messages, extra_body=body, **extra)
        answer_id, host, usage = answer.id, answer.model_extra["provider"], answer.usage
        content = answer.choices[0].message.content
    assert content == text, (content, text)
    prompt_price, completion_price = PRICES[host]
    expected = usage.prompt_tokens * prompt_price + usage.completion_tokens * completion_price
    assert usd(usage.cost) == expected, (host, usage, expected)
    record = get(f"/v1/api/generation?id={answer_id}", KEY)["data"]
    assert record["provider_name"] == host, (record, host)
    assert record["model"] == MODEL, record
    assert Decimal(record["cost_usd"]) == expected, (record, expected)
    return host


def refused(param, **provider):
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"provider": provider})
    except openai.BadRequestError as error:
        assert error.body["param"] == param, error.body
        return
    raise AssertionError(f"{provider} must be refused")


def endpoints():
    listed = get(f"/v1/api/models/{MODEL}/endpoints", KEY)["data"]
    assert listed["id"] == MODEL, listed
    return {endpoint["provider_name"]: endpoint for endpoint in listed["endpoints"]}


if PHASE == "both":
    hosts = endpoints()
    assert set(hosts) == {"mock", "mock-slow"}, hosts
    assert hosts["mock-slow"]["pricing"]["prompt"] == "0.000001", hosts
    assert hosts["mock"]["pricing"]["completion"] == "0.000004", hosts
    assert hosts["mock-slow"]["quantization"] == "fp8" and hosts["mock"]["quantization"] == "fp16"
    assert "seed" not in hosts["mock-slow"]["supported_parameters"], hosts
    assert all(endpoint["status"] == 0 for endpoint in hosts.values()), hosts
    listed = {model["id"]: model for model in get("/v1/api/models", KEY)["data"]}
    assert listed[MODEL]["pricing"]["prompt"] == "0.000001", "the cheapest endpoint's price"
    try:
        get("/v1/api/models/nobody/nothing/endpoints", KEY)
        raise AssertionError("an unknown model must be a 404")
    except urllib.error.HTTPError as error:
        assert error.code == 404, error

    # Each host on its own: the charge is that host's price, the record names it.
    for stream in (False, True):
        for _ in range(3):
            assert ask("only the fast host", {"only": ["mock"]}, stream=stream) == "mock"
            assert ask("only the slow host", {"only": ["mock-slow"]}, stream=stream) == "mock-slow"
    # Now both have statistics: the fast one leads on throughput and latency.
    fast = endpoints()["mock"]
    slow = endpoints()["mock-slow"]
    assert fast["throughput_last_30m"] > slow["throughput_last_30m"], (fast, slow)
    assert fast["latency_last_30m"] < slow["latency_last_30m"], (fast, slow)
    assert slow["uptime_last_30m"] == 100, slow
    assert ask("by throughput", {"sort": "throughput"}) == "mock"
    assert ask("by latency", {"sort": "latency"}, stream=True) == "mock"
    assert ask("nitro", model=MODEL + ":nitro") == "mock"
    assert ask("by price", {"sort": "price"}) == "mock-slow"
    assert ask("floor", model=MODEL + ":floor", stream=True) == "mock-slow"
    assert ask("ordered", {"order": ["mock", "mock-slow"]}) == "mock"
    # `seed` is not taken by mock-slow: required parameters leave only mock.
    assert ask("with a seed", {"require_parameters": True, "order": ["mock-slow"]}, seed=1) == "mock"
    # The default spreads load, favouring the cheaper host (4 : 1 here); 40 requests
    # miss one host with probability below 2e-4.
    seen = [ask(f"default {n}") for n in range(40)]
    assert {"mock", "mock-slow"} <= set(seen), seen
    refused("provider.max_price", max_price={"prompt": 0.5})
    refused("provider.only", only=["nobody"])
    refused("provider.sort", sort="fastest")
    print(f"routing ok: both hosts answered; the default sent {seen.count('mock-slow')} of 40 to mock-slow")
elif PHASE == "failed":
    # mock-slow is down: the cheapest-first route tries it, then falls back to mock
    # within the same model; after its breaker opens it is skipped.
    hosts = [ask(f"after the failure {n}", model=MODEL + ":floor") for n in range(8)]
    hosts += [ask(f"default after the failure {n}", stream=n % 2 == 0) for n in range(10)]
    assert set(hosts) == {"mock"}, hosts
    slow = endpoints()["mock-slow"]
    assert slow["status"] == -2, slow
    assert slow["uptime_last_30m"] < 100, slow
    print(f"routing ok: {len(hosts)} requests moved to mock after mock-slow failed")
else:
    raise AssertionError(f"unknown phase {PHASE}")
