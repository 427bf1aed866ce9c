// Drives a running `solrouter dev` with the Vercel AI SDK (`ai` with
// `@ai-sdk/openai-compatible`) through every case of cases.json: `streamText` for
// streamed text and tool calls, `generateObject` for structured output, `generateText`
// with an image part, each answer's reasoning read as the SDK offers it. `usage.cost`
// reaches the SDK's provider metadata through the provider's documented
// `metadataExtractor`. Then `embed` and `embedMany` with the
// `@ai-sdk/openai` provider's embedding model on `mock/embed`: the vectors, the usage
// and the cost of each answer. Started by tests/sdk.rs.

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import {
  APICallError, embed, embedMany, generateObject, generateText, jsonSchema, streamText, tool,
} from 'ai';
import { readFileSync } from 'node:fs';
import {
  BASE, IMAGE_URL, KEY, SPEC, assert, assertEqual, checkBilling, costPico, isStream, main,
  picoOf,
} from './common.mjs';

const PROVIDER = 'solrouter';

/** Puts the gateway's `usage.cost` (and nothing else) into the provider metadata. */
const metadataExtractor = {
  extractMetadata: async ({ parsedBody }) => ({ [PROVIDER]: { cost: parsedBody?.usage?.cost } }),
  createStreamExtractor: () => {
    let cost;
    return {
      processChunk(chunk) {
        cost = chunk?.usage?.cost ?? cost;
      },
      buildMetadata: () => ({ [PROVIDER]: { cost } }),
    };
  },
};

/** A provider per structured-output mode: `json_schema` needs `supportsStructuredOutputs`,
 * without it the SDK asks for `json_object`. */
const provider = (supportsStructuredOutputs) => createOpenAICompatible({
  name: PROVIDER,
  baseURL: `${BASE}/v1/api`,
  apiKey: KEY,
  includeUsage: true,
  supportsStructuredOutputs,
  metadataExtractor,
});
const providers = { json_schema: provider(true), json_object: provider(false) };

const [, imageType, imageBase64] = /^data:([^;]+);base64,(.*)$/s.exec(IMAGE_URL);

function callSettings(testCase) {
  const request = testCase.request;
  const format = request.response_format?.type ?? 'json_schema';
  const content = [{ type: 'text', text: request.prompt }];
  if (request.image) {
    content.push({ type: 'image', image: Buffer.from(imageBase64, 'base64'), mediaType: imageType });
  }
  const settings = {
    model: providers[format].chatModel(testCase.model),
    messages: [{ role: 'user', content }],
    maxRetries: 0,
  };
  if (request.system !== undefined) settings.system = request.system;
  if (request.temperature !== undefined) settings.temperature = request.temperature;
  if (request.max_tokens !== undefined) settings.maxOutputTokens = request.max_tokens;
  if (request.tools) {
    settings.tools = Object.fromEntries(request.tools.map((name) => {
      const { description, parameters } = SPEC.tools[name];
      return [name, tool({ description, inputSchema: jsonSchema(parameters) })];
    }));
  }
  return settings;
}

/** `streamText`, assembled from the full stream as an application would. */
async function stream(testCase) {
  const result = streamText(callSettings(testCase));
  let text = '';
  let reasoning = '';
  const toolCalls = [];
  for await (const part of result.fullStream) {
    if (part.type === 'text-delta') text += part.text;
    if (part.type === 'reasoning-delta') reasoning += part.text;
    if (part.type === 'tool-call') {
      toolCalls.push({ id: part.toolCallId, name: part.toolName, input: part.input });
    }
    if (part.type === 'error') throw part.error;
  }
  return {
    text,
    reasoning,
    toolCalls,
    finishReason: await result.finishReason,
    usage: await result.usage,
    response: await result.response,
    providerMetadata: await result.providerMetadata,
  };
}

async function structured(testCase) {
  const format = testCase.request.response_format;
  const result = await generateObject({
    ...callSettings(testCase),
    schema: jsonSchema(format.schema),
    schemaName: format.name,
    schemaDescription: format.description,
  });
  return {
    text: result.response.body.choices[0].message.content,
    reasoning: result.reasoning ?? '',
    toolCalls: [],
    object: result.object,
    finishReason: result.finishReason,
    usage: result.usage,
    response: result.response,
    providerMetadata: result.providerMetadata,
  };
}

async function generate(testCase) {
  const result = await generateText(callSettings(testCase));
  return {
    text: result.text,
    reasoning: result.reasoningText ?? '',
    toolCalls: result.toolCalls.map((call) => ({ id: call.toolCallId, name: call.toolName, input: call.input })),
    finishReason: result.finishReason,
    usage: result.usage,
    response: result.response,
    providerMetadata: result.providerMetadata,
  };
}

async function runCase(testCase) {
  const { expect } = testCase;
  const run = isStream(testCase) ? stream : testCase.kind === 'structured' ? structured : generate;
  if (expect.error) {
    try {
      await run(testCase);
    } catch (error) {
      assert(APICallError.isInstance(error), `not an API call error: ${error}`);
      const body = JSON.parse(error.responseBody);
      assertEqual([error.statusCode, body.error.param], [expect.error.status, expect.error.param], 'error');
      return null;
    }
    throw new Error('the request succeeded');
  }
  const result = await run(testCase);
  assertEqual(result.text, expect.text, 'text');
  assertEqual(result.reasoning, expect.reasoning ?? '', 'reasoning');
  assertEqual(result.finishReason, expect.finish_reason.replace('_', '-'), 'finishReason');
  const wanted = expect.tool_calls ?? [];
  assertEqual(
    result.toolCalls.map(({ name, input }) => ({ name, input })),
    wanted.map(({ name, arguments: args }) => ({ name, input: JSON.parse(args) })),
    'tool calls',
  );
  result.toolCalls.forEach((call, callIdx) => {
    assert(call.id === (wanted[callIdx].id ?? call.id) && call.id, `tool call id ${call.id}`);
  });
  if (expect.object !== undefined) assertEqual(result.object, expect.object, 'object');
  const { usage } = result;
  const counts = {
    prompt_tokens: usage.inputTokens,
    completion_tokens: usage.outputTokens,
    reasoning_tokens: usage.outputTokenDetails.reasoningTokens,
    cached_tokens: usage.inputTokenDetails.cacheReadTokens,
  };
  const id = result.response.id;
  const cost = result.providerMetadata?.[PROVIDER]?.cost;
  return { id, cost: await checkBilling(testCase, id, counts, cost) };
}

/** The vector `mock/embed` answers for `text` (src/mock/embed.rs: FNV-1a, then
 * xorshift, normalised), in the mock's f32 arithmetic. */
function mockVector(text, dimensions = 64) {
  const MASK = (1n << 64n) - 1n;
  let state = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(text, 'utf8')) state = ((state ^ BigInt(byte)) * 0x100000001b3n) & MASK;
  const raw = [];
  for (let component = 0; component < dimensions; component += 1) {
    state ^= (state << 13n) & MASK;
    state ^= state >> 7n;
    state ^= (state << 17n) & MASK;
    raw.push(Math.fround(Math.fround(Number(state >> 40n) / 2 ** 23) - 1));
  }
  const squares = raw.reduce((sum, value) => Math.fround(sum + Math.fround(value * value)), 0);
  const norm = Math.fround(Math.sqrt(squares));
  return raw.map((value) => Math.fround(value / norm));
}

const words = (texts) => texts.reduce((n, text) => n + text.split(/\s+/).filter(Boolean).length, 0);

/** One embeddings answer of `texts`: its vectors are the mock's, its usage counts one
 * token a word, its `usage.cost` is that at $1 per million tokens and is what the
 * gateway recorded; returns its `{id, cost}`. */
async function checkEmbeddings(texts, embeddings, usage, body) {
  assertEqual(embeddings.map((vector) => vector.map(Math.fround)), texts.map((text) => mockVector(text)), 'vectors');
  const tokens = words(texts);
  assertEqual([usage.tokens, body.usage.prompt_tokens], [tokens, tokens], 'usage');
  const cost = costPico(body.usage.cost);
  assertEqual(cost, BigInt(tokens) * 1_000_000n, 'embedding cost');
  const response = await fetch(`${BASE}/v1/api/generation?id=${body.id}`, { headers: { authorization: `Bearer ${KEY}` } });
  const record = (await response.json()).data;
  assertEqual(
    [record.model, record.status, record.tokens_prompt, picoOf(record.cost_usd)],
    ['mock/embed', 200, tokens, cost],
    'record',
  );
  return { id: body.id, cost };
}

/** `embed` and `embedMany` through `@ai-sdk/openai`'s embedding model. */
async function embeddings() {
  const model = createOpenAI({ baseURL: `${BASE}/v1/api`, apiKey: KEY }).embeddingModel('mock/embed');
  const one = await embed({ model, value: 'the first text to embed', maxRetries: 0 });
  const texts = ['the first text to embed', 'and a second one'];
  const many = await embedMany({ model, values: texts, maxRetries: 0 });
  assertEqual(many.responses.length, 1, 'one request for both texts');
  return [
    await checkEmbeddings([one.value], [one.embedding], one.usage, one.response.body),
    await checkEmbeddings(texts, many.embeddings, many.usage, many.responses[0].body),
  ];
}

const version = (name) => JSON.parse(
  readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), 'utf8'),
).version;
await main(
  `vercel ai sdk ${version('ai')} (openai-compatible ${version('@ai-sdk/openai-compatible')}, openai ${version('@ai-sdk/openai')})`,
  runCase,
  embeddings,
);
