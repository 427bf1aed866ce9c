// Drives a running `solrouter dev` with the official `openai` npm package through the
// Responses API, as openai_responses_python.py does with the Python package: every case
// of cases.json (streamed text through `responses.create({stream: true})`, streamed
// function calls through the `responses.stream` helper, structured output through
// `text.format`, an image input), each function call answer followed by its round trip
// to `mock/echo` (reported as OTHERS). Started by tests/sdk.rs.

import OpenAI from 'openai';
import { readFileSync } from 'node:fs';
import {
  BASE, IMAGE_URL, KEY, SPEC, assert, assertEqual, checkBilling, costPico, main,
} from './common.mjs';

const client = new OpenAI({ baseURL: `${BASE}/v1/api`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });
/** Answers the round trip's second request: the built-in mock, echoing the question (it
 * takes no tools, so the request declares none). */
const ECHO = 'mock/echo';
/** The round trips' answers, `{id, cost}`, paid for outside the cases. */
const roundTrips = [];

const tools = (request) =>
  (request.tools ?? []).map((name) => ({ type: 'function', ...SPEC.tools[name] }));

function params(testCase) {
  const request = testCase.request;
  const input = request.image
    ? [{
      role: 'user',
      content: [
        { type: 'input_text', text: request.prompt },
        { type: 'input_image', image_url: IMAGE_URL },
      ],
    }]
    : request.prompt;
  const out = { model: testCase.model, input };
  if (request.system !== undefined) out.instructions = request.system;
  if (request.temperature !== undefined) out.temperature = request.temperature;
  if (request.max_tokens !== undefined) out.max_output_tokens = request.max_tokens;
  if (request.tools) out.tools = tools(request);
  const format = request.response_format;
  if (format?.type === 'json_object') out.text = { format: { type: 'json_object' } };
  if (format?.type === 'json_schema') {
    const { name, description, schema } = format;
    out.text = { format: { type: 'json_schema', name, description, schema } };
  }
  return out;
}

/** What a whole `response` holds: text, function calls, how it ended, usage. */
function read(response) {
  const text = response.output
    .filter((item) => item.type === 'message')
    .flatMap((item) => item.content)
    .filter((part) => part.type === 'output_text')
    .map((part) => part.text)
    .join('');
  const toolCalls = response.output
    .filter((item) => item.type === 'function_call')
    .map((item) => ({ id: item.call_id, name: item.name, arguments: item.arguments }));
  let finishReason = 'length';
  if (response.status !== 'incomplete') {
    assertEqual(response.status, 'completed', 'status');
    finishReason = toolCalls.length > 0 ? 'tool_calls' : 'stop';
  }
  return { id: response.id, text, toolCalls, finishReason, usage: response.usage, output: response.output };
}

/** Assembles a raw event stream the way a client does and checks it against the final
 * response: the same text and calls, every event numbered in order. */
async function streamed(events) {
  let text = '';
  let final = null;
  let sequence = 0;
  const calls = new Map();
  for await (const event of events) {
    assertEqual(event.sequence_number, sequence, `${event.type}: sequence_number`);
    sequence += 1;
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.output_item.added' && event.item.type === 'function_call') {
      calls.set(event.output_index, { id: event.item.call_id, name: event.item.name, arguments: '' });
    }
    if (event.type === 'response.function_call_arguments.delta') {
      calls.get(event.output_index).arguments += event.delta;
    }
    if (event.type === 'response.completed') final = event.response;
    assert(event.type !== 'error' && event.type !== 'response.failed', `the stream failed: ${JSON.stringify(event)}`);
  }
  assert(final !== null, 'no response.completed');
  const result = read(final);
  assertEqual(text, result.text, 'streamed text');
  assertEqual([...calls.keys()].sort().map((index) => calls.get(index)), result.toolCalls, 'streamed calls');
  return result;
}

/** The same through the SDK's `responses.stream` helper, which accumulates the events
 * into the final response. */
async function helperStreamed(testCase) {
  const stream = client.responses.stream(params(testCase));
  let text = '';
  for await (const event of stream) {
    if (event.type === 'response.output_text.delta') text += event.delta;
  }
  const result = read(await stream.finalResponse());
  assertEqual(text, result.text, 'streamed text');
  return result;
}

/** The second request of a function call round trip: the answer's output items, each
 * call's output, then the echo of the question. */
async function roundTrip(testCase, result) {
  const request = testCase.request;
  const input = [
    { role: 'user', content: request.prompt },
    ...result.output,
    ...result.toolCalls.map((call) => ({
      type: 'function_call_output', call_id: call.id, output: JSON.stringify({ answer: 42 }),
    })),
  ];
  const answer = read(await client.responses.create({ model: ECHO, input }));
  assertEqual([answer.text, answer.finishReason], [request.prompt, 'stop'], "the round trip's answer");
  roundTrips.push({ id: answer.id, cost: costPico(answer.usage.cost) });
}

async function runCase(testCase) {
  const { expect } = testCase;
  let result;
  if (testCase.kind === 'stream_text') {
    result = await streamed(await client.responses.create({ ...params(testCase), stream: true }));
  } else if (testCase.kind === 'stream_tools') {
    result = await helperStreamed(testCase);
  } else {
    result = read(await client.responses.create(params(testCase)));
  }
  assertEqual(result.text, expect.text, 'text');
  assertEqual(result.finishReason, expect.finish_reason, 'finish_reason');
  const wanted = expect.tool_calls ?? [];
  assertEqual(
    result.toolCalls.map(({ name, arguments: args }) => ({ name, arguments: args })),
    wanted.map(({ name, arguments: args }) => ({ name, arguments: args })),
    'tool calls',
  );
  result.toolCalls.forEach((call, callIdx) => {
    assert(call.id === (wanted[callIdx].id ?? call.id) && call.id !== '', `call id ${call.id}`);
  });
  if (expect.object !== undefined) assertEqual(JSON.parse(result.text), expect.object, 'object');
  const { usage } = result;
  const counts = {
    prompt_tokens: usage.input_tokens,
    completion_tokens: usage.output_tokens,
    reasoning_tokens: usage.output_tokens_details?.reasoning_tokens,
    cached_tokens: usage.input_tokens_details?.cached_tokens,
  };
  const cost = await checkBilling(testCase, result.id, counts, usage.cost);
  if (result.toolCalls.length > 0) await roundTrip(testCase, result);
  return { id: result.id, cost };
}

const { version } = JSON.parse(
  readFileSync(new URL('./node_modules/openai/package.json', import.meta.url), 'utf8'),
);
await main(`openai node sdk ${version} (Responses)`, runCase, async () => roundTrips);
