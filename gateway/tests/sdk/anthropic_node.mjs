// Drives a running `solrouter dev` with the official `@anthropic-ai/sdk` npm package
// through the cases of cases.json of the kinds in SDK_KINDS (structured output through
// `output_config.format`), with the gateway's root as base URL, as anthropic_python.py
// does with the Python package. Started by tests/sdk.rs.

import Anthropic from '@anthropic-ai/sdk';
import {
  BASE, IMAGE_URL, KEY, SPEC, assert, assertEqual, checkBilling, costPico, isStream, main,
} from './common.mjs';

const client = new Anthropic({ baseURL: BASE, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
// A case without a completion limit asks for as many tokens as the model allows (the
// gateway caps `max_tokens` at the model's output limit).
const MAX_TOKENS_ANY = 65536;
// The cases a Messages request cannot ask for (tests/sdk.rs expects them skipped):
const SKIPPED = new Set([
  // `output_config.format` asks for a JSON schema only; DeepSeek's case wants just any
  // JSON object (`json_object`).
  'openai-compatible/structured',
  // Claude Sonnet 4 predates structured outputs, and a Claude model's Messages request
  // goes to Anthropic as sent, `output_config` included, which Anthropic refuses for it;
  // the recording answers the forced tool only the Chat Completions translation sends.
  'anthropic/structured',
]);
// OpenAI finish reasons of cases.json as Anthropic stop reasons.
const STOP_REASONS = { stop: 'end_turn', tool_calls: 'tool_use', length: 'max_tokens' };
const [MEDIA_TYPE, IMAGE_DATA] = IMAGE_URL.slice('data:'.length).split(';base64,');

/** The case as a Messages request: Claude's prompts as text blocks, as the recorded
 * Anthropic requests sent them; others' as a string, as the recorded OpenAI ones did. */
function params(testCase) {
  const request = testCase.request;
  let content = request.prompt;
  if (request.image) {
    content = [
      { type: 'text', text: request.prompt },
      { type: 'image', source: { type: 'base64', media_type: MEDIA_TYPE, data: IMAGE_DATA } },
    ];
  } else if (testCase.provider === 'anthropic') {
    content = [{ type: 'text', text: request.prompt }];
  }
  const out = {
    model: testCase.model,
    max_tokens: request.max_tokens ?? MAX_TOKENS_ANY,
    messages: [{ role: 'user', content }],
  };
  if (request.system !== undefined) out.system = request.system;
  if (request.temperature !== undefined) out.temperature = request.temperature;
  if (request.tools) {
    out.tools = request.tools.map((name) => {
      const { description, parameters } = SPEC.tools[name];
      return { name, description, input_schema: parameters };
    });
  }
  const format = request.response_format;
  if (format) out.output_config = { format: { type: 'json_schema', schema: format.schema } };
  return out;
}

/** Streams through the SDK's own accumulator; the cost is the final message_delta's. */
async function streamed(testCase) {
  const stream = client.messages.stream(params(testCase));
  let cost;
  for await (const event of stream) {
    if (event.type === 'message_delta') cost = event.usage.cost;
  }
  return { message: await stream.finalMessage(), cost };
}

async function runCase(testCase) {
  if (SKIPPED.has(testCase.id)) return null;
  const { expect } = testCase;
  const { message, cost } = isStream(testCase)
    ? await streamed(testCase)
    : await client.messages.create(params(testCase)).then((message) => ({ message, cost: message.usage.cost }));
  const text = message.content.filter((block) => block.type === 'text').map((block) => block.text).join('');
  assertEqual(text, expect.text, 'text');
  if (expect.object !== undefined) assertEqual(JSON.parse(text), expect.object, 'object');
  assertEqual(message.stop_reason, STOP_REASONS[expect.finish_reason], 'stop_reason');
  const uses = message.content.filter((block) => block.type === 'tool_use');
  const wanted = expect.tool_calls ?? [];
  assertEqual(
    uses.map((use) => [use.name, use.input]),
    wanted.map((call) => [call.name, JSON.parse(call.arguments)]),
    'tool uses',
  );
  uses.forEach((use, useIdx) => assertEqual(use.id, wanted[useIdx].id ?? use.id, 'tool use id'));
  assert(message.id.startsWith('gen-'), `id ${message.id}`);
  const { usage } = message;
  const cached = usage.cache_read_input_tokens ?? 0;
  const counts = {
    prompt_tokens: usage.input_tokens + cached + (usage.cache_creation_input_tokens ?? 0),
    completion_tokens: usage.output_tokens,
    cached_tokens: cached,
  };
  return { id: message.id, cost: await checkBilling(testCase, message.id, counts, cost) };
}

/** Refusals arrive as the SDK's typed errors, with Anthropic's error types. */
async function checkErrors() {
  const request = { model: 'mock/echo', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] };
  const badKey = new Anthropic({ baseURL: BASE, apiKey: 'sr_bogus', maxRetries: 0 });
  const cases = [
    [badKey, request, Anthropic.AuthenticationError, 'authentication_error'],
    [client, { ...request, model: 'nobody/nothing' }, Anthropic.NotFoundError, 'not_found_error'],
    [client, { ...request, top_k: 3 }, Anthropic.BadRequestError, 'invalid_request_error'],
  ];
  for (const [sender, body, ErrorType, kind] of cases) {
    let refused = null;
    try {
      await sender.messages.create(body);
    } catch (error) {
      refused = error;
    }
    assert(refused instanceof ErrorType, `${JSON.stringify(body)}: ${refused}`);
    assertEqual(refused.error?.error?.type, kind, `${JSON.stringify(body)}: error type`);
  }
}

/** The model list, in Anthropic's shape, names the catalogue's models. */
async function checkModels() {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert(ids.includes('mock/echo') && ids.includes('anthropic/claude-sonnet-4'), `models ${ids}`);
}

/** A stream the provider breaks mid-answer throws the SDK's APIError from the `error`
 * event, which carries the cost of what was delivered; returns the answer's id and that
 * cost. */
async function checkBrokenStream() {
  const request = {
    model: 'mock/echo',
    max_tokens: 100,
    messages: [{ role: 'user', content: '[[mock words=30 cut_after=6]] go' }],
  };
  let text = '';
  let id = null;
  try {
    for await (const event of client.messages.stream(request)) {
      if (event.type === 'message_start') id = event.message.id;
      if (event.type === 'content_block_delta') text += event.delta.text;
    }
  } catch (error) {
    assert(error instanceof Anthropic.APIError, `not an API error: ${error}`);
    assertEqual(error.error?.error?.type, 'api_error', 'error type');
    assert(text.length > 0, 'nothing was delivered before the break');
    return { id, cost: costPico(error.error.usage.cost) };
  }
  throw new Error('the broken stream threw nothing');
}

await main('anthropic node sdk', runCase, async () => {
  await checkErrors();
  await checkModels();
  return [await checkBrokenStream()];
});
