package compat;

import static compat.Harness.all;
import static compat.Harness.differential;
import static compat.Harness.errorShape;
import static compat.Harness.ids;
import static compat.Harness.withOptions;
import static compat.Harness.withPassword;
import static org.junit.jupiter.api.Assertions.assertEquals;

import com.mongodb.MongoBulkWriteException;
import com.mongodb.MongoException;
import com.mongodb.bulk.BulkWriteResult;
import com.mongodb.client.ClientSession;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.MongoCursor;
import com.mongodb.client.MongoDatabase;
import com.mongodb.client.model.DeleteOneModel;
import com.mongodb.client.model.FindOneAndUpdateOptions;
import com.mongodb.client.model.IndexOptions;
import com.mongodb.client.model.InsertManyOptions;
import com.mongodb.client.model.InsertOneModel;
import com.mongodb.client.model.ReturnDocument;
import com.mongodb.client.model.BulkWriteOptions;
import com.mongodb.client.model.UpdateOneModel;
import com.mongodb.client.model.UpdateOptions;
import com.mongodb.client.model.WriteModel;
import com.mongodb.client.result.UpdateResult;
import com.mongodb.event.CommandSucceededEvent;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.bson.BsonDocument;
import org.bson.Document;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;

/**
 * The official Java driver (mongodb-driver-sync), unchanged, straight against the upstream and
 * through mongomux: every scenario of compat/scenarios.json except the Lambda one (LambdaTest,
 * which needs its own JVM), compared.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class CompatTest {

  // --- connect -----------------------------------------------------------------------------

  private static Harness.Result connect(String scenario, String uri, String target) {
    Document o = new Document();
    Document info = new Document();
    try (Harness.Client c = new Harness.Client(uri)) {
      o.append("ping", c.client.getDatabase("admin").runCommand(new Document("ping", 1)).get("ok"));
      MongoCollection<Document> coll = c.freshDb(scenario, target).getCollection("c");
      coll.insertOne(new Document("_id", 1).append("who", scenario));
      o.append("found", all(coll));
      info.append("serverTypes", new Document(Map.copyOf(c.events.servers)))
          .append("awaitedHeartbeats", c.events.heartbeats.stream().filter(a -> a).count());
    }
    try (Harness.Client bad = new Harness.Client(withPassword(uri, "not-the-password"),
        b -> b.applyToClusterSettings(s -> s.serverSelectionTimeout(5, java.util.concurrent.TimeUnit.SECONDS)))) {
      bad.client.getDatabase("admin").runCommand(new Document("ping", 1));
      o.append("wrongPassword", "accepted");
    } catch (MongoException e) {
      o.append("wrongPassword", errorShape(e));
    }
    return new Harness.Result(o, info);
  }

  @Test
  @org.junit.jupiter.api.Order(1)
  void connectScramSha256() throws Exception {
    differential("connect-scram-sha-256", t -> connect("connect-scram-sha-256", Harness.Uris.of(t).sha256(), t));
  }

  @Test
  @org.junit.jupiter.api.Order(2)
  void connectScramSha1() throws Exception {
    differential("connect-scram-sha-1", t -> connect("connect-scram-sha-1", Harness.Uris.of(t).sha1(), t));
  }

  // --- CRUD ----------------------------------------------------------------------------------

  private static Document doc(int id, int n, String tag) {
    return new Document("_id", id).append("n", n).append("tag", tag);
  }

  private static List<Long> counts(UpdateResult r) {
    return List.of(r.getMatchedCount(), r.getModifiedCount());
  }

  @Test
  @org.junit.jupiter.api.Order(3)
  void crud() throws Exception {
    differential("crud", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
        MongoCollection<Document> coll = c.freshDb("crud", target).getCollection("items");
        Document o = new Document();
        o.append("insertOne", coll.insertOne(doc(1, 1, "a")).getInsertedId().asInt32().getValue());
        o.append("insertMany", coll.insertMany(List.of(doc(2, 2, "b"), doc(3, 3, "a"), doc(4, 4, "b"), doc(5, 5, "a")))
            .getInsertedIds().size());
        o.append("findOne", coll.find(new Document("_id", 3)).first());
        o.append("findMissing", coll.find(new Document("_id", 99)).first());
        o.append("updateOne", counts(coll.updateOne(new Document("_id", 2), new Document("$set", new Document("tag", "c")))));
        o.append("updateMany", counts(coll.updateMany(new Document("n", new Document("$gte", 3)),
            new Document("$inc", new Document("n", 10)))));
        UpdateResult u3 = coll.updateOne(new Document("_id", 6), new Document("$set", new Document("n", 6).append("tag", "u")),
            new UpdateOptions().upsert(true));
        o.append("upsert", List.of(u3.getMatchedCount(), u3.getModifiedCount(),
            u3.getUpsertedId() == null ? "none" : u3.getUpsertedId().asInt32().getValue()));
        o.append("replaceOne", counts(coll.replaceOne(new Document("_id", 4), new Document("n", 40).append("tag", "r"))));
        o.append("findOneAndUpdate", coll.findOneAndUpdate(new Document("_id", 1), new Document("$set", new Document("tag", "z")),
            new FindOneAndUpdateOptions().returnDocument(ReturnDocument.AFTER)));
        o.append("findOneAndDelete", coll.findOneAndDelete(new Document("_id", 6)));
        o.append("deleteOne", coll.deleteOne(new Document("_id", 5)).getDeletedCount());
        o.append("deleteMany", coll.deleteMany(new Document("tag", "a")).getDeletedCount());
        o.append("countDocuments", coll.countDocuments());
        o.append("estimatedDocumentCount", coll.estimatedDocumentCount());
        o.append("distinct", coll.distinct("tag", String.class).into(new ArrayList<>()).stream().sorted().collect(Collectors.toList()));
        o.append("projection", coll.find().projection(new Document("_id", 0).append("tag", 1)).sort(new Document("tag", 1))
            .into(new ArrayList<>()));
        o.append("skipLimit", coll.find().sort(new Document("_id", -1)).skip(1).limit(1).into(new ArrayList<>()));
        o.append("all", all(coll));
        return new Harness.Result(o);
      }
    });
  }

  // --- bulk writes with a duplicate key mid-batch --------------------------------------------------

  private static Document bulkShape(MongoBulkWriteException e) {
    BulkWriteResult r = e.getWriteResult();
    return new Document("insertedCount", r.getInsertedCount())
        .append("counts", List.of(r.getInsertedCount(), r.getMatchedCount(), r.getModifiedCount(), r.getDeletedCount()))
        .append("writeErrors", e.getWriteErrors().stream()
            .map(w -> new Document("index", w.getIndex()).append("code", w.getCode())).collect(Collectors.toList()));
  }

  private static Harness.Result bulk(String id, String target, boolean ordered) {
    try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
      MongoDatabase db = c.freshDb(id, target);
      Document o = new Document();
      MongoCollection<Document> im = db.getCollection("im");
      try {
        im.insertMany(List.of(new Document("_id", 1), new Document("_id", 2), new Document("_id", 2), new Document("_id", 3)),
            new InsertManyOptions().ordered(ordered));
        o.append("insertMany", "accepted");
      } catch (MongoBulkWriteException e) {
        o.append("insertMany", bulkShape(e));
      }
      o.append("insertManyAfter", ids(im));
      MongoCollection<Document> bw = db.getCollection("bw");
      List<WriteModel<Document>> models = List.of(
          new InsertOneModel<>(new Document("_id", 10)),
          new UpdateOneModel<>(new Document("_id", 10), new Document("$set", new Document("x", 1))),
          new InsertOneModel<>(new Document("_id", 10)),
          new DeleteOneModel<>(new Document("_id", 10)),
          new InsertOneModel<>(new Document("_id", 11)));
      try {
        BulkWriteResult r = bw.bulkWrite(models, new BulkWriteOptions().ordered(ordered));
        o.append("bulkWrite", new Document("accepted", List.of(r.getInsertedCount(), r.getMatchedCount(), r.getModifiedCount(), r.getDeletedCount())));
      } catch (MongoBulkWriteException e) {
        o.append("bulkWrite", bulkShape(e));
      }
      o.append("bulkWriteAfter", all(bw));
      return new Harness.Result(o);
    }
  }

  @Test
  @org.junit.jupiter.api.Order(4)
  void bulkOrderedError() throws Exception {
    differential("bulk-ordered-error", t -> bulk("bulk-ordered-error", t, true));
  }

  @Test
  @org.junit.jupiter.api.Order(5)
  void bulkUnorderedError() throws Exception {
    differential("bulk-unordered-error", t -> bulk("bulk-unordered-error", t, false));
  }

  // --- cursors -------------------------------------------------------------------------------

  private static MongoCollection<Document> seed25(MongoDatabase db) {
    MongoCollection<Document> coll = db.getCollection("c");
    coll.insertMany(IntStream.range(0, 25).mapToObj(i -> new Document("_id", i).append("g", i % 3).append("v", i))
        .collect(Collectors.toList()));
    return coll;
  }

  private static int batchLen(CommandSucceededEvent e, String field) {
    return e.getResponse().getDocument("cursor").getArray(field).size();
  }

  @Test
  @org.junit.jupiter.api.Order(6)
  void cursorBatches() throws Exception {
    differential("cursor-batches", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
        MongoCollection<Document> coll = seed25(c.freshDb("cursor-batches", target));
        int from = c.events.succeeded.size();
        List<Object> got = coll.find().batchSize(2).sort(new Document("_id", 1)).into(new ArrayList<>()).stream()
            .map(d -> d.get("_id")).collect(Collectors.toList());
        Document o = new Document("ids", got);
        List<Integer> next = new ArrayList<>();
        boolean exhausted = false;
        for (CommandSucceededEvent e : c.events.succeeded.subList(from, c.events.succeeded.size())) {
          if (e.getCommandName().equals("find")) {
            o.append("firstBatch", batchLen(e, "firstBatch"));
          } else if (e.getCommandName().equals("getMore")) {
            next.add(batchLen(e, "nextBatch"));
            exhausted = e.getResponse().getDocument("cursor").getNumber("id").longValue() == 0;
          }
        }
        return new Harness.Result(o.append("getMores", next.size()).append("nextBatches", next).append("exhausted", exhausted));
      }
    });
  }

  @Test
  @org.junit.jupiter.api.Order(7)
  void cursorEarlyClose() throws Exception {
    differential("cursor-early-close", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
        MongoCollection<Document> coll = seed25(c.freshDb("cursor-early-close", target));
        int from = c.events.succeeded.size();
        int fromFailed = c.events.failed.size();
        List<Object> read = new ArrayList<>();
        try (MongoCursor<Document> cur = coll.find().batchSize(2).sort(new Document("_id", 1)).iterator()) {
          for (int i = 0; i < 5 && cur.hasNext(); i++) {
            read.add(cur.next().get("_id"));
          }
        }
        Document o = new Document("read", read);
        Object kill = "not sent";
        int getMores = 0;
        for (CommandSucceededEvent e : c.events.succeeded.subList(from, c.events.succeeded.size())) {
          if (e.getCommandName().equals("getMore")) {
            getMores++;
          } else if (e.getCommandName().equals("killCursors")) {
            BsonDocument r = e.getResponse();
            Document k = new Document();
            for (String f : List.of("cursorsKilled", "cursorsNotFound", "cursorsAlive", "cursorsUnknown")) {
              k.append(f.replace("cursors", "").toLowerCase(), r.containsKey(f) ? r.getArray(f).size() : null);
            }
            kill = k;
          }
        }
        for (var e : c.events.failed.subList(fromFailed, c.events.failed.size())) {
          if (e.getCommandName().equals("killCursors")) {
            kill = new Document("failed", errorShape(e.getThrowable()));
          }
        }
        return new Harness.Result(o.append("getMores", getMores).append("killCursors", kill)
            .append("countAfter", coll.countDocuments()));
      }
    });
  }

  // --- aggregate -----------------------------------------------------------------------------

  @Test
  @org.junit.jupiter.api.Order(8)
  void aggregate() throws Exception {
    differential("aggregate", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
        MongoCollection<Document> coll = seed25(c.freshDb("aggregate", target));
        // One accumulator per $group: FerretDB 1.24 computes only the first.
        List<Document> grouped = coll.aggregate(List.of(
            new Document("$match", new Document("v", new Document("$gte", 5))),
            new Document("$group", new Document("_id", "$g").append("total", new Document("$sum", "$v"))),
            new Document("$sort", new Document("_id", 1)))).batchSize(1).into(new ArrayList<>());
        List<Document> counted = coll.aggregate(List.of(new Document("$match", new Document("g", 1)), new Document("$count", "n")))
            .into(new ArrayList<>());
        return new Harness.Result(new Document("grouped", grouped).append("counted", counted));
      }
    });
  }

  // --- indexes and a duplicate key ------------------------------------------------------------------

  @Test
  @org.junit.jupiter.api.Order(9)
  void indexDuplicateKey() throws Exception {
    differential("index-duplicate-key", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain())) {
        MongoCollection<Document> coll = c.freshDb("index-duplicate-key", target).getCollection("users");
        Document o = new Document("createIndex", coll.createIndex(new Document("email", 1), new IndexOptions().unique(true)));
        java.util.function.Supplier<List<Document>> listed = () -> coll.listIndexes().into(new ArrayList<>()).stream()
            .map(i -> new Document("name", i.getString("name")).append("key", i.get("key"))
                .append("unique", i.getBoolean("unique", false)))
            .sorted(java.util.Comparator.comparing(d -> d.getString("name"))).collect(Collectors.toList());
        o.append("indexes", listed.get());
        coll.insertOne(new Document("_id", 1).append("email", "a@example.com"));
        java.util.function.Function<Document, Object> insert = d -> {
          try {
            coll.insertOne(d);
            return "accepted";
          } catch (MongoException e) {
            return errorShape(e);
          }
        };
        o.append("duplicate", insert.apply(new Document("_id", 2).append("email", "a@example.com")));
        o.append("duplicateId", insert.apply(new Document("_id", 1).append("email", "b@example.com")));
        coll.dropIndex("email_1");
        o.append("indexesAfter", listed.get());
        o.append("afterDrop", insert.apply(new Document("_id", 3).append("email", "a@example.com")));
        return new Harness.Result(o);
      }
    });
  }

  // --- retryable writes and reads across a connection drop -------------------------------------------

  /**
   * The server the client is connected to (FerretDB, or the gateway) is frozen, an operation is
   * sent on the pooled connection (so it is surely in flight), then the server is killed and
   * restarted on the same port under it: the driver's one retry must land on the restarted server.
   */
  private static Harness.Result drop(String id, String target, boolean write) throws Exception {
    Harness.Uris u = Harness.Uris.of(target);
    try (Harness.Client c = new Harness.Client(withOptions(u.plain(), "retryWrites=true&retryReads=true"),
        b -> b.applyToConnectionPoolSettings(p -> p.maxSize(1)))) {
      MongoCollection<Document> coll = c.freshDb(id, target).getCollection("r");
      coll.insertOne(new Document("_id", 1));
      int from = c.events.started.size();
      int fromFailed = c.events.failed.size();
      Harness.freeze(u.restartName());
      Process restart = Harness.restartLater(u.restartName(), 700);
      Object result;
      String command = write ? "insert" : "find";
      try {
        if (write) {
          coll.insertOne(new Document("_id", 2));
          result = "ok";
        } else {
          result = ids(coll);
        }
      } catch (MongoException e) {
        result = errorShape(e);
      }
      String log = Harness.waitFor(restart);
      List<String> failed = c.events.failed.subList(fromFailed, c.events.failed.size()).stream()
          .filter(e -> e.getCommandName().equals(command)).map(e -> e.getThrowable().getClass().getSimpleName())
          .collect(Collectors.toList());
      // How many attempts the driver made is recorded, not compared: a driver that finds its
      // pooled connection dead before sending retries the connection, not the command.
      long attempts = c.events.startedNamed(from, command);
      Document o = new Document("result", result).append("after", ids(coll));
      return new Harness.Result(o, new Document("restart", log).append("attempts", attempts).append("failedAttempts", failed));
    }
  }

  private static void assertGatewayRetried(Map<String, Harness.Side> res, boolean write) {
    // Through the gateway (a mongos to the driver) the operation succeeds, exactly once,
    // whatever the reference does.
    Document g = (Document) res.get("gateway").outcome();
    assertEquals(List.of(write ? "ok" : List.of(1), write ? List.of(1, 2) : List.of(1)),
        List.of(g.get("result"), g.get("after")), Harness.json(res.get("gateway")));
  }

  @Test
  @org.junit.jupiter.api.Order(10)
  void retryableWriteDrop() throws Exception {
    assertGatewayRetried(differential("retryable-write-drop", t -> drop("retryable-write-drop", t, true)), true);
  }

  @Test
  @org.junit.jupiter.api.Order(11)
  void retryableReadDrop() throws Exception {
    assertGatewayRetried(differential("retryable-read-drop", t -> drop("retryable-read-drop", t, false)), false);
  }

  // --- sessions and transactions (nx-27017 directly / through the txn gateway) -----------------------

  @Test
  @org.junit.jupiter.api.Order(12)
  void txnCommit() throws Exception {
    differential("txn-commit", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).txn())) {
        MongoDatabase db = c.freshDb("txn-commit", target);
        db.getCollection("a").insertOne(new Document("_id", 0));
        db.getCollection("b").insertOne(new Document("_id", 0));
        Document o = new Document();
        try (ClientSession s = c.client.startSession()) {
          s.withTransaction(() -> {
            db.getCollection("a").insertOne(s, new Document("_id", 1));
            db.getCollection("b").updateOne(s, new Document("_id", 0), new Document("$set", new Document("moved", 1)));
            o.append("insideCount", db.getCollection("a").countDocuments(s));
            return null;
          });
        }
        o.append("a", all(db.getCollection("a"))).append("b", all(db.getCollection("b")));
        return new Harness.Result(o);
      }
    });
  }

  @Test
  @org.junit.jupiter.api.Order(13)
  void txnAbort() throws Exception {
    differential("txn-abort", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).txn())) {
        MongoDatabase db = c.freshDb("txn-abort", target);
        MongoCollection<Document> a = db.getCollection("a");
        a.insertOne(new Document("_id", 0).append("n", 0));
        Document o = new Document();
        try (ClientSession s = c.client.startSession()) {
          s.startTransaction();
          a.insertOne(s, new Document("_id", 1));
          a.updateOne(s, new Document("_id", 0), new Document("$set", new Document("n", 1)));
          o.append("inside", a.find(s).sort(new Document("_id", 1)).into(new ArrayList<>()));
          s.abortTransaction();
        }
        o.append("after", all(a));
        return new Harness.Result(o);
      }
    });
  }

  // --- compression requested by the client -----------------------------------------------------------

  @Test
  @org.junit.jupiter.api.Order(14)
  void compression() throws Exception {
    // zlib is built in; snappy and zstd come from snappy-java and zstd-jni (pom.xml). Neither
    // side offers compression, so the driver must settle on none.
    differential("compression", target -> {
      try (Harness.Client c = new Harness.Client(withOptions(Harness.Uris.of(target).plain(), "compressors=snappy,zlib,zstd"))) {
        MongoCollection<Document> coll = c.freshDb("compression", target).getCollection("z");
        String pad = "x".repeat(1000);
        coll.insertMany(IntStream.range(0, 50).mapToObj(i -> new Document("_id", i).append("pad", pad)).collect(Collectors.toList()));
        List<Document> got = coll.find().batchSize(10).sort(new Document("_id", 1)).into(new ArrayList<>());
        return new Harness.Result(new Document("count", got.size())
            .append("padOk", got.stream().allMatch(d -> pad.equals(d.getString("pad")))), new Document("requested", "snappy,zlib,zstd"));
      }
    });
  }

  // --- directConnection=true, and a seed list of two gateways -------------------------------------------

  @Test
  @org.junit.jupiter.api.Order(16)
  void directConnection() throws Exception {
    differential("direct-connection", target -> {
      try (Harness.Client c = new Harness.Client(withOptions(Harness.Uris.of(target).plain(), "directConnection=true"))) {
        MongoCollection<Document> coll = c.freshDb("direct-connection", target).getCollection("d");
        coll.insertMany(List.of(new Document("_id", 1), new Document("_id", 2)));
        return new Harness.Result(new Document("ids", ids(coll)), new Document("serverTypes", new Document(Map.copyOf(c.events.servers))));
      }
    });
  }

  @Test
  @org.junit.jupiter.api.Order(17)
  void seedListTwoGateways() throws Exception {
    Map<String, Harness.Side> res = differential("seed-list-two-gateways", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).seed())) {
        MongoCollection<Document> coll = c.freshDb("seed-list-two-gateways", target).getCollection("s");
        coll.insertMany(IntStream.range(0, 10).mapToObj(i -> new Document("_id", i)).collect(Collectors.toList()));
        List<Object> got = coll.find().batchSize(3).sort(new Document("_id", 1)).into(new ArrayList<>()).stream()
            .map(d -> d.get("_id")).collect(Collectors.toList());
        long n = coll.countDocuments();
        for (int i = 0; i < 40 && c.events.servers.containsValue("UNKNOWN"); i++) {
          Thread.sleep(50);
        }
        return new Harness.Result(new Document("ids", got).append("count", n),
            new Document("serverTypes", new Document(Map.copyOf(c.events.servers))));
      }
    });
    // Beyond the comparison: through the seed list the driver must see both gateways as mongos.
    Document types = (Document) res.get("gateway").info().get("serverTypes");
    assertEquals(List.of("SHARD_ROUTER", "SHARD_ROUTER"), new ArrayList<>(types.values()), types.toJson());
  }

  // The IAM scenario is IamTest, in a JVM of its own (pom.xml): the driver reads the role's
  // credentials from the process environment, which Java cannot change at run time.
}
