package compat;

import static org.junit.jupiter.api.Assertions.fail;

import com.mongodb.ConnectionString;
import com.mongodb.MongoBulkWriteException;
import com.mongodb.MongoClientSettings;
import com.mongodb.MongoCommandException;
import com.mongodb.MongoException;
import com.mongodb.MongoSecurityException;
import com.mongodb.MongoSocketException;
import com.mongodb.MongoTimeoutException;
import com.mongodb.MongoWriteException;
import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoClients;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.MongoDatabase;
import com.mongodb.event.ClusterDescriptionChangedEvent;
import com.mongodb.event.ClusterListener;
import com.mongodb.event.CommandFailedEvent;
import com.mongodb.event.CommandListener;
import com.mongodb.event.CommandStartedEvent;
import com.mongodb.event.CommandSucceededEvent;
import com.mongodb.event.ServerHeartbeatStartedEvent;
import com.mongodb.event.ServerMonitorListener;
import java.io.IOException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.stream.Collectors;
import org.bson.BsonDocument;
import org.bson.Document;
import org.bson.json.JsonMode;
import org.bson.json.JsonWriterSettings;

/**
 * The differential harness of the Java suite (the same contract as compat/lib/harness.mjs): a
 * scenario runs once per target ("direct" = the upstream, "gateway" = through mongomux) and
 * returns an outcome, compared between the two, and info, only recorded. One JSON line per
 * target and one verdict line go to $COMPAT_RESULTS.
 */
final class Harness {
  static final String SUITE = "java";
  static final String DRIVER = "java-sync";
  static final String VERSION = com.mongodb.internal.build.MongoDriverVersion.VERSION;
  static final List<String> TARGETS = List.of("direct", "gateway");
  private static final JsonWriterSettings RELAXED = JsonWriterSettings.builder().outputMode(JsonMode.RELAXED).build();

  private Harness() {}

  static String env(String name) {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      fail(name + " is not set: run the suites through compat/run");
    }
    return v;
  }

  /** The connection strings of one target. */
  record Uris(String plain, String sha256, String sha1, String seed, String txn, String restartName, String iam) {
    static Uris of(String target) {
      String up = target.equals("direct") ? "DIRECT" : "GATEWAY";
      return new Uris(
          env("COMPAT_" + up + "_URI"),
          env("COMPAT_" + up + "_SHA256_URI"),
          env("COMPAT_" + up + "_SHA1_URI"),
          target.equals("direct") ? env("COMPAT_DIRECT_URI") : env("COMPAT_GATEWAY_SEED_URI"),
          env("COMPAT_TXN_" + up + "_URI"),
          env("COMPAT_RESTART_" + up),
          env("COMPAT_" + up + "_IAM_URI"));
    }
  }

  static String withOptions(String uri, String opts) {
    return uri + (uri.contains("?") ? "&" : "?") + opts;
  }

  static String withPassword(String uri, String password) {
    URI u = URI.create(uri);
    String user = u.getRawUserInfo().split(":", 2)[0];
    return uri.replaceFirst("//[^@]*@", "//" + user + ":" + password + "@");
  }

  static String dbName(String scenario, String target) {
    String n = ("compat_java_" + scenario + "_" + target.charAt(0)).replaceAll("[^A-Za-z0-9_]", "_");
    return n.length() > 60 ? n.substring(0, 60) : n;
  }

  /** What a client's listeners saw. */
  static final class Events {
    final List<CommandStartedEvent> started = new CopyOnWriteArrayList<>();
    final List<CommandSucceededEvent> succeeded = new CopyOnWriteArrayList<>();
    final List<CommandFailedEvent> failed = new CopyOnWriteArrayList<>();
    final List<Boolean> heartbeats = new CopyOnWriteArrayList<>();
    final Map<String, String> servers = new java.util.concurrent.ConcurrentSkipListMap<>();

    long startedNamed(int from, String name) {
      return started.subList(from, started.size()).stream().filter(e -> e.getCommandName().equals(name)).count();
    }
  }

  /** A client with every listener attached; close it (try-with-resources). */
  static final class Client implements AutoCloseable {
    final MongoClient client;
    final Events events = new Events();

    Client(String uri, Consumer<MongoClientSettings.Builder> extra) {
      MongoClientSettings.Builder b = MongoClientSettings.builder()
          .applyConnectionString(new ConnectionString(uri))
          .addCommandListener(new CommandListener() {
            @Override
            public void commandStarted(CommandStartedEvent e) {
              events.started.add(e);
            }

            @Override
            public void commandSucceeded(CommandSucceededEvent e) {
              events.succeeded.add(e);
            }

            @Override
            public void commandFailed(CommandFailedEvent e) {
              events.failed.add(e);
            }
          })
          .applyToClusterSettings(c -> c.serverSelectionTimeout(10, TimeUnit.SECONDS)
              .addClusterListener(new ClusterListener() {
                @Override
                public void clusterDescriptionChanged(ClusterDescriptionChangedEvent e) {
                  e.getNewDescription().getServerDescriptions()
                      .forEach(sd -> events.servers.put(sd.getAddress().toString(), sd.getType().name()));
                }
              }))
          .applyToServerSettings(s -> s.addServerMonitorListener(new ServerMonitorListener() {
            @Override
            public void serverHearbeatStarted(ServerHeartbeatStartedEvent e) {
              events.heartbeats.add(e.isAwaited());
            }
          }));
      if (extra != null) {
        extra.accept(b);
      }
      client = MongoClients.create(b.build());
    }

    Client(String uri) {
      this(uri, null);
    }

    MongoDatabase freshDb(String scenario, String target) {
      MongoDatabase db = client.getDatabase(dbName(scenario, target));
      db.drop();
      return db;
    }

    @Override
    public void close() {
      client.close();
    }
  }

  static List<Object> ids(MongoCollection<Document> coll) {
    List<Object> out = new ArrayList<>();
    for (Document d : coll.find().sort(new Document("_id", 1))) {
      out.add(d.get("_id"));
    }
    return out;
  }

  static List<Document> all(MongoCollection<Document> coll) {
    return coll.find().sort(new Document("_id", 1)).into(new ArrayList<>());
  }

  /** What of an error is compared: its class, code, codeName and labels (never the message). */
  static Document errorShape(Throwable e) {
    if (e == null) {
      return null;
    }
    Document d = new Document("kind", e.getClass().getSimpleName());
    if (e instanceof MongoCommandException ce) {
      d.append("code", ce.getErrorCode()).append("codeName", ce.getErrorCodeName());
    } else if (e instanceof MongoWriteException we) {
      d.append("code", we.getError().getCode());
    } else if (e instanceof MongoBulkWriteException be) {
      d.append("code", be.getWriteErrors().isEmpty() ? null : be.getWriteErrors().get(0).getCode());
    } else if (e instanceof MongoException me && !(e instanceof MongoSocketException) && !(e instanceof MongoTimeoutException)) {
      d.append("code", me.getCode());
    }
    if (e instanceof MongoException me) {
      d.append("labels", me.getErrorLabels().stream().sorted().collect(Collectors.toList()));
    }
    if ((e instanceof MongoSecurityException || e instanceof MongoTimeoutException) && e.getCause() != null) {
      d.append("cause", errorShape(e.getCause()));
    }
    return d;
  }

  static void freeze(String name) throws Exception {
    Process p = new ProcessBuilder(env("COMPAT_CTL"), "freeze", name).redirectErrorStream(true).start();
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    if (p.waitFor() != 0) {
      fail("ctl freeze " + name + ": " + out);
    }
  }

  /** `ctl restart NAME DELAY_MS` in the background. */
  static Process restartLater(String name, int delayMs) throws IOException {
    return new ProcessBuilder(env("COMPAT_CTL"), "restart", name, String.valueOf(delayMs)).redirectErrorStream(true).start();
  }

  static String waitFor(Process p) throws Exception {
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
    if (p.waitFor() != 0) {
      fail("ctl restart: " + out);
    }
    return out;
  }

  /** Outcome and info of one target. */
  record Result(Object outcome, Document info) {
    Result(Object outcome) {
      this(outcome, new Document());
    }
  }

  @FunctionalInterface
  interface Scenario {
    Result run(String target) throws Exception;
  }

  record Side(String status, Object outcome, Document info, long ms) {}

  /** JSON round trip: both sides compared (and recorded) the way the report shows them. */
  static Object plain(Object v) {
    String json = new Document("v", v).toJson(RELAXED);
    return Document.parse(json).get("v");
  }

  private static Document knownDifference(String scenario) throws IOException {
    Document f = Document.parse(Files.readString(Path.of(env("COMPAT_KNOWN"))));
    for (Document k : f.getList("differences", Document.class)) {
      String driver = k.getString("driver");
      if ((driver.equals(DRIVER) || driver.equals("*")) && k.getString("scenario").equals(scenario)) {
        return k;
      }
    }
    return null;
  }

  private static synchronized void record(Document rec) throws IOException {
    Document line = new Document("ts", Instant.now().toString()).append("suite", SUITE).append("driver", DRIVER)
        .append("driver_version", VERSION);
    line.putAll(rec);
    Files.writeString(Path.of(env("COMPAT_RESULTS")), line.toJson(RELAXED) + "\n", StandardCharsets.UTF_8,
        StandardOpenOption.CREATE, StandardOpenOption.APPEND);
  }

  /** Run on both targets, record, compare; fail on an unexplained difference or a scenario that threw. */
  static Map<String, Side> differential(String scenario, Scenario run) throws Exception {
    Map<String, Side> res = new TreeMap<>();
    for (String target : TARGETS) {
      long t0 = System.nanoTime();
      Side s;
      try {
        Result r = run.run(target);
        s = new Side("ok", plain(r.outcome()), r.info(), 0);
      } catch (Exception | AssertionError e) {
        s = new Side("error", new Document("exception", errorShape(e)),
            new Document("message", String.valueOf(e)), 0);
      }
      s = new Side(s.status(), s.outcome(), s.info(), (System.nanoTime() - t0) / 1_000_000);
      record(new Document("scenario", scenario).append("target", target).append("status", s.status())
          .append("outcome", s.outcome()).append("info", s.info()).append("ms", s.ms()));
      res.put(target, s);
    }
    boolean same = java.util.Objects.equals(res.get("direct").outcome(), res.get("gateway").outcome());
    boolean bothOk = res.get("direct").status().equals("ok") && res.get("gateway").status().equals("ok");
    Document known = knownDifference(scenario);
    String verdict;
    if (!same) {
      verdict = known != null ? "known-difference" : "differs";
    } else {
      verdict = bothOk ? "same" : known != null ? "known-difference" : "error";
    }
    record(new Document("scenario", scenario).append("target", "verdict").append("verdict", verdict)
        .append("known", known == null ? null : known.getString("id")));
    if (verdict.equals("differs") || verdict.equals("error")) {
      fail(scenario + ": " + verdict + "\n  direct:  " + json(res.get("direct")) + "\n  gateway: " + json(res.get("gateway")));
    }
    return res;
  }

  static String json(Side s) {
    return new Document("status", s.status()).append("outcome", s.outcome()).append("info", s.info()).toJson(RELAXED);
  }

  static void notYet(String scenario, String reason) throws IOException {
    for (String target : TARGETS) {
      record(new Document("scenario", scenario).append("target", target).append("status", "not-yet")
          .append("outcome", null).append("info", new Document("reason", reason)));
    }
    record(new Document("scenario", scenario).append("target", "verdict").append("verdict", "not-yet").append("reason", reason));
  }

  static Document reply(BsonDocument b) {
    return Document.parse(b.toJson(RELAXED));
  }
}
