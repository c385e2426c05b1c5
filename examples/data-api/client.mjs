// The Data API from Node.js (18+) with the built-in fetch: one POST per action.
// MONGOMUX_DATA_API_URL is the gateway's Data API, MONGOMUX_DATA_API_KEY a key from
// `mongomux api-key add`. Accept: application/ejson keeps every BSON type in answers.
const base = process.env.MONGOMUX_DATA_API_URL;
const key = process.env.MONGOMUX_DATA_API_KEY;
const source = { dataSource: "mongodb-atlas", database: "shop", collection: "visits" };

async function action(name, fields, accept = "application/json") {
  const res = await fetch(`${base}/action/${name}`, {
    method: "POST",
    headers: { apiKey: key, "Content-Type": "application/json", Accept: accept },
    body: JSON.stringify({ ...source, ...fields }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`${name}: HTTP ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

console.log(await action("insertMany", { documents: [{ page: "/", n: 1 }, { page: "/cart", n: 2 }] }));
console.log(JSON.stringify(await action("find", { sort: { n: 1 }, projection: { _id: 0 } }, "application/ejson")));
console.log(await action("deleteMany", { filter: {} }));
try {
  await action("find", { limit: 100000 });
} catch (e) {
  console.log(e.message);
}
