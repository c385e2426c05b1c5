// A Lambda function (Node.js) that reaches MongoDB through the mongomux gateway with IAM
// authentication (MONGODB-AWS): no password anywhere, not even in Secrets Manager.
//
// The function's execution role is its identity. Lambda hands the role's temporary credentials
// to the function in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; the driver
// reads them through @aws-sdk/credential-providers (its default chain starts with those
// variables), signs an STS GetCallerIdentity request with them, and the gateway has STS check it
// and admits the role if one of its users names the role's ARN.
//
// Environment:
//
//   MONGODB_URI     the gateway's load balancer, no credentials, the database in the path:
//                   mongodb://NLB:27018/app?loadBalanced=true&authMechanism=MONGODB-AWS&authSource=$external
//                   loadBalanced=true because several gateways stand behind the NLB: the driver
//                   then pins each cursor and transaction to the one connection (so the one
//                   gateway) that opened it, and opens no monitoring connections of its own.
//   APP_COLLECTION  optional, the collection (default "events").
//
// Events (JSON), as the Rust examples take them: {"op":"insert","doc":{...}} inserts one document
// and answers its id; {"op":"count"} (optionally with "filter":{...}) answers the number of
// documents; {"op":"ping"} checks the connection. Every answer carries what this execution
// environment has done so far: clients_created (stays 1), connections_created (connections
// the driver opened: 1 for a healthy environment, whatever the number of invocations) and
// invocations. Every invocation also prints one CloudWatch Embedded Metric Format line
// (ColdStart, ClientReused, ConnectionsOpened, ConnectTime, IamAuthentications; namespace
// mongomux/lambda), as the Rust kit does.
//
// Deploy: `npm ci --omit=dev`, zip this folder, Runtime nodejs22.x (or nodejs20.x), Handler
// index.handler; deploy/template.yaml and docs/deploy.md do it. aws-lambda-ric (the Runtime
// Interface Client) is a devDependency: Lambda's managed Node.js runtimes have it built in;
// tests/python/test_lambda_functions.py runs this function with it under the Runtime Interface
// Emulator.

import { BSON, MongoClient } from "mongodb";

const { EJSON } = BSON;

// One client per execution environment, created when Lambda loads this module (before the
// first invocation) and reused by every invocation after it. A client per invocation would pay
// a TCP connection, a handshake and an IAM login (an STS call at the gateway) every time, and
// leave connections behind in the gateway. Creating the client does no I/O: the driver
// connects on the first operation, so an unreachable gateway is that invocation's error rather
// than a failed init that Lambda retries.
const uri = process.env.MONGODB_URI ?? process.env.MONGOMUX_URI;
if (!uri) {
  throw new Error("MONGODB_URI is not set (the gateway's connection string)");
}
const collectionName = process.env.APP_COLLECTION || "events";

// Settings tuned for functions, as the Rust kit (crates/lambda) picks them; the connection
// string can override each (a URI option wins over these only where the driver lets it).
const client = new MongoClient(uri, {
  // One invocation at a time needs one connection; every connection is a gateway client and an
  // STS call.
  maxPoolSize: 2,
  minPoolSize: 0,
  // Fail with a real error well inside the function's timeout instead of being killed by it.
  serverSelectionTimeoutMS: 5000,
  connectTimeoutMS: 3000,
  // Below the 350 s after which an NLB forgets an idle flow: a thawed environment never reuses
  // a socket the balancer silently dropped.
  maxIdleTimeMS: 240_000,
  // The first operation after a thaw may meet a dropped connection; one retry hides it.
  retryWrites: true,
  retryReads: true,
  // The gateway's logs show which function a connection belongs to.
  appName: process.env.AWS_LAMBDA_FUNCTION_NAME,
});

// What this environment has done, in every answer (the tests read it): driver events, no
// private state. topology is "LoadBalanced" when the driver honours loadBalanced=true.
const stats = { clients_created: 1, connections_created: 0, invocations: 0, topology: "Unknown" };
client.on("connectionCreated", () => {
  stats.connections_created += 1;
});
// Milliseconds the driver's connections took to become ready (connect, handshake, login).
let connectMs = 0;
client.on("connectionReady", (event) => {
  connectMs += event.durationMS ?? 0;
});
const iam = new URL(uri).searchParams.get("authMechanism") === "MONGODB-AWS";

// One CloudWatch Embedded Metric Format line per invocation, as the Rust kit prints it
// (docs/lambda.md): CloudWatch Logs turns it into metrics of namespace mongomux/lambda, so a user
// sees that the client is reused (ClientReused near 1, ConnectionsOpened near 0). Written to
// stdout directly: console.log would prefix it, and CloudWatch reads EMF from whole lines.
function emitMetrics(cold, opened, ms) {
  const names = ["ColdStart", "ClientReused", "ConnectionsOpened", "ConnectTime", "IamAuthentications"];
  const doc = {
    _aws: {
      Timestamp: Date.now(),
      CloudWatchMetrics: [{
        Namespace: "mongomux/lambda",
        Dimensions: [["FunctionName"]],
        Metrics: names.map((n) => ({ Name: n, Unit: n === "ConnectTime" ? "Milliseconds" : "Count" })),
      }],
    },
    FunctionName: process.env.AWS_LAMBDA_FUNCTION_NAME ?? "unknown",
    ColdStart: cold ? 1 : 0,
    ClientReused: cold ? 0 : 1,
    ConnectionsOpened: opened,
    ConnectTime: ms,
    IamAuthentications: iam ? opened : 0,
  };
  process.stdout.write(`${JSON.stringify(doc)}\n`);
}
client.on("topologyDescriptionChanged", (event) => {
  stats.topology = event.newDescription.type;
});
const parsed = new URL(uri);
console.log(
  `mongomux-lambda-node: created client (host=${parsed.host} ` +
    `load_balanced=${parsed.searchParams.get("loadBalanced") === "true"} ` +
    `auth=${parsed.searchParams.get("authMechanism") ?? "none"} ` +
    `app_name=${process.env.AWS_LAMBDA_FUNCTION_NAME} max_pool_size=2)`,
);

export const handler = async (event) => {
  stats.invocations += 1;
  const cold = stats.invocations === 1;
  const before = [stats.connections_created, connectMs];
  try {
    return await serve(event);
  } finally {
    emitMetrics(cold, stats.connections_created - before[0], connectMs - before[1]);
  }
};

async function serve(event) {
  const events = client.db().collection(collectionName);
  let answer;
  switch (event?.op) {
    case "insert": {
      const doc = EJSON.deserialize(event.doc ?? {}, { relaxed: true });
      const { insertedId } = await events.insertOne(doc);
      answer = { op: "insert", inserted_id: EJSON.serialize(insertedId, { relaxed: true }) };
      break;
    }
    case "count": {
      const filter = EJSON.deserialize(event.filter ?? {}, { relaxed: true });
      answer = { op: "count", count: await events.countDocuments(filter) };
      break;
    }
    case "ping":
      await client.db("admin").command({ ping: 1 });
      answer = { op: "ping" };
      break;
    default:
      // Thrown: the invocation's error (errorType "Error"); the environment and client live on.
      throw new Error(`unknown op ${JSON.stringify(event?.op)} (insert, count or ping)`);
  }
  return { ok: true, ...answer, ...stats };
}
