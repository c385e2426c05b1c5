// The official Node.js driver (`mongodb`), unchanged, straight against the upstream and through
// mongomux: every scenario of compat/scenarios.json, compared (see compat/lib/harness.mjs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { MongoClient } from 'mongodb';
import {
  differential, uris, withOptions, withPassword, dbName, errorShape, freeze, restartLater, sleep,
  awsEnvironment, WRONG_AWS_SECRET,
} from '../../lib/harness.mjs';

const require = createRequire(import.meta.url);
const DRIVER = 'node-mongodb';
const VERSION = require('mongodb/package.json').version;
const SUITE = 'node';

/** A connected client, with command and SDAM events collected; closed after `fn`. */
async function withClient(uri, options, fn) {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000, monitorCommands: true, ...options });
  const events = { started: [], succeeded: [], failed: [], heartbeats: [], servers: new Map() };
  client.on('commandStarted', (e) => events.started.push(e));
  client.on('commandSucceeded', (e) => events.succeeded.push(e));
  client.on('commandFailed', (e) => events.failed.push(e));
  client.on('serverHeartbeatStarted', (e) => events.heartbeats.push(e));
  client.on('topologyDescriptionChanged', (e) => {
    for (const [addr, sd] of e.newDescription.servers) events.servers.set(addr, sd.type);
  });
  try {
    await client.connect();
    return await fn(client, events);
  } finally {
    await client.close();
  }
}

async function freshDb(client, scenario, target) {
  const db = client.db(dbName('node', scenario, target));
  await db.dropDatabase();
  return db;
}

const ids = async (coll, filter = {}) => (await coll.find(filter).sort({ _id: 1 }).toArray()).map((d) => d._id);

function bulkErrorShape(e) {
  if (!e?.result && !e?.writeErrors) return { exception: errorShape(e) };
  const r = e.result ?? {};
  const writeErrors = [].concat(e.writeErrors ?? []).map((w) => ({ index: w.index, code: w.code }));
  return {
    name: e.name,
    code: e.code ?? null,
    insertedCount: r.insertedCount ?? e.insertedCount ?? null,
    matchedCount: r.matchedCount ?? null,
    modifiedCount: r.modifiedCount ?? null,
    deletedCount: r.deletedCount ?? null,
    writeErrors,
  };
}

function scenario(id, run) {
  test(id, async () => {
    await differential({ suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: id, run });
  });
}

// --- connect ------------------------------------------------------------------------------------

for (const [id, key] of [['connect-scram-sha-256', 'sha256'], ['connect-scram-sha-1', 'sha1']]) {
  scenario(id, async (target) => {
    const uri = uris(target)[key];
    const outcome = {};
    const info = {};
    await withClient(uri, {}, async (client, ev) => {
      outcome.ping = (await client.db('admin').command({ ping: 1 })).ok;
      const db = await freshDb(client, id, target);
      await db.collection('c').insertOne({ _id: 1, who: key });
      outcome.found = await db.collection('c').findOne({ _id: 1 });
      info.serverTypes = Object.fromEntries(ev.servers);
      info.awaitedHeartbeats = ev.heartbeats.filter((h) => h.awaited).length;
    });
    outcome.wrongPassword = await withClient(withPassword(uri, 'not-the-password'), { serverSelectionTimeoutMS: 5000 },
      (c) => c.db('admin').command({ ping: 1 })).then(() => 'accepted', (e) => errorShape(e));
    return { outcome, info };
  });
}

// --- CRUD ---------------------------------------------------------------------------------------

scenario('crud', (target) => withClient(uris(target).plain, {}, async (client) => {
  const coll = (await freshDb(client, 'crud', target)).collection('items');
  const o = {};
  o.insertOne = (await coll.insertOne({ _id: 1, n: 1, tag: 'a' })).insertedId;
  o.insertMany = (await coll.insertMany([
    { _id: 2, n: 2, tag: 'b' }, { _id: 3, n: 3, tag: 'a' }, { _id: 4, n: 4, tag: 'b' }, { _id: 5, n: 5, tag: 'a' },
  ])).insertedCount;
  o.findOne = await coll.findOne({ _id: 3 });
  o.findMissing = await coll.findOne({ _id: 99 });
  const u1 = await coll.updateOne({ _id: 2 }, { $set: { tag: 'c' } });
  o.updateOne = [u1.matchedCount, u1.modifiedCount];
  const u2 = await coll.updateMany({ n: { $gte: 3 } }, { $inc: { n: 10 } });
  o.updateMany = [u2.matchedCount, u2.modifiedCount];
  const u3 = await coll.updateOne({ _id: 6 }, { $set: { n: 6, tag: 'u' } }, { upsert: true });
  o.upsert = [u3.matchedCount, u3.modifiedCount, u3.upsertedCount, u3.upsertedId];
  const r = await coll.replaceOne({ _id: 4 }, { n: 40, tag: 'r' });
  o.replaceOne = [r.matchedCount, r.modifiedCount];
  o.findOneAndUpdate = await coll.findOneAndUpdate({ _id: 1 }, { $set: { tag: 'z' } }, { returnDocument: 'after' });
  o.findOneAndDelete = await coll.findOneAndDelete({ _id: 6 });
  o.deleteOne = (await coll.deleteOne({ _id: 5 })).deletedCount;
  o.deleteMany = (await coll.deleteMany({ tag: 'a' })).deletedCount;
  o.countDocuments = await coll.countDocuments({});
  o.estimatedDocumentCount = await coll.estimatedDocumentCount();
  o.distinct = (await coll.distinct('tag')).sort();
  o.projection = await coll.find({}, { projection: { _id: 0, tag: 1 } }).sort({ tag: 1 }).toArray();
  o.skipLimit = await coll.find({}).sort({ _id: -1 }).skip(1).limit(1).toArray();
  o.all = await coll.find({}).sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

// --- bulk writes with a duplicate key mid-batch ---------------------------------------------------

for (const ordered of [true, false]) {
  const id = ordered ? 'bulk-ordered-error' : 'bulk-unordered-error';
  scenario(id, (target) => withClient(uris(target).plain, {}, async (client) => {
    const db = await freshDb(client, id, target);
    const o = {};
    o.insertMany = await db.collection('im').insertMany([{ _id: 1 }, { _id: 2 }, { _id: 2 }, { _id: 3 }], { ordered })
      .then((r) => ({ accepted: r.insertedCount }), bulkErrorShape);
    o.insertManyAfter = await ids(db.collection('im'));
    o.bulkWrite = await db.collection('bw').bulkWrite([
      { insertOne: { document: { _id: 10 } } },
      { updateOne: { filter: { _id: 10 }, update: { $set: { x: 1 } } } },
      { insertOne: { document: { _id: 10 } } },
      { deleteOne: { filter: { _id: 10 } } },
      { insertOne: { document: { _id: 11 } } },
    ], { ordered }).then((r) => ({ accepted: [r.insertedCount, r.matchedCount, r.modifiedCount, r.deletedCount] }), bulkErrorShape);
    o.bulkWriteAfter = await db.collection('bw').find({}).sort({ _id: 1 }).toArray();
    return { outcome: o };
  }));
}

// --- cursors ------------------------------------------------------------------------------------

async function seed25(db) {
  await db.collection('c').insertMany(Array.from({ length: 25 }, (_, i) => ({ _id: i, g: i % 3, v: i })));
  return db.collection('c');
}

scenario('cursor-batches', (target) => withClient(uris(target).plain, {}, async (client, ev) => {
  const coll = await seed25(await freshDb(client, 'cursor-batches', target));
  const from = ev.succeeded.length;
  const docs = await coll.find({}, { batchSize: 2 }).sort({ _id: 1 }).toArray();
  const replies = ev.succeeded.slice(from);
  const find = replies.find((e) => e.commandName === 'find');
  const getMores = replies.filter((e) => e.commandName === 'getMore');
  return {
    outcome: {
      ids: docs.map((d) => d._id),
      firstBatch: find.reply.cursor.firstBatch.length,
      getMores: getMores.length,
      nextBatches: getMores.map((e) => e.reply.cursor.nextBatch.length),
      exhausted: getMores.at(-1).reply.cursor.id.toString() === '0',
    },
  };
}));

scenario('cursor-early-close', (target) => withClient(uris(target).plain, {}, async (client, ev) => {
  const coll = await seed25(await freshDb(client, 'cursor-early-close', target));
  const from = ev.succeeded.length;
  const cursor = coll.find({}, { batchSize: 2 }).sort({ _id: 1 });
  const read = [];
  for (let i = 0; i < 5; i++) read.push((await cursor.next())._id);
  await cursor.close();
  const replies = ev.succeeded.slice(from);
  const kill = replies.find((e) => e.commandName === 'killCursors');
  const failedKill = ev.failed.find((e) => e.commandName === 'killCursors');
  return {
    outcome: {
      read,
      getMores: replies.filter((e) => e.commandName === 'getMore').length,
      killCursors: kill ? {
        killed: kill.reply.cursorsKilled?.length ?? null,
        notFound: kill.reply.cursorsNotFound?.length ?? null,
        alive: kill.reply.cursorsAlive?.length ?? null,
        unknown: kill.reply.cursorsUnknown?.length ?? null,
      } : failedKill ? { failed: errorShape(failedKill.failure) } : 'not sent',
      countAfter: await coll.countDocuments({}),
    },
  };
}));

// --- aggregate ----------------------------------------------------------------------------------

scenario('aggregate', (target) => withClient(uris(target).plain, {}, async (client) => {
  const coll = await seed25(await freshDb(client, 'aggregate', target));
  // One accumulator per $group: FerretDB 1.24 computes only the first.
  const grouped = await coll.aggregate([
    { $match: { v: { $gte: 5 } } },
    { $group: { _id: '$g', total: { $sum: '$v' } } },
    { $sort: { _id: 1 } },
  ], { batchSize: 1 }).toArray();
  const counted = await coll.aggregate([{ $match: { g: 1 } }, { $count: 'n' }]).toArray();
  return { outcome: { grouped, counted } };
}));

// --- indexes and a duplicate key ------------------------------------------------------------------

scenario('index-duplicate-key', (target) => withClient(uris(target).plain, {}, async (client) => {
  const coll = (await freshDb(client, 'index-duplicate-key', target)).collection('users');
  const o = {};
  o.createIndex = await coll.createIndex({ email: 1 }, { unique: true });
  const listed = async () => (await coll.listIndexes().toArray())
    .map((i) => ({ name: i.name, key: i.key, unique: !!i.unique })).sort((a, b) => a.name.localeCompare(b.name));
  o.indexes = await listed();
  await coll.insertOne({ _id: 1, email: 'a@example.com' });
  o.duplicate = await coll.insertOne({ _id: 2, email: 'a@example.com' }).then(() => 'accepted', (e) => ({
    ...errorShape(e), keyValue: e.keyValue ?? e.errInfo?.keyValue ?? null,
  }));
  o.duplicateId = await coll.insertOne({ _id: 1, email: 'b@example.com' }).then(() => 'accepted', (e) => errorShape(e));
  o.dropIndex = (await coll.dropIndex('email_1')).ok;
  o.indexesAfter = await listed();
  o.afterDrop = await coll.insertOne({ _id: 3, email: 'a@example.com' }).then(() => 'accepted', (e) => errorShape(e));
  return { outcome: o };
}));

// --- retryable writes and reads across a connection drop ---------------------------------------------

// The server the client is connected to (FerretDB, or the gateway) is frozen, an operation is sent
// on the pooled connection (so it is surely in flight), and the server is then killed and started
// again on the same port: the connection drops under the operation, and the driver's one retry must
// land on the restarted server.
for (const kind of ['write', 'read']) {
  const id = `retryable-${kind}-drop`;
  test(id, async () => {
    const res = await differential({ suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: id, run: (target) => dropScenario(kind, id, target) });
    // Through the gateway (a mongos to the driver) the operation succeeds, exactly once,
    // whatever the reference does (see known-differences.json, retryable-writes-need-mongos).
    const g = res.gateway.outcome;
    assert.deepEqual([g.result, g.after], kind === 'write' ? ['ok', [1, 2]] : [[1], [1]], JSON.stringify(res.gateway));
  });
}

async function dropScenario(kind, id, target) {
  {
    const u = uris(target);
    return withClient(withOptions(u.plain, { retryWrites: true, retryReads: true }), { maxPoolSize: 1 }, async (client, ev) => {
      const coll = (await freshDb(client, id, target)).collection('r');
      await coll.insertOne({ _id: 1 });
      const from = ev.started.length;
      const fromFailed = ev.failed.length;
      freeze(u.restartName);
      const restarted = restartLater(u.restartName, 700);
      const op = kind === 'write'
        ? coll.insertOne({ _id: 2 }).then(() => 'ok', (e) => errorShape(e))
        : coll.find({}).sort({ _id: 1 }).toArray().then((d) => d.map((x) => x._id), (e) => errorShape(e));
      const [result, restartLog] = await Promise.all([op, restarted]);
      const command = kind === 'write' ? 'insert' : 'find';
      const attempts = ev.started.slice(from).filter((e) => e.commandName === command).length;
      const failedAttempts = ev.failed.slice(fromFailed).filter((e) => e.commandName === command).map((e) => e.failure?.name);
      // How many attempts the driver made is recorded, not compared: a driver that finds its
      // pooled connection dead before sending retries the connection, not the command.
      return {
        outcome: { result, after: await ids(coll) },
        info: { restart: restartLog, attempts, failedAttempts },
      };
    });
  }
}

// --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------

scenario('txn-commit', (target) => withClient(uris(target).txn, {}, async (client) => {
  const db = await freshDb(client, 'txn-commit', target);
  await db.collection('a').insertOne({ _id: 0 });
  await db.collection('b').insertOne({ _id: 0 });
  const o = {};
  const session = client.startSession();
  try {
    await session.withTransaction(async () => {
      await db.collection('a').insertOne({ _id: 1 }, { session });
      await db.collection('b').updateOne({ _id: 0 }, { $set: { moved: 1 } }, { session });
      o.insideCount = await db.collection('a').countDocuments({}, { session });
    });
  } finally {
    await session.endSession();
  }
  o.a = await db.collection('a').find({}).sort({ _id: 1 }).toArray();
  o.b = await db.collection('b').find({}).sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

scenario('txn-abort', (target) => withClient(uris(target).txn, {}, async (client) => {
  const db = await freshDb(client, 'txn-abort', target);
  await db.collection('a').insertOne({ _id: 0, n: 0 });
  const o = {};
  const session = client.startSession();
  try {
    session.startTransaction();
    await db.collection('a').insertOne({ _id: 1 }, { session });
    await db.collection('a').updateOne({ _id: 0 }, { $set: { n: 1 } }, { session });
    o.inside = await db.collection('a').find({}, { session }).sort({ _id: 1 }).toArray();
    await session.abortTransaction();
  } finally {
    await session.endSession();
  }
  o.after = await db.collection('a').find({}).sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

// --- compression requested by the client -----------------------------------------------------------

// snappy and zstd need optional packages in Node; they are requested anyway: neither upstream nor
// the gateway offers compression, so the driver must settle on none and work uncompressed.
scenario('compression', (target) => withClient(withOptions(uris(target).plain, { compressors: 'snappy,zlib,zstd' }), {},
  async (client) => {
    const coll = (await freshDb(client, 'compression', target)).collection('z');
    await coll.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: i, pad: 'x'.repeat(1000) })));
    const docs = await coll.find({}, { batchSize: 10 }).sort({ _id: 1 }).toArray();
    return { outcome: { count: docs.length, padOk: docs.every((d) => d.pad.length === 1000) }, info: { requested: 'snappy,zlib,zstd' } };
  }));

// --- a driver configured the way it is on AWS Lambda ---------------------------------------------

scenario('lambda-polling', async (target) => {
  process.env.AWS_LAMBDA_RUNTIME_API = '127.0.0.1:9001';
  try {
    return await withClient(uris(target).plain, { heartbeatFrequencyMS: 500 }, async (client, ev) => {
      const coll = (await freshDb(client, 'lambda-polling', target)).collection('l');
      await coll.insertOne({ _id: 1 });
      await sleep(1600);
      const found = await coll.findOne({ _id: 1 });
      return {
        outcome: { found, heartbeats: ev.heartbeats.length > 0, awaited: ev.heartbeats.filter((h) => h.awaited).length },
        info: { heartbeats: ev.heartbeats.length },
      };
    });
  } finally {
    delete process.env.AWS_LAMBDA_RUNTIME_API;
  }
});

// --- directConnection=true, and a seed list of two gateways -------------------------------------------

scenario('direct-connection', (target) => withClient(withOptions(uris(target).plain, { directConnection: true }), {},
  async (client, ev) => {
    const coll = (await freshDb(client, 'direct-connection', target)).collection('d');
    await coll.insertMany([{ _id: 1 }, { _id: 2 }]);
    return { outcome: { ids: await ids(coll) }, info: { serverTypes: Object.fromEntries(ev.servers) } };
  }));

test('seed-list-two-gateways', async () => {
  const res = await differential({
    suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: 'seed-list-two-gateways',
    run: (target) => withClient(uris(target).seed, {}, async (client, ev) => {
      const coll = (await freshDb(client, 'seed-list-two-gateways', target)).collection('s');
      await coll.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: i })));
      const docs = await coll.find({}, { batchSize: 3 }).sort({ _id: 1 }).toArray();
      for (let i = 0; i < 40 && [...ev.servers.values()].some((t) => t === 'Unknown'); i++) await sleep(50);
      return {
        outcome: { ids: docs.map((d) => d._id), count: await coll.countDocuments({}) },
        info: { serverTypes: Object.fromEntries(ev.servers) },
      };
    }),
  });
  // Beyond the comparison: through the seed list the driver must see both gateways as mongos.
  const types = Object.values(res.gateway.info.serverTypes);
  assert.deepEqual(types, ['Mongos', 'Mongos'], `gateway seed list: ${JSON.stringify(res.gateway.info)}`);
});

// --- introspection and administration commands that tools and ODMs send ---------------------------

// Each command's result, ok or error code, compared. The commands that differ by design (see
// known-differences.json, gateway-introspection-commands) are asserted exactly: any other
// difference, or one of these starting to agree, fails.
const ADMIN_COMMANDS = [
  ['admin', { buildInfo: 1 }], ['admin', { connectionStatus: 1 }], ['admin', { listDatabases: 1, nameOnly: true }],
  ['admin', { serverStatus: 1 }], ['admin', { getParameter: 1, featureCompatibilityVersion: 1 }], ['admin', { whatsmyuri: 1 }],
  ['admin', { hostInfo: 1 }], ['admin', { getCmdLineOpts: 1 }], ['admin', { atlasVersion: 1 }],
  ['admin', { getLog: 'startupWarnings' }], ['admin', { listCommands: 1 }], ['admin', { getFreeMonitoringStatus: 1 }],
  ['admin', { endSessions: [] }], ['db', { dbStats: 1 }], ['db', { collStats: 'c' }], ['db', { listCollections: 1 }],
  ['db', { explain: { find: 'c', filter: {} } }], ['db', { validate: 'c' }], ['db', { dataSize: 'DB.c' }],
  ['db', { aggregate: 'c', pipeline: [{ $collStats: { count: {} } }], cursor: {} }], ['db', { collMod: 'c', validator: {} }],
  ['db', { renameCollection: 'DB.c', to: 'DB.e' }], ['admin', { renameCollection: 'DB.e', to: 'DB.c' }],
  ['db', { find: 'c', filter: {}, readConcern: { level: 'majority' } }],
  ['db', { insert: 'c', documents: [{ _id: 2 }], writeConcern: { w: 'majority', wtimeout: 1000 } }],
  ['db', { getLastError: 1 }],
];
const EXPECTED_ADMIN_DIFFERENCES = ['atlasVersion', 'endSessions', 'getCmdLineOpts', 'getFreeMonitoringStatus', 'getLastError', 'getLog'];

test('admin-commands', async () => {
  const res = await differential({
    suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: 'admin-commands',
    run: (target) => withClient(uris(target).plain, {}, async (client) => {
      const db = await freshDb(client, 'admin-commands', target);
      await db.collection('c').insertOne({ _id: 1 });
      const o = {};
      for (const [where, cmd] of ADMIN_COMMANDS) {
        const doc = JSON.parse(JSON.stringify(cmd).replaceAll('DB.', `${db.databaseName}.`));
        const name = Object.keys(doc)[0] + (Object.keys(doc)[0] === 'renameCollection' ? ` ${where}` : '');
        o[name] = await client.db(where === 'admin' ? 'admin' : db.databaseName).command(doc)
          .then(() => 'ok', (e) => `${e.code} ${e.codeName}`);
      }
      return { outcome: o };
    }),
  });
  const d = res.direct.outcome;
  const g = res.gateway.outcome;
  const differing = Object.keys(d).filter((k) => d[k] !== g[k]).sort();
  assert.deepEqual(differing, EXPECTED_ADMIN_DIFFERENCES, JSON.stringify({ direct: d, gateway: g }));
});

// --- IAM ----------------------------------------------------------------------------------------

// MONGODB-AWS the way a function on Lambda logs in: the role's temporary credentials in
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, read through the AWS SDK
// (@aws-sdk/credential-providers, the driver's optional dependency); then a wrong secret.
async function iamLogin(target, secret) {
  const vars = awsEnvironment(secret);
  Object.assign(process.env, vars);
  try {
    return await withClient(uris(target).iam, { serverSelectionTimeoutMS: 5000 }, async (client) => {
      const ping = (await client.db('admin').command({ ping: 1 })).ok;
      const coll = (await freshDb(client, 'iam-mongodb-aws', target)).collection('c');
      await coll.insertOne({ _id: 1, who: 'iam' });
      return { ping, found: await coll.find({}).toArray() };
    });
  } catch (e) {
    return { ping: { refused: errorShape(e) } };
  } finally {
    for (const k of Object.keys(vars)) delete process.env[k];
  }
}

test('iam-mongodb-aws', async () => {
  const res = await differential({
    suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: 'iam-mongodb-aws',
    run: async (target) => {
      const outcome = await iamLogin(target);
      outcome.wrongSecret = (await iamLogin(target, WRONG_AWS_SECRET)).ping;
      return { outcome };
    },
  });
  // The upstream has no MONGODB-AWS: the gateway side is checked on its own.
  const g = res.gateway.outcome;
  assert.deepEqual([g.ping, g.found, g.wrongSecret?.refused?.code], [1, [{ _id: 1, who: 'iam' }], 18], JSON.stringify(g));
});
