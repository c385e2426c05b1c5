// The MongoDB shell (mongosh, from npm), unchanged: scenarios.js runs once straight against the
// upstream and once through mongomux (`mongosh --quiet --nodb --file scenarios.js`), and each
// scenario's outcomes are compared with the shared harness (compat/lib/harness.mjs).

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { differential, TARGETS, awsEnvironment, WRONG_AWS_SECRET } from '../../lib/harness.mjs';

const require = createRequire(import.meta.url);
const SUITE = 'mongosh';
const DRIVER = 'mongosh';
const VERSION = `${require('mongosh/package.json').version} (driver ${require('mongodb/package.json').version})`;
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const MONGOSH = here('../node_modules/.bin/mongosh');
const SCRIPT = here('../scenarios.js');
const SCENARIOS = JSON.parse(readFileSync(here('../../scenarios.json'), 'utf8')).scenarios
  .filter((s) => !s.only || s.only.includes(DRIVER)).map((s) => s.id);

const results = {};

async function runShell(target) {
  // The IAM role's credentials as Lambda sets them (only the IAM scenario logs in with them).
  const env = {
    ...process.env, ...awsEnvironment(), COMPAT_WRONG_AWS_SECRET: WRONG_AWS_SECRET,
    COMPAT_TARGET: target, MONGOSH_NO_UPDATE_CHECK: '1', DO_NOT_TRACK: '1',
  };
  delete env.AWS_LAMBDA_RUNTIME_API;
  const { stdout } = await promisify(execFile)(MONGOSH, ['--quiet', '--nodb', '--norc', '--file', SCRIPT],
    { env, timeout: 150_000, maxBuffer: 16 << 20 }).catch((e) => {
    throw new Error(`mongosh (${target}) failed: ${e.message}\n${e.stdout}\n${e.stderr}`);
  });
  const byScenario = {};
  for (const line of stdout.split('\n')) {
    if (line.startsWith('COMPAT ')) {
      const rec = JSON.parse(line.slice(7));
      byScenario[rec.scenario] = rec;
    }
  }
  return { byScenario, stdout };
}

before(async () => {
  // Sequentially: the drop scenarios restart the servers.
  for (const target of TARGETS) results[target] = await runShell(target);
});

for (const id of SCENARIOS) {
  test(id, async () => {
    const res = await differential({
      suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: id,
      run: async (target) => {
        const rec = results[target].byScenario[id];
        if (!rec) throw new Error(`scenarios.js printed no result for ${id} (${target}):\n${results[target].stdout.slice(-2000)}`);
        if (rec.status !== 'ok') throw Object.assign(new Error(`${rec.info?.message ?? 'failed'} [mongosh: ${rec.info?.stack ?? ''}]`), rec.outcome?.exception ?? {});
        return { outcome: rec.outcome, info: { ...rec.info, shellMs: rec.ms } };
      },
    });
    if (id === 'retryable-write-drop' || id === 'retryable-read-drop') {
      // Through the gateway (a mongos) the operation is retried and succeeds exactly once.
      const g = res.gateway.outcome;
      assert.deepEqual([g.result, g.after], id === 'retryable-write-drop' ? ['ok', [1, 2]] : [[1], [1]], JSON.stringify(g));
    }
    if (id === 'seed-list-two-gateways') assert.equal(res.gateway.info.isdbgrid, true);
    if (id === 'iam-mongodb-aws') {
      // The upstream has no MONGODB-AWS: the gateway side is checked on its own.
      const g = res.gateway.outcome;
      assert.deepEqual([g.ping, g.found, g.wrongSecret?.refused?.code], [1, [{ _id: 1, who: 'iam' }], 18], JSON.stringify(g));
    }
  });
}
