// mongoose on top of the official Node.js driver, unchanged, straight against the upstream and
// through mongomux: the scenarios where an ODM adds behaviour of its own (connection set-up,
// models, index builds, cursors, insertMany/bulkWrite errors, transactions). The rest is the
// driver underneath, covered by mongodb.test.mjs.

import { test } from 'node:test';
import { createRequire } from 'node:module';
import mongoose from 'mongoose';
import { differential, uris, withPassword, dbName, errorShape } from '../../lib/harness.mjs';

const require = createRequire(import.meta.url);
const DRIVER = 'node-mongoose';
const VERSION = `${require('mongoose/package.json').version} (driver ${require('mongodb/package.json').version})`;
const SUITE = 'node';

const itemSchema = () => new mongoose.Schema({ _id: Number, n: Number, tag: String, x: Number }, { versionKey: false });

/** A connection to the scenario's own (dropped) database, with command events; closed after `fn`. */
async function withConn(uri, scenario, target, fn) {
  const conn = mongoose.createConnection(uri, {
    dbName: dbName('mongoose', scenario, target), serverSelectionTimeoutMS: 10_000, monitorCommands: true, autoIndex: false,
  });
  await conn.asPromise();
  const events = { succeeded: [] };
  conn.getClient().on('commandSucceeded', (e) => events.succeeded.push(e));
  try {
    await conn.dropDatabase();
    return await fn(conn, events);
  } finally {
    await conn.close();
  }
}

function bulkErrorShape(e) {
  if (!e?.writeErrors && !e?.result) return { exception: errorShape(e) };
  const r = e.result ?? {};
  return {
    name: e.name,
    insertedCount: r.insertedCount ?? e.insertedDocs?.length ?? null,
    counts: [r.insertedCount, r.matchedCount, r.modifiedCount, r.deletedCount],
    writeErrors: [].concat(e.writeErrors ?? []).map((w) => ({ index: w.index ?? w.err?.index, code: w.code ?? w.err?.code })),
  };
}

function scenario(id, run) {
  test(id, async () => {
    await differential({ suite: SUITE, driver: DRIVER, driverVersion: VERSION, scenario: id, run });
  });
}

for (const [id, key] of [['connect-scram-sha-256', 'sha256'], ['connect-scram-sha-1', 'sha1']]) {
  scenario(id, async (target) => {
    const uri = uris(target)[key];
    const o = await withConn(uri, id, target, async (conn) => {
      const Item = conn.model('Item', itemSchema(), 'c');
      await Item.create({ _id: 1, tag: key });
      return { ping: (await conn.db.admin().command({ ping: 1 })).ok, found: await Item.findById(1).lean() };
    });
    o.wrongPassword = await mongoose.createConnection(withPassword(uri, 'not-the-password'), { serverSelectionTimeoutMS: 5000 })
      .asPromise().then(async (c) => { await c.close(); return 'accepted'; }, (e) => errorShape(e));
    return { outcome: o };
  });
}

scenario('crud', (target) => withConn(uris(target).plain, 'crud', target, async (conn) => {
  const Item = conn.model('Item', itemSchema(), 'items');
  const o = {};
  o.create = (await Item.create({ _id: 1, n: 1, tag: 'a' })).toObject();
  o.insertMany = (await Item.insertMany([{ _id: 2, n: 2, tag: 'b' }, { _id: 3, n: 3, tag: 'a' }, { _id: 4, n: 4, tag: 'b' }])).length;
  o.findById = await Item.findById(3).lean();
  const u1 = await Item.updateOne({ _id: 2 }, { $set: { tag: 'c' } });
  o.updateOne = [u1.matchedCount, u1.modifiedCount];
  const u2 = await Item.updateMany({ n: { $gte: 3 } }, { $inc: { n: 10 } });
  o.updateMany = [u2.matchedCount, u2.modifiedCount];
  const doc = await Item.findById(4);
  doc.tag = 'saved';
  await doc.save();
  o.findOneAndUpdate = await Item.findOneAndUpdate({ _id: 1 }, { tag: 'z' }, { new: true }).lean();
  o.deleteOne = (await Item.deleteOne({ _id: 2 })).deletedCount;
  o.countDocuments = await Item.countDocuments({});
  o.all = await Item.find().sort({ _id: 1 }).lean();
  return { outcome: o };
}));

for (const ordered of [true, false]) {
  const id = ordered ? 'bulk-ordered-error' : 'bulk-unordered-error';
  scenario(id, (target) => withConn(uris(target).plain, id, target, async (conn) => {
    const Im = conn.model('Im', itemSchema(), 'im');
    const Bw = conn.model('Bw', itemSchema(), 'bw');
    const o = {};
    o.insertMany = await Im.insertMany([{ _id: 1 }, { _id: 2 }, { _id: 2 }, { _id: 3 }], { ordered })
      .then((r) => ({ accepted: r.length }), bulkErrorShape);
    o.insertManyAfter = (await Im.find().sort({ _id: 1 }).lean()).map((d) => d._id);
    o.bulkWrite = await Bw.bulkWrite([
      { insertOne: { document: { _id: 10 } } },
      { updateOne: { filter: { _id: 10 }, update: { $set: { x: 1 } } } },
      { insertOne: { document: { _id: 10 } } },
      { deleteOne: { filter: { _id: 10 } } },
      { insertOne: { document: { _id: 11 } } },
    ], { ordered }).then((r) => ({ accepted: [r.insertedCount, r.matchedCount, r.modifiedCount, r.deletedCount] }), bulkErrorShape);
    o.bulkWriteAfter = await Bw.find().sort({ _id: 1 }).lean();
    return { outcome: o };
  }));
}

scenario('cursor-batches', (target) => withConn(uris(target).plain, 'cursor-batches', target, async (conn, ev) => {
  const Item = conn.model('Item', new mongoose.Schema({ _id: Number, g: Number, v: Number }, { versionKey: false }), 'c');
  await Item.insertMany(Array.from({ length: 25 }, (_, i) => ({ _id: i, g: i % 3, v: i })));
  const from = ev.succeeded.length;
  const got = [];
  for await (const d of Item.find().sort({ _id: 1 }).batchSize(2).lean().cursor()) got.push(d._id);
  const replies = ev.succeeded.slice(from);
  return {
    outcome: {
      ids: got,
      getMores: replies.filter((e) => e.commandName === 'getMore').map((e) => e.reply.cursor.nextBatch.length),
    },
  };
}));

scenario('aggregate', (target) => withConn(uris(target).plain, 'aggregate', target, async (conn) => {
  const Item = conn.model('Item', new mongoose.Schema({ _id: Number, g: Number, v: Number }, { versionKey: false }), 'c');
  await Item.insertMany(Array.from({ length: 25 }, (_, i) => ({ _id: i, g: i % 3, v: i })));
  // One accumulator per $group: FerretDB 1.24 computes only the first.
  const grouped = await Item.aggregate([
    { $match: { v: { $gte: 5 } } }, { $group: { _id: '$g', total: { $sum: '$v' } } }, { $sort: { _id: 1 } },
  ]);
  return { outcome: { grouped } };
}));

scenario('index-duplicate-key', (target) => withConn(uris(target).plain, 'index-duplicate-key', target, async (conn) => {
  const User = conn.model('User', new mongoose.Schema({ _id: Number, email: { type: String, unique: true } }, { versionKey: false }), 'users');
  await User.init();
  await User.syncIndexes();
  const o = {};
  o.indexes = (await User.listIndexes()).map((i) => ({ name: i.name, unique: !!i.unique })).sort((a, b) => a.name.localeCompare(b.name));
  await User.create({ _id: 1, email: 'a@example.com' });
  o.duplicate = await User.create({ _id: 2, email: 'a@example.com' }).then(() => 'accepted', (e) => errorShape(e));
  o.duplicateId = await User.create({ _id: 1, email: 'b@example.com' }).then(() => 'accepted', (e) => errorShape(e));
  return { outcome: o };
}));

scenario('txn-commit', (target) => withConn(uris(target).txn, 'txn-commit', target, async (conn) => {
  const A = conn.model('A', itemSchema(), 'a');
  await A.create({ _id: 0 });
  const o = {};
  await conn.transaction(async (session) => {
    await A.create([{ _id: 1 }], { session });
    await A.updateOne({ _id: 0 }, { $set: { n: 1 } }, { session });
    o.insideCount = await A.countDocuments({}).session(session);
  });
  o.after = await A.find().sort({ _id: 1 }).lean();
  return { outcome: o };
}));

scenario('txn-abort', (target) => withConn(uris(target).txn, 'txn-abort', target, async (conn) => {
  const A = conn.model('A', itemSchema(), 'a');
  await A.create({ _id: 0, n: 0 });
  const o = {};
  const session = await conn.startSession();
  try {
    session.startTransaction();
    await A.create([{ _id: 1 }], { session });
    await A.updateOne({ _id: 0 }, { $set: { n: 1 } }, { session });
    o.inside = await A.find().sort({ _id: 1 }).session(session).lean();
    await session.abortTransaction();
  } finally {
    await session.endSession();
  }
  o.after = await A.find().sort({ _id: 1 }).lean();
  return { outcome: o };
}));
