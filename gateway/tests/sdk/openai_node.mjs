// Drives a running `solrouter dev` with the official `openai` npm package through every
// case of cases.json, as openai_python.py does with the Python package. Started by
// tests/sdk.rs.

import OpenAI from 'openai';
import { readFileSync } from 'node:fs';
import {
  BASE, IMAGE_URL, KEY, SPEC, assert, assertEqual, checkBilling, isStream, main,
} from './common.mjs';

const client = new OpenAI({ baseURL: `${BASE}/v1/api`, apiKey: KEY, maxRetries: 0, timeout: 60_000 });

function params(testCase) {
  const request = testCase.request;
  const messages = [];
  if (request.system !== undefined) messages.push({ role: 'system', content: request.system });
  const content = request.image
    ? [{ type: 'text', text: request.prompt }, { type: 'image_url', image_url: { url: IMAGE_URL } }]
    : request.prompt;
  messages.push({ role: 'user', content });
  const out = { model: testCase.model, messages };
  if (request.temperature !== undefined) out.temperature = request.temperature;
  if (request.max_tokens !== undefined) out.max_tokens = request.max_tokens;
  if (request.tools) {
    out.tools = request.tools.map((name) => ({ type: 'function', function: SPEC.tools[name] }));
  }
  const format = request.response_format;
  if (format?.type === 'json_object') out.response_format = { type: 'json_object' };
  if (format?.type === 'json_schema') {
    const { name, description, schema } = format;
    out.response_format = { type: 'json_schema', json_schema: { name, description, schema } };
  }
  if (isStream(testCase)) out.stream = true;
  return out;
}

/** Assembles a stream the way a client does: text, tool calls by index, usage. */
async function streamed(stream) {
  const result = { id: null, text: '', reasoning: '', toolCalls: [], finishReason: null, usage: null };
  for await (const chunk of stream) {
    result.id ??= chunk.id;
    for (const choice of chunk.choices) {
      result.text += choice.delta.content ?? '';
      // The gateway's `reasoning` (OpenRouter's field), kept by the SDK as it came.
      result.reasoning += choice.delta.reasoning ?? '';
      for (const call of choice.delta.tool_calls ?? []) {
        while (result.toolCalls.length <= call.index) {
          result.toolCalls.push({ id: '', name: '', arguments: '' });
        }
        const entry = result.toolCalls[call.index];
        entry.id += call.id ?? '';
        entry.name += call.function?.name ?? '';
        entry.arguments += call.function?.arguments ?? '';
      }
      result.finishReason = choice.finish_reason ?? result.finishReason;
    }
    if (chunk.usage) result.usage = chunk.usage;
  }
  return result;
}

function whole(completion) {
  const [choice] = completion.choices;
  return {
    id: completion.id,
    text: choice.message.content ?? '',
    reasoning: choice.message.reasoning ?? '',
    toolCalls: (choice.message.tool_calls ?? []).map((call) => ({
      id: call.id, name: call.function.name, arguments: call.function.arguments,
    })),
    finishReason: choice.finish_reason,
    usage: completion.usage,
  };
}

async function runCase(testCase) {
  const { expect } = testCase;
  if (expect.error) {
    try {
      await client.chat.completions.create(params(testCase));
    } catch (error) {
      assert(error instanceof OpenAI.APIError, `not an API error: ${error}`);
      assertEqual([error.status, error.param], [expect.error.status, expect.error.param], 'error');
      return null;
    }
    throw new Error('the request succeeded');
  }
  const answer = await client.chat.completions.create(params(testCase));
  const result = isStream(testCase) ? await streamed(answer) : whole(answer);
  assertEqual(result.text, expect.text, 'text');
  assertEqual(result.reasoning, expect.reasoning ?? '', 'reasoning');
  assertEqual(result.finishReason, expect.finish_reason, 'finish_reason');
  const wanted = expect.tool_calls ?? [];
  assertEqual(
    result.toolCalls.map(({ name, arguments: args }) => ({ name, arguments: args })),
    wanted.map(({ name, arguments: args }) => ({ name, arguments: args })),
    'tool calls',
  );
  result.toolCalls.forEach((call, callIdx) => {
    assert(call.id === (wanted[callIdx].id ?? call.id) && call.id !== '', `tool call id ${call.id}`);
  });
  if (expect.object !== undefined) assertEqual(JSON.parse(result.text), expect.object, 'object');
  const { usage } = result;
  assert(usage, 'no usage');
  const counts = {
    prompt_tokens: usage.prompt_tokens,
    completion_tokens: usage.completion_tokens,
    reasoning_tokens: usage.completion_tokens_details?.reasoning_tokens,
    cached_tokens: usage.prompt_tokens_details?.cached_tokens,
  };
  return { id: result.id, cost: await checkBilling(testCase, result.id, counts, usage.cost) };
}

const { version } = JSON.parse(
  readFileSync(new URL('./node_modules/openai/package.json', import.meta.url), 'utf8'),
);
await main(`openai node sdk ${version}`, runCase);
