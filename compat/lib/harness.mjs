// The differential harness shared by the Node.js suites (compat/node, compat/mongosh): only
// Node's standard library here, no driver, so each suite brings its own.
//
// A scenario is a function of the target ("direct" = straight to the upstream, "gateway" =
// through mongomux) returning {outcome, info}: `outcome` is what must be identical on both
// sides (results, counts, error codes), `info` is recorded but not compared (timings, topology,
// messages). Each target gives one JSON line in $COMPAT_RESULTS; a third line carries the
// verdict. A difference fails the test unless compat/known-differences.json lists it.

import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';

export const TARGETS = ['direct', 'gateway'];

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the suites through compat/run`);
  return v;
}

/** The connection strings of one target, from the variables compat/run exports. */
export function uris(target) {
  const up = target === 'direct' ? 'DIRECT' : 'GATEWAY';
  return {
    plain: env(`COMPAT_${up}_URI`),
    sha256: env(`COMPAT_${up}_SHA256_URI`),
    sha1: env(`COMPAT_${up}_SHA1_URI`),
    seed: target === 'direct' ? env('COMPAT_DIRECT_URI') : env('COMPAT_GATEWAY_SEED_URI'),
    txn: env(`COMPAT_TXN_${up}_URI`),
    restartName: env(`COMPAT_RESTART_${up}`),
    iam: env(`COMPAT_${up}_IAM_URI`),
  };
}

/** `uri` with extra query options appended. */
export function withOptions(uri, opts) {
  const q = new URLSearchParams(opts).toString();
  return uri + (uri.includes('?') ? '&' : '?') + q;
}

/** `uri` with its password replaced (single-host URIs only). */
export function withPassword(uri, password) {
  const u = new URL(uri);
  u.password = password;
  return u.toString();
}

/** A database name for one (suite, scenario, target): FerretDB accepts [A-Za-z0-9_]. */
export function dbName(prefix, scenario, target) {
  return `compat_${prefix}_${scenario}_${target[0]}`.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 60);
}

/** What of an error is compared: its class, code, codeName and labels (never the message). */
export function errorShape(e) {
  if (e === null || e === undefined) return null;
  const labels = typeof e.errorLabels === 'object' && e.errorLabels ? [...e.errorLabels].sort() : [];
  return {
    name: e.name ?? 'Error',
    code: e.code ?? null,
    codeName: e.codeName ?? null,
    labels,
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * What the AWS SDK might read besides the environment's credentials (shared config files,
 * instance metadata), pointed at nothing, for the IAM scenario.
 */
export const AWS_ISOLATION = {
  AWS_REGION: 'us-east-1',
  AWS_EC2_METADATA_DISABLED: 'true',
  AWS_CONFIG_FILE: '/nonexistent/compat-aws-config',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/compat-aws-credentials',
};

/** The IAM role's temporary credentials as Lambda sets them, with `secret` as the secret key. */
export function awsEnvironment(secret = env('COMPAT_AWS_SECRET_ACCESS_KEY')) {
  return {
    ...AWS_ISOLATION,
    AWS_ACCESS_KEY_ID: env('COMPAT_AWS_ACCESS_KEY_ID'),
    AWS_SECRET_ACCESS_KEY: secret,
    AWS_SESSION_TOKEN: env('COMPAT_AWS_SESSION_TOKEN'),
  };
}

/** A wrong secret key, for the refused login of the IAM scenario. */
export const WRONG_AWS_SECRET = 'wrong-secret-wrong-secret-wrong-secret00';

/** `ctl freeze NAME`: SIGSTOP the server, synchronously. */
export function freeze(name) {
  execFileSync(env('COMPAT_CTL'), ['freeze', name], { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Start `ctl restart NAME DELAY_MS` in the background; resolves with its output when done. */
export function restartLater(name, delayMs) {
  const child = spawn(env('COMPAT_CTL'), ['restart', name, String(delayMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`ctl restart ${name}: exit ${code}: ${out}`))));
  });
}

let knownList;
/** The entry of compat/known-differences.json for (driver, scenario), if any. */
export function knownDifference(driver, scenario) {
  knownList ??= JSON.parse(readFileSync(env('COMPAT_KNOWN'), 'utf8')).differences;
  return knownList.find((k) => (k.driver === driver || k.driver === '*') && k.scenario === scenario);
}

function record(rec) {
  appendFileSync(env('COMPAT_RESULTS'), JSON.stringify({ ts: new Date().toISOString(), ...rec }) + '\n');
}

// JSON round trip: BSON values (ObjectId, Long, Decimal128, dates) become their JSON form, so
// both sides are compared the way the report shows them.
const plain = (x) => (x === undefined ? null : JSON.parse(JSON.stringify(x)));

/**
 * Run `scenario(target)` on both targets, record both, compare, and fail on an unexplained
 * difference or on a scenario that threw (an expected server error belongs in the outcome).
 */
export async function differential({ suite, driver, driverVersion, scenario, run }) {
  const res = {};
  for (const target of TARGETS) {
    const t0 = performance.now();
    let r;
    try {
      const got = await run(target);
      r = { status: 'ok', outcome: plain(got.outcome), info: plain(got.info ?? {}) };
    } catch (e) {
      r = { status: 'error', outcome: { exception: errorShape(e) }, info: { message: String(e?.message ?? e), stack: String(e?.stack ?? '').split('\n').slice(0, 4).join(' | ') } };
    }
    r.ms = Math.round(performance.now() - t0);
    record({ suite, driver, driver_version: driverVersion, scenario, target, ...r });
    res[target] = r;
  }
  const same = isDeepStrictEqual(res.direct.outcome, res.gateway.outcome);
  const bothOk = res.direct.status === 'ok' && res.gateway.status === 'ok';
  const known = knownDifference(driver, scenario);
  let verdict;
  if (!same) verdict = known ? 'known-difference' : 'differs';
  else verdict = bothOk ? 'same' : known ? 'known-difference' : 'error';
  record({ suite, driver, driver_version: driverVersion, scenario, target: 'verdict', verdict, known: known?.id ?? null });
  if (verdict === 'differs' || verdict === 'error') {
    assert.fail(`${driver} ${scenario}: ${verdict}\n  direct:  ${JSON.stringify(res.direct)}\n  gateway: ${JSON.stringify(res.gateway)}`);
  }
  return res;
}

/** Record a scenario that cannot run yet (both targets), with the reason. */
export function notYet({ suite, driver, driverVersion, scenario, reason }) {
  for (const target of TARGETS) {
    record({ suite, driver, driver_version: driverVersion, scenario, target, status: 'not-yet', outcome: null, info: { reason } });
  }
  record({ suite, driver, driver_version: driverVersion, scenario, target: 'verdict', verdict: 'not-yet', reason });
}
