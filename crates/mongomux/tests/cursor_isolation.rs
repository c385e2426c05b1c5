//! Cursor ownership: behind the gateway every upstream connection is the same FerretDB user, and
//! FerretDB's cursor ids are global, sequential and small, so only the gateway can stop one
//! client from reading or killing another client's cursor. Separate `Client`s stand for
//! separate Lambda instances.

mod common;

use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Bson, Document};

#[tokio::test(flavor = "multi_thread")]
async fn other_clients_cannot_use_or_kill_a_cursor() {
    bounded(Duration::from_secs(60), "cursor_isolation", async {
        let (_ferret, gw) = ferret_stack(|_| {}).await;
        let (a, a_log) = gw.recorded_client(|_| {});
        let b = gw.client();
        let a_coll = a.database("iso").collection::<Document>("secrets");
        a_coll
            .insert_many((0..10).map(|i| doc! {"_id": i, "owner": "a"}))
            .await
            .unwrap();

        let mut cursor = a_coll
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .batch_size(2)
            .await
            .expect("A: find");
        let mut seen = Vec::new();
        for _ in 0..2 {
            assert!(cursor.advance().await.unwrap());
            seen.push(
                cursor
                    .deserialize_current()
                    .unwrap()
                    .get_i32("_id")
                    .unwrap(),
            );
        }
        let a_id = a_log.replies("find")[0]
            .get_document("cursor")
            .unwrap()
            .get_i64("id")
            .unwrap();
        assert_ne!(a_id, 0);

        let b_db = b.database("iso");
        // B uses A's cursor id.
        let err = b_db
            .run_command(doc! {"getMore": a_id, "collection": "secrets"})
            .await
            .expect_err("B must not continue A's cursor");
        assert_eq!(error_code(&err), Some(43), "B getMore A's id {a_id}: {err}");

        // B guesses small ids, as FerretDB hands them out (1, 2, 3, ...).
        for id in 1i64..=20 {
            match b_db
                .run_command(doc! {"getMore": id, "collection": "secrets"})
                .await
            {
                Ok(reply) => panic!("B's getMore on guessed id {id} succeeded: {reply}"),
                Err(err) => assert_eq!(
                    error_code(&err),
                    Some(43),
                    "B getMore guessed id {id}: {err}"
                ),
            }
        }
        // Nor may B kill it. The contract (docs/dev/gateway-contract.md): ok: 1 with the id in
        // `cursorsNotFound`, as a server reports an unknown id, and nothing sent upstream; A's
        // read-on below shows the cursor survived.
        let reply = b_db
            .run_command(doc! {"killCursors": "secrets", "cursors": [a_id]})
            .await
            .expect("B killCursors A's id answers ok: 1");
        let ids = |field: &str| reply.get_array(field).cloned().unwrap_or_default();
        assert_eq!(
            ids("cursorsNotFound"),
            vec![Bson::Int64(a_id)],
            "B killCursors A's id: {reply}"
        );
        assert!(
            ids("cursorsKilled").is_empty(),
            "B killCursors A's id: {reply}"
        );

        // A carries on and sees every remaining document, once.
        while cursor
            .advance()
            .await
            .expect("A: getMore after B's attempts")
        {
            seen.push(
                cursor
                    .deserialize_current()
                    .unwrap()
                    .get_i32("_id")
                    .unwrap(),
            );
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(a_log.started("getMore").len() >= 4);
    })
    .await;
}
