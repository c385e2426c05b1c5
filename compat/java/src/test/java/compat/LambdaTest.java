package compat;

import static compat.Harness.differential;

import com.mongodb.client.MongoCollection;
import java.util.concurrent.TimeUnit;
import org.bson.Document;
import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Test;

/**
 * A driver configured the way it is on AWS Lambda: AWS_LAMBDA_RUNTIME_API is in the JVM's
 * environment from the start (pom.xml gives this class a JVM of its own), so the driver's
 * monitoring mode "auto" chooses polling: no awaited heartbeats.
 */
class LambdaTest {
  @Test
  void lambdaPolling() throws Exception {
    Assertions.assertNotNull(System.getenv("AWS_LAMBDA_RUNTIME_API"), "run through Maven (pom.xml sets it)");
    differential("lambda-polling", target -> {
      try (Harness.Client c = new Harness.Client(Harness.Uris.of(target).plain(),
          b -> b.applyToServerSettings(s -> s.heartbeatFrequency(500, TimeUnit.MILLISECONDS)))) {
        MongoCollection<Document> coll = c.freshDb("lambda-polling", target).getCollection("l");
        coll.insertOne(new Document("_id", 1));
        Thread.sleep(1600);
        long awaited = c.events.heartbeats.stream().filter(a -> a).count();
        return new Harness.Result(new Document("found", Harness.all(coll))
            .append("heartbeats", !c.events.heartbeats.isEmpty()).append("awaited", awaited),
            new Document("heartbeats", c.events.heartbeats.size()));
      }
    });
  }
}
