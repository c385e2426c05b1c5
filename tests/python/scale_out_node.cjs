// The Node.js driver's side of tests/python/test_scale_out.py: CURSORS concurrent cursors of
// batchSize 10 over a collection through one MongoClient, or sequential transactions (even
// ones commit, odd ones abort); prints one JSON line with what happened. Uses the driver the
// Node example function installs (examples/lambda-node/node_modules).
//
//   node scale_out_node.cjs cursors URI DB COLL CURSORS EXPECTED
//   node scale_out_node.cjs transactions URI DB COLL COUNT
const path = require("path");
const { MongoClient } = require(path.join(__dirname, "../../examples/lambda-node/node_modules/mongodb"));

async function cursors(client, db, coll, n, expected) {
  const c = client.db(db).collection(coll);
  const errors = [];
  let complete = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      try {
        let count = 0;
        for await (const _ of c.find({}, { batchSize: 10 })) count += 1;
        if (count === expected) complete += 1;
      } catch (e) {
        errors.push(`${e.name}: ${e.message}`);
      }
    }),
  );
  return { complete, errors };
}

async function transactions(client, db, coll, n) {
  const c = client.db(db).collection(coll);
  const errors = [];
  let done = 0;
  for (let k = 0; k < n; k += 1) {
    const session = client.startSession();
    try {
      session.startTransaction();
      await c.insertOne({ _id: `${k}-a` }, { session });
      await c.insertOne({ _id: `${k}-b` }, { session });
      if (k % 2 === 0) await session.commitTransaction();
      else await session.abortTransaction();
      done += 1;
    } catch (e) {
      errors.push(`${k}: ${e.name}: ${e.message}`);
    } finally {
      await session.endSession();
    }
  }
  return { done, errors };
}

async function main() {
  const [mode, uri, db, coll, n, expected] = process.argv.slice(2);
  const client = new MongoClient(uri, { maxPoolSize: 50, serverSelectionTimeoutMS: 10000 });
  try {
    await client.connect();
    // Warm the pool with several connections, so requests go out through several gateways.
    await Promise.all(Array.from({ length: 6 }, () => client.db("admin").command({ ping: 1 })));
    const result =
      mode === "cursors"
        ? await cursors(client, db, coll, Number(n), Number(expected))
        : await transactions(client, db, coll, Number(n));
    console.log(JSON.stringify(result));
  } finally {
    await client.close();
  }
}

main().catch((e) => {
  console.log(JSON.stringify({ fatal: `${e.name}: ${e.message}` }));
  process.exitCode = 1;
});
