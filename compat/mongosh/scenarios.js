// The scenarios as a mongosh user would run them, in one script:
//
//   COMPAT_TARGET=direct|gateway mongosh --quiet --nodb --file scenarios.js
//
// Connection strings come from the COMPAT_* variables (compat/run). Each scenario prints one
// line "COMPAT <relaxed extended JSON>" with {scenario, status, outcome, info}; the Node test
// runner (test/mongosh.test.mjs) runs this once per target and compares the outcomes. The shell
// has no command monitoring, so cursor batches and killCursors are checked with the cursor
// commands themselves (runCommand find / getMore / killCursors), as a shell user would.

const target = process.env.COMPAT_TARGET;
const UP = target === 'direct' ? 'DIRECT' : 'GATEWAY';
const envOf = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run through compat/run`);
  return v;
};
const U = {
  plain: envOf(`COMPAT_${UP}_URI`),
  sha256: envOf(`COMPAT_${UP}_SHA256_URI`),
  sha1: envOf(`COMPAT_${UP}_SHA1_URI`),
  seed: target === 'direct' ? envOf('COMPAT_DIRECT_URI') : envOf('COMPAT_GATEWAY_SEED_URI'),
  txn: envOf(`COMPAT_TXN_${UP}_URI`),
  restartName: envOf(`COMPAT_RESTART_${UP}`),
  iam: envOf(`COMPAT_${UP}_IAM_URI`),
};
const only = process.env.COMPAT_ONLY ? process.env.COMPAT_ONLY.split(',') : null;

const withOptions = (uri, q) => uri + (uri.includes('?') ? '&' : '?') + q;
const dbName = (id) => `compat_mongosh_${id}_${target[0]}`.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 60);
const errorShape = (e) => ({
  name: e?.name ?? 'Error',
  code: e?.code ?? null,
  codeName: e?.codeName ?? null,
  labels: [...(e?.errorLabels ?? [])].sort(),
});
const bulkShape = (e) => {
  const r = e?.result ?? {};
  if (!e?.writeErrors && !e?.result) return { exception: errorShape(e) };
  return {
    name: e.name,
    insertedCount: r.insertedCount ?? null,
    counts: [r.insertedCount, r.matchedCount, r.modifiedCount, r.deletedCount],
    writeErrors: [].concat(e.writeErrors ?? []).map((w) => ({ index: w.index, code: w.code })),
  };
};

function emit(rec) {
  print('COMPAT ' + EJSON.stringify(rec, { relaxed: true }));
}

function scenario(id, fn) {
  if (only && !only.includes(id)) return;
  const t0 = Date.now();
  try {
    const r = fn();
    emit({ scenario: id, status: 'ok', outcome: r.outcome ?? null, info: r.info ?? {}, ms: Date.now() - t0 });
  } catch (e) {
    emit({ scenario: id, status: 'error', outcome: { exception: errorShape(e) }, info: { message: String(e?.message ?? e), stack: String(e?.stack ?? '').split('\n').slice(0, 6).join(' | ') }, ms: Date.now() - t0 });
  }
}

function withMongo(uri, fn) {
  // connect() is the shell's documented way to open a connection from a script (a bare
  // `new Mongo(uri)` is not connected yet).
  const m = connect(uri).getMongo();
  // No `try { return fn(m) } finally { m.close() }`: mongosh's async rewriting runs that
  // `finally` before fn's operations complete (MongoNotConnectedError).
  let result;
  let error;
  try {
    result = fn(m);
  } catch (e) {
    error = e;
  }
  m.close();
  if (error) throw error;
  return result;
}

function fresh(m, id) {
  const db = m.getDB(dbName(id));
  db.dropDatabase();
  return db;
}

const ids = (coll) => coll.find().sort({ _id: 1 }).toArray().map((d) => d._id);

// --- connect --------------------------------------------------------------------------------------

for (const [id, key] of [['connect-scram-sha-256', 'sha256'], ['connect-scram-sha-1', 'sha1']]) {
  scenario(id, () => {
    const o = {};
    withMongo(U[key], (m) => {
      o.ping = m.getDB('admin').runCommand({ ping: 1 }).ok;
      const db = fresh(m, id);
      db.c.insertOne({ _id: 1, who: key });
      o.found = db.c.findOne({ _id: 1 });
    });
    const bad = U[key].replace(/\/\/([^:]+):[^@]*@/, '//$1:not-the-password@');
    try {
      withMongo(bad, (m) => m.getDB('admin').runCommand({ ping: 1 }));
      o.wrongPassword = 'accepted';
    } catch (e) {
      o.wrongPassword = errorShape(e);
    }
    return { outcome: o };
  });
}

// --- CRUD -----------------------------------------------------------------------------------------

scenario('crud', () => withMongo(U.plain, (m) => {
  const c = fresh(m, 'crud').items;
  const o = {};
  o.insertOne = c.insertOne({ _id: 1, n: 1, tag: 'a' }).insertedId;
  o.insertMany = Object.keys(c.insertMany([
    { _id: 2, n: 2, tag: 'b' }, { _id: 3, n: 3, tag: 'a' }, { _id: 4, n: 4, tag: 'b' }, { _id: 5, n: 5, tag: 'a' },
  ]).insertedIds).length;
  o.findOne = c.findOne({ _id: 3 });
  o.findMissing = c.findOne({ _id: 99 });
  const u1 = c.updateOne({ _id: 2 }, { $set: { tag: 'c' } });
  o.updateOne = [u1.matchedCount, u1.modifiedCount];
  const u2 = c.updateMany({ n: { $gte: 3 } }, { $inc: { n: 10 } });
  o.updateMany = [u2.matchedCount, u2.modifiedCount];
  const u3 = c.updateOne({ _id: 6 }, { $set: { n: 6, tag: 'u' } }, { upsert: true });
  o.upsert = [u3.matchedCount, u3.modifiedCount, u3.upsertedCount ?? null, u3.upsertedId ?? null];
  const r = c.replaceOne({ _id: 4 }, { n: 40, tag: 'r' });
  o.replaceOne = [r.matchedCount, r.modifiedCount];
  o.findOneAndUpdate = c.findOneAndUpdate({ _id: 1 }, { $set: { tag: 'z' } }, { returnDocument: 'after' });
  o.findOneAndDelete = c.findOneAndDelete({ _id: 6 });
  o.deleteOne = c.deleteOne({ _id: 5 }).deletedCount;
  o.deleteMany = c.deleteMany({ tag: 'a' }).deletedCount;
  o.countDocuments = c.countDocuments({});
  o.estimatedDocumentCount = c.estimatedDocumentCount();
  o.distinct = c.distinct('tag').sort();
  o.projection = c.find({}, { _id: 0, tag: 1 }).sort({ tag: 1 }).toArray();
  o.skipLimit = c.find().sort({ _id: -1 }).skip(1).limit(1).toArray();
  o.all = c.find().sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

// --- bulk writes with a duplicate key mid-batch ---------------------------------------------------------

for (const ordered of [true, false]) {
  const id = ordered ? 'bulk-ordered-error' : 'bulk-unordered-error';
  scenario(id, () => withMongo(U.plain, (m) => {
    const db = fresh(m, id);
    const o = {};
    try {
      o.insertMany = { accepted: Object.keys(db.im.insertMany([{ _id: 1 }, { _id: 2 }, { _id: 2 }, { _id: 3 }], { ordered }).insertedIds).length };
    } catch (e) {
      o.insertMany = bulkShape(e);
    }
    o.insertManyAfter = ids(db.im);
    try {
      const r = db.bw.bulkWrite([
        { insertOne: { document: { _id: 10 } } },
        { updateOne: { filter: { _id: 10 }, update: { $set: { x: 1 } } } },
        { insertOne: { document: { _id: 10 } } },
        { deleteOne: { filter: { _id: 10 } } },
        { insertOne: { document: { _id: 11 } } },
      ], { ordered });
      o.bulkWrite = { accepted: [r.insertedCount, r.matchedCount, r.modifiedCount, r.deletedCount] };
    } catch (e) {
      o.bulkWrite = bulkShape(e);
    }
    o.bulkWriteAfter = db.bw.find().sort({ _id: 1 }).toArray();
    return { outcome: o };
  }));
}

// --- cursors ------------------------------------------------------------------------------------------

function seed25(db) {
  db.c.insertMany(Array.from({ length: 25 }, (_, i) => ({ _id: i, g: i % 3, v: i })));
  return db.c;
}

scenario('cursor-batches', () => withMongo(U.plain, (m) => {
  const db = fresh(m, 'cursor-batches');
  const c = seed25(db);
  // The shell's cursor, then the protocol by hand: find + getMore, batch size 2.
  const shellIds = c.find().sort({ _id: 1 }).batchSize(2).toArray().map((d) => d._id);
  const first = db.runCommand({ find: 'c', sort: { _id: 1 }, batchSize: 2 });
  const got = first.cursor.firstBatch.map((d) => d._id);
  const next = [];
  let id = first.cursor.id;
  while (String(id) !== '0') {
    const r = db.runCommand({ getMore: id, collection: 'c', batchSize: 2 });
    next.push(r.cursor.nextBatch.length);
    got.push(...r.cursor.nextBatch.map((d) => d._id));
    id = r.cursor.id;
  }
  return { outcome: { shellIds, ids: got, firstBatch: first.cursor.firstBatch.length, getMores: next.length, nextBatches: next, exhausted: true } };
}));

scenario('cursor-early-close', () => withMongo(U.plain, (m) => {
  const db = fresh(m, 'cursor-early-close');
  const c = seed25(db);
  const cur = c.find().sort({ _id: 1 }).batchSize(2);
  const read = [];
  for (let i = 0; i < 5; i++) read.push(cur.next()._id);
  cur.close();
  // By hand: open a cursor, read one getMore, kill it, and try to continue it.
  const first = db.runCommand({ find: 'c', sort: { _id: 1 }, batchSize: 2 });
  db.runCommand({ getMore: first.cursor.id, collection: 'c', batchSize: 2 });
  const k = db.runCommand({ killCursors: 'c', cursors: [first.cursor.id] });
  const count = (a) => (a ? a.length : null);
  let after;
  try {
    after = db.runCommand({ getMore: first.cursor.id, collection: 'c', batchSize: 2 });
    after = { ok: after.ok, code: after.code ?? null };
  } catch (e) {
    after = errorShape(e);
  }
  return {
    outcome: {
      read,
      killCursors: { killed: count(k.cursorsKilled), notFound: count(k.cursorsNotFound), alive: count(k.cursorsAlive), unknown: count(k.cursorsUnknown) },
      getMoreAfterKill: after,
      countAfter: c.countDocuments({}),
    },
  };
}));

// --- aggregate ----------------------------------------------------------------------------------------

scenario('aggregate', () => withMongo(U.plain, (m) => {
  const c = seed25(fresh(m, 'aggregate'));
  // One accumulator per $group: FerretDB 1.24 computes only the first.
  const grouped = c.aggregate([
    { $match: { v: { $gte: 5 } } },
    { $group: { _id: '$g', total: { $sum: '$v' } } },
    { $sort: { _id: 1 } },
  ], { batchSize: 1 }).toArray();
  const counted = c.aggregate([{ $match: { g: 1 } }, { $count: 'n' }]).toArray();
  return { outcome: { grouped, counted } };
}));

// --- indexes and a duplicate key ----------------------------------------------------------------------

scenario('index-duplicate-key', () => withMongo(U.plain, (m) => {
  const c = fresh(m, 'index-duplicate-key').users;
  const o = {};
  o.createIndex = c.createIndex({ email: 1 }, { unique: true });
  const listed = () => c.getIndexes().map((i) => ({ name: i.name, key: i.key, unique: !!i.unique }))
    .sort((a, b) => a.name.localeCompare(b.name));
  o.indexes = listed();
  c.insertOne({ _id: 1, email: 'a@example.com' });
  const insert = (d) => {
    try {
      c.insertOne(d);
      return 'accepted';
    } catch (e) {
      return errorShape(e);
    }
  };
  o.duplicate = insert({ _id: 2, email: 'a@example.com' });
  o.duplicateId = insert({ _id: 1, email: 'b@example.com' });
  o.dropIndex = c.dropIndex('email_1').ok;
  o.indexesAfter = listed();
  o.afterDrop = insert({ _id: 3, email: 'a@example.com' });
  return { outcome: o };
}));

// --- retryable writes and reads across a connection drop ---------------------------------------------

// Freeze the server, start `ctl restart NAME 700` in the background, send the operation (in flight
// on the pooled connection when the server is killed), then wait for the restart to finish.
const childProcess = require('child_process');
for (const kind of ['write', 'read']) {
  const id = `retryable-${kind}-drop`;
  scenario(id, () => withMongo(withOptions(U.plain, 'retryWrites=true&retryReads=true&maxPoolSize=1'), (m) => {
    const c = fresh(m, id).r;
    c.insertOne({ _id: 1 });
    childProcess.execFileSync(process.env.COMPAT_CTL, ['freeze', U.restartName]);
    const child = childProcess.spawn(process.env.COMPAT_CTL, ['restart', U.restartName, '700'], { stdio: 'ignore' });
    let result;
    let message = null;
    try {
      if (kind === 'write') {
        c.insertOne({ _id: 2 });
        result = 'ok';
      } else {
        result = c.find().sort({ _id: 1 }).toArray().map((d) => d._id);
      }
    } catch (e) {
      result = errorShape(e);
      message = String(e?.message ?? e);
    }
    for (let i = 0; i < 300 && child.exitCode === null; i++) sleep(100);
    if (child.exitCode !== 0) throw new Error(`ctl restart exited with ${child.exitCode}`);
    return { outcome: { result, after: ids(c) }, info: { message } };
  }));
}

// --- sessions and transactions (nx-27017) --------------------------------------------------------------

scenario('txn-commit', () => withMongo(U.txn, (m) => {
  const db = fresh(m, 'txn-commit');
  db.a.insertOne({ _id: 0 });
  db.b.insertOne({ _id: 0 });
  const o = {};
  const s = m.startSession();
  s.withTransaction(() => {
    const sdb = s.getDatabase(db.getName());
    sdb.a.insertOne({ _id: 1 });
    sdb.b.updateOne({ _id: 0 }, { $set: { moved: 1 } });
    o.insideCount = sdb.a.countDocuments({});
  });
  s.endSession();
  o.a = db.a.find().sort({ _id: 1 }).toArray();
  o.b = db.b.find().sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

scenario('txn-abort', () => withMongo(U.txn, (m) => {
  const db = fresh(m, 'txn-abort');
  db.a.insertOne({ _id: 0, n: 0 });
  const o = {};
  const s = m.startSession();
  s.startTransaction();
  const sdb = s.getDatabase(db.getName());
  sdb.a.insertOne({ _id: 1 });
  sdb.a.updateOne({ _id: 0 }, { $set: { n: 1 } });
  o.inside = sdb.a.find().sort({ _id: 1 }).toArray();
  s.abortTransaction();
  s.endSession();
  o.after = db.a.find().sort({ _id: 1 }).toArray();
  return { outcome: o };
}));

// --- compression, Lambda, directConnection, seed list ------------------------------------------------------

function writeRead(uri, id) {
  return withMongo(uri, (m) => {
    const c = fresh(m, id).z;
    c.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: i, pad: 'x'.repeat(1000) })));
    const got = c.find().sort({ _id: 1 }).batchSize(10).toArray();
    return { count: got.length, padOk: got.every((d) => d.pad.length === 1000) };
  });
}

// mongosh ships the zlib, snappy and zstd support of its driver.
scenario('compression', () => ({ outcome: writeRead(withOptions(U.plain, 'compressors=snappy,zlib,zstd'), 'compression'), info: { requested: 'snappy,zlib,zstd' } }));

// The shell has no heartbeat events: this checks that a client made with AWS_LAMBDA_RUNTIME_API
// set (polling monitoring, FaaS client metadata) works, not which monitoring mode it chose.
scenario('lambda-polling', () => {
  process.env.AWS_LAMBDA_RUNTIME_API = '127.0.0.1:9001';
  let outcome;
  try {
    outcome = writeRead(withOptions(U.plain, 'heartbeatFrequencyMS=500'), 'lambda-polling');
  } catch (e) {
    delete process.env.AWS_LAMBDA_RUNTIME_API;
    throw e;
  }
  delete process.env.AWS_LAMBDA_RUNTIME_API;
  return { outcome };
});

scenario('direct-connection', () => ({ outcome: writeRead(withOptions(U.plain, 'directConnection=true'), 'direct-connection') }));

scenario('seed-list-two-gateways', () => withMongo(U.seed, (m) => {
  const c = fresh(m, 'seed-list-two-gateways').s;
  c.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: i })));
  const got = c.find().sort({ _id: 1 }).batchSize(3).toArray().map((d) => d._id);
  return { outcome: { ids: got, count: c.countDocuments({}) }, info: { isdbgrid: m.getDB('admin').runCommand({ hello: 1 }).msg === 'isdbgrid' } };
}));

// --- IAM ------------------------------------------------------------------------------------------

// MONGODB-AWS as on Lambda: the test runner starts the shell with the role's temporary
// credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN (mongosh reads them
// through the AWS SDK it ships); then the same with a wrong secret in the environment.
function iamLogin() {
  // No `return` inside the `try`: mongosh's async rewriting would leave the block before the
  // login fails, and the error would escape the `catch`.
  let result;
  try {
    result = withMongo(U.iam, (m) => {
      const ping = m.getDB('admin').runCommand({ ping: 1 }).ok;
      const db = fresh(m, 'iam-mongodb-aws');
      db.c.insertOne({ _id: 1, who: 'iam' });
      return { ping, found: db.c.find().toArray() };
    });
  } catch (e) {
    result = { ping: { refused: errorShape(e) } };
  }
  return result;
}

scenario('iam-mongodb-aws', () => {
  const secret = process.env.AWS_SECRET_ACCESS_KEY;
  const o = iamLogin();
  process.env.AWS_SECRET_ACCESS_KEY = envOf('COMPAT_WRONG_AWS_SECRET');
  try {
    o.wrongSecret = iamLogin().ping;
  } finally {
    process.env.AWS_SECRET_ACCESS_KEY = secret;
  }
  return { outcome: o };
});
