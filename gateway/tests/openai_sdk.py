"""Drives a running `solrouter dev` with the official `openai` package, as a customer
would: only `base_url` and the key change. Started by tests/openai_sdk.rs with
SOLROUTER_BASE_URL, SOLROUTER_KEY, SOLROUTER_ADMIN_TOKEN and SOLROUTER_ACCOUNT set.
Exits non-zero (with an assertion message) on any mismatch."""

import json
import os
import struct
from decimal import Decimal

import openai

from gateway_http import BASE, get, usd

KEY = os.environ["SOLROUTER_KEY"]
ADMIN = os.environ["SOLROUTER_ADMIN_TOKEN"]
ACCOUNT = os.environ["SOLROUTER_ACCOUNT"]


def available():
    return Decimal(get(f"/v1/admin/accounts/{ACCOUNT}", ADMIN)["available"])


client = openai.OpenAI(base_url=BASE + "/v1/api", api_key=KEY, max_retries=0, timeout=30)
before = available()

plain = client.chat.completions.create(
    model="mock/echo", messages=[{"role": "user", "content": "hello from the sdk"}]
)
assert plain.choices[0].message.content == "hello from the sdk", plain
plain_cost = usd(plain.usage.cost)
assert plain_cost > 0, plain.usage

stream = client.chat.completions.create(
    model="mock/echo",
    messages=[{"role": "user", "content": "streamed word by word"}],
    stream=True,
)
text, usage, stream_id = "", None, None
for chunk in stream:
    stream_id = chunk.id
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage
assert text == "streamed word by word", text
assert usage is not None, "the last chunk carries usage"
stream_cost = usd(usage.cost)
assert stream_cost > 0, usage

drop = before - available()
assert drop == plain_cost + stream_cost, (drop, plain_cost, stream_cost)

for completion_id, cost, streamed in ((plain.id, plain_cost, False), (stream_id, stream_cost, True)):
    record = get(f"/v1/api/generation?id={completion_id}", KEY)["data"]
    assert record["model"] == "mock/echo", record
    assert record["streamed"] is streamed, record
    assert record["status"] == 200, record
    assert Decimal(record["cost_usd"]) == cost, (record, cost)

try:
    client.chat.completions.create(model="nope/nope", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as error:
    assert error.body["code"] == "model_not_found", error.body

# Embeddings. The SDK asks for base64 unless told otherwise and decodes it itself
# (little-endian f32); with encoding_format="float" it reads the JSON numbers.
texts = ["the quick brown fox", "jumps over", "the lazy dog"]
before_embeddings = available()
raw = client.embeddings.with_raw_response.create(model="mock/embed", input=texts)
wire = json.loads(raw.http_request.content)
assert wire["encoding_format"] == "base64", wire
assert isinstance(raw.http_response.json()["data"][0]["embedding"], str), "base64 on the wire"
decoded = raw.parse()
floats = client.embeddings.create(model="mock/embed", input=texts, encoding_format="float")
assert floats.model == decoded.model == "mock/embed", floats.model


def as_f32(vector):
    return [struct.unpack("<f", struct.pack("<f", value))[0] for value in vector]


assert len(decoded.data) == len(floats.data) == 3
for from_base64, from_floats in zip(decoded.data, floats.data):
    assert len(from_base64.embedding) == 64, len(from_base64.embedding)
    assert as_f32(from_base64.embedding) == as_f32(from_floats.embedding), from_base64.index
# 4 + 2 + 3 words at $1 per million tokens, each time.
embedding_costs = [usd(answer.usage.cost) for answer in (decoded, floats)]
assert [answer.usage.prompt_tokens for answer in (decoded, floats)] == [9, 9]
assert embedding_costs == [Decimal("0.000009")] * 2, embedding_costs
assert before_embeddings - available() == sum(embedding_costs)
for answer, cost in zip((decoded, floats), embedding_costs):
    record = get(f"/v1/api/generation?id={answer.id}", KEY)["data"]
    assert record["model"] == "mock/embed" and record["tokens_prompt"] == 9, record
    assert Decimal(record["cost_usd"]) == cost, (record, cost)
short = client.embeddings.create(model="mock/embed", input="one", dimensions=8)
assert len(short.data[0].embedding) == 8
try:
    client.embeddings.create(model="mock/embed", input="one", dimensions=65)
    raise AssertionError("an unsupported length must fail")
except openai.BadRequestError as error:
    assert error.body["param"] == "dimensions", error.body

print(f"openai sdk ok: plain ${plain_cost}, streamed ${stream_cost}, balance fell ${drop}")
