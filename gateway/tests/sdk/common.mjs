// What the Node SDK scripts share: the cases, the image, the gateway's records and the
// account's balance, exact USD arithmetic, and the loop that runs every case, checks
// the balance and reports. Environment as for openai_python.py (see tests/sdk.rs).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

export const BASE = env('SOLROUTER_BASE_URL');
export const KEY = env('SOLROUTER_KEY');
const ADMIN = env('SOLROUTER_ADMIN_TOKEN');
const ACCOUNT = env('SOLROUTER_ACCOUNT');
export const SPEC = JSON.parse(readFileSync(env('SDK_CASES'), 'utf8'));
/** The case kinds to run. */
const KINDS = env('SDK_KINDS').split(',');

const pointer = (value, path) =>
  path.split('/').slice(1).reduce((inner, token) => inner[token], value);

/** The recorded image as a `data:` URL, as the recorded requests sent it. */
export const IMAGE_URL = pointer(
  JSON.parse(readFileSync(join(env('SDK_FIXTURES'), SPEC.image.file), 'utf8')),
  SPEC.image.pointer,
);

export const isStream = (testCase) => testCase.kind.startsWith('stream');

export function assert(condition, what) {
  if (!condition) throw new Error(what);
}

export function assertEqual(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(`${what}: ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
  }
}

async function get(path, bearer) {
  const response = await fetch(BASE + path, { headers: { authorization: `Bearer ${bearer}` } });
  const body = await response.json();
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

const PICO_PER_USD = 10n ** 12n;

/** A decimal USD string (possibly negative) in pico-USD. */
export function picoOf(text) {
  const match = /^(-?)(\d+)(?:\.(\d{1,12}))?$/.exec(text);
  if (!match) throw new Error(`not a USD amount: ${text}`);
  const amount = BigInt(match[2]) * PICO_PER_USD + BigInt((match[3] ?? '').padEnd(12, '0'));
  return match[1] ? -amount : amount;
}

/** A `usage.cost` number in pico-USD: costs have at most 12 decimals, so rounding the
 * float recovers them exactly. */
export function costPico(cost) {
  assert(typeof cost === 'number' && cost > 0, `usage.cost ${JSON.stringify(cost)}`);
  return BigInt(Math.round(cost * 1e12));
}

export function usd(pico) {
  const sign = pico < 0n ? '-' : '';
  const abs = pico < 0n ? -pico : pico;
  return `${sign}${abs / PICO_PER_USD}.${(abs % PICO_PER_USD).toString().padStart(12, '0')}`;
}

const available = async () =>
  picoOf((await get(`/v1/admin/accounts/${ACCOUNT}`, ADMIN)).available);

/** Checks the answer's usage counts (those the SDK's API reports) and its cost against
 * the case and the gateway's record of generation `id`; returns the cost in pico-USD. */
export async function checkBilling(testCase, id, counts, cost) {
  const expected = Object.fromEntries(Object.keys(counts).map((name) => [name, testCase.expect.usage[name]]));
  assertEqual(counts, expected, 'usage');
  const pico = costPico(cost);
  if (testCase.expect.cost !== undefined) {
    assertEqual(usd(pico), usd(picoOf(testCase.expect.cost)), 'cost');
  }
  const record = (await get(`/v1/api/generation?id=${id}`, KEY)).data;
  assertEqual(picoOf(record.cost_usd), pico, `record ${JSON.stringify(record)}: cost`);
  assertEqual(
    [record.model, record.status, record.streamed, record.tokens_prompt, record.tokens_completion],
    [testCase.model, 200, isStream(testCase), counts.prompt_tokens, counts.completion_tokens],
    'record',
  );
  return pico;
}

/** Runs `runCase` on every case of the kinds asked for (it returns `{id, cost}` in
 * pico-USD, or null for a refused request), then `checkMore` (which returns the answers
 * outside the cases it paid for, as `{id, cost}`), then checks the balance fell by the
 * sum of the costs; prints `RESULTS` and `OTHERS` and exits non-zero listing every
 * failure. */
export async function main(name, runCase, checkMore = async () => {}) {
  const before = await available();
  const results = [];
  const failures = [];
  let total = 0n;
  for (const testCase of SPEC.cases.filter((testCase) => KINDS.includes(testCase.kind))) {
    try {
      const outcome = await runCase(testCase);
      if (outcome !== null) {
        total += outcome.cost;
        results.push({ case: testCase.id, id: outcome.id, cost: usd(outcome.cost) });
      }
    } catch (error) {
      failures.push(`${testCase.id}: ${error?.stack ?? error}`);
    }
  }
  const others = [];
  try {
    for (const other of (await checkMore()) ?? []) {
      total += other.cost;
      others.push({ id: other.id, cost: usd(other.cost) });
    }
  } catch (error) {
    failures.push(`${error?.stack ?? error}`);
  }
  const drop = before - (await available());
  if (drop !== total) {
    failures.push(`the balance fell by ${usd(drop)}, the costs add up to ${usd(total)}`);
  }
  console.log(`RESULTS ${JSON.stringify(results)}`);
  console.log(`OTHERS ${JSON.stringify(others)}`);
  if (failures.length > 0) {
    console.error(['FAILED:', ...failures].join('\n'));
    process.exit(1);
  }
  console.log(`${name} ok: ${results.length} answers, $${usd(total)}`);
}
