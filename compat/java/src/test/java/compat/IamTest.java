package compat;

import static compat.Harness.differential;
import static compat.Harness.errorShape;

import com.mongodb.MongoCredential;
import com.mongodb.MongoException;
import com.mongodb.client.MongoCollection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.bson.Document;
import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Test;

/**
 * MONGODB-AWS the way a function on Lambda logs in: the role's temporary credentials are in
 * AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the start (pom.xml gives
 * this class a JVM of its own with them, copied from compat/run's COMPAT_AWS_*), and the driver
 * reads them there itself (no AWS SDK on the class path). Then a wrong secret, which Java can only
 * give as an explicit credential.
 */
class IamTest {
  @Test
  void iamMongodbAws() throws Exception {
    Assertions.assertNotNull(System.getenv("AWS_ACCESS_KEY_ID"), "run through Maven (pom.xml sets it)");
    Map<String, Harness.Side> res = differential("iam-mongodb-aws", target -> {
      String uri = Harness.Uris.of(target).iam();
      Document o = login(uri, target, null);
      MongoCredential wrong = MongoCredential.createAwsCredential(System.getenv("AWS_ACCESS_KEY_ID"),
              "wrong-secret-wrong-secret-wrong-secret00".toCharArray())
          .withMechanismProperty("AWS_SESSION_TOKEN", System.getenv("AWS_SESSION_TOKEN"));
      o.append("wrongSecret", login(uri, target, wrong).get("ping"));
      return new Harness.Result(o);
    });
    // The upstream has no MONGODB-AWS: the gateway side is checked on its own.
    Document g = (Document) res.get("gateway").outcome();
    Assertions.assertEquals(1.0, ((Number) g.get("ping", Object.class)).doubleValue(), g.toJson());
    Assertions.assertEquals(List.of(new Document("_id", 1).append("who", "iam")), g.get("found"), g.toJson());
    // The code of the server's refusal, wherever in the exception's causes the driver put it.
    String refused = ((Document) ((Document) g.get("wrongSecret")).get("refused")).toJson();
    Assertions.assertTrue(refused.contains("\"code\": 18"), g.toJson());
  }

  /** {ping: 1.0, found: [...]} after logging in, or {ping: {refused: error}}. */
  private static Document login(String uri, String target, MongoCredential credential) {
    try (Harness.Client c = new Harness.Client(uri, b -> {
      b.applyToClusterSettings(s -> s.serverSelectionTimeout(5, TimeUnit.SECONDS));
      if (credential != null) {
        b.credential(credential);
      }
    })) {
      Object ping = c.client.getDatabase("admin").runCommand(new Document("ping", 1)).get("ok");
      MongoCollection<Document> coll = c.freshDb("iam-mongodb-aws", target).getCollection("c");
      coll.insertOne(new Document("_id", 1).append("who", "iam"));
      return new Document("ping", ping).append("found", Harness.all(coll));
    } catch (MongoException e) {
      return new Document("ping", new Document("refused", errorShape(e)));
    }
  }
}
