//! Transactions through the gateway, with nx-27017 (which implements them) as the upstream.
//! The driver only starts transactions against a replica set or a mongos, so these also check
//! that the gateway presents itself as a mongos.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::event::command::CommandEvent;
use mongodb::Client;

const LIMIT: Duration = Duration::from_secs(60);

/// The `_id`s of a collection, sorted here (nx-27017 does not always honour `sort`).
async fn ids(client: &Client, db: &str, coll: &str) -> Vec<i32> {
    let docs: Vec<Document> = client
        .database(db)
        .collection::<Document>(coll)
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("iterate");
    let mut ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_commit() {
    bounded(LIMIT, "transaction_commit", async {
        let nx = Nx::start().await;
        let gw = Gateway::start(GatewayConfig::for_nx(&nx)).await;
        let client = gw.client();
        let coll = client.database("txn").collection::<Document>("accounts");
        coll.insert_many(vec![doc! {"_id": 1, "bal": 100}, doc! {"_id": 2, "bal": 0}])
            .await
            .unwrap();

        let mut s = client.start_session().await.expect("start_session");
        s.start_transaction().await.expect("start_transaction");
        coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"bal": -30}})
            .session(&mut s)
            .await
            .expect("txn update 1");
        coll.update_one(doc! {"_id": 2}, doc! {"$inc": {"bal": 30}})
            .session(&mut s)
            .await
            .expect("txn update 2");
        coll.insert_one(doc! {"_id": 3, "bal": 7})
            .session(&mut s)
            .await
            .expect("txn insert");
        let inside = coll
            .find_one(doc! {"_id": 3})
            .session(&mut s)
            .await
            .expect("read inside the txn");
        assert!(inside.is_some(), "a transaction reads its own writes");
        s.commit_transaction().await.expect("commitTransaction");

        let other = gw.client();
        assert_eq!(ids(&other, "txn", "accounts").await, vec![1, 2, 3]);
        let bal = |id| {
            let other = other.clone();
            async move {
                other
                    .database("txn")
                    .collection::<Document>("accounts")
                    .find_one(doc! {"_id": id})
                    .await
                    .unwrap()
                    .unwrap()
                    .get_i32("bal")
                    .unwrap()
            }
        };
        assert_eq!((bal(1).await, bal(2).await), (70, 30));
        assert_eq!(
            ids(&nx.client(), "txn", "accounts").await,
            vec![1, 2, 3],
            "as nx-27017 sees it"
        );

        // The session is reusable for a second transaction.
        s.start_transaction().await.unwrap();
        coll.insert_one(doc! {"_id": 4, "bal": 1})
            .session(&mut s)
            .await
            .unwrap();
        s.commit_transaction().await.expect("second commit");
        assert_eq!(ids(&other, "txn", "accounts").await, vec![1, 2, 3, 4]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_abort() {
    bounded(LIMIT, "transaction_abort", async {
        let nx = Nx::start().await;
        let gw = Gateway::start(GatewayConfig::for_nx(&nx)).await;
        let client = gw.client();
        let coll = client.database("txn").collection::<Document>("orders");
        coll.insert_one(doc! {"_id": 1}).await.unwrap();

        let mut s = client.start_session().await.unwrap();
        s.start_transaction().await.unwrap();
        coll.insert_one(doc! {"_id": 2})
            .session(&mut s)
            .await
            .expect("txn insert");
        coll.delete_one(doc! {"_id": 1})
            .session(&mut s)
            .await
            .expect("txn delete");
        s.abort_transaction().await.expect("abortTransaction");

        assert_eq!(
            ids(&gw.client(), "txn", "orders").await,
            vec![1],
            "nothing of the aborted transaction"
        );
        assert_eq!(
            ids(&nx.client(), "txn", "orders").await,
            vec![1],
            "as nx-27017 sees it"
        );

        // Dropping a session with a transaction in progress aborts it too.
        {
            let mut s = client.start_session().await.unwrap();
            s.start_transaction().await.unwrap();
            coll.insert_one(doc! {"_id": 3})
                .session(&mut s)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ids(&gw.client(), "txn", "orders").await, vec![1]);
    })
    .await;
}

/// Transactions from several clients in turn (commit, abort, commit, abort), each on a client
/// whose other tasks keep plain reads going at the same time, so the transaction's commands reach
/// the gateway over more than one of the driver's connections.
///
/// The transactions do not overlap in time: nx-27017 runs every connection on one SQLite
/// connection and implements transactions as named savepoints on it, so two open transactions
/// break each other (checked with pymongo straight against nx-27017: interleaving two sessions'
/// transactions ends in "no such savepoint", and the aborted one's writes stay). Overlapping
/// transactions need an upstream that supports them.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_from_several_clients_in_turn() {
    bounded(LIMIT, "transactions_in_turn", async {
        let nx = Nx::start().await;
        let mut cfg = GatewayConfig::for_nx(&nx);
        cfg.pool_size = 8;
        let gw = Gateway::start(cfg).await;
        let plain = gw.client();
        let plain_coll = plain.database("txn").collection::<Document>("multi");
        plain_coll.insert_one(doc! {"_id": -1}).await.unwrap();

        let mut txn_connections = Vec::new();
        for c in 0..4i32 {
            let (client, log) = gw.recorded_client(|o| o.max_pool_size = Some(3));
            let coll = client.database("txn").collection::<Document>("multi");
            // Plain reads on the same client while the transaction runs.
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (coll, stop) = (coll.clone(), stop.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            coll.find_one(doc! {"_id": -1}).await.expect("plain read");
                        }
                    })
                })
                .collect();
            let mut s = client.start_session().await.unwrap();
            s.start_transaction().await.unwrap();
            for k in 0..5 {
                coll.insert_one(doc! {"_id": c * 10 + k})
                    .session(&mut s)
                    .await
                    .unwrap_or_else(|e| panic!("client {c}: insert {k} in the transaction: {e}"));
                tokio::task::yield_now().await;
            }
            let inside = coll
                .count_documents(doc! {"_id": {"$gte": c * 10, "$lt": c * 10 + 5}})
                .session(&mut s)
                .await
                .unwrap();
            assert_eq!(
                inside, 5,
                "client {c}: the transaction reads its own writes"
            );
            if c % 2 == 0 {
                s.commit_transaction()
                    .await
                    .unwrap_or_else(|e| panic!("client {c}: commit: {e}"));
            } else {
                s.abort_transaction()
                    .await
                    .unwrap_or_else(|e| panic!("client {c}: abort: {e}"));
            }
            stop.store(true, Ordering::Relaxed);
            for r in readers {
                r.await.unwrap();
            }
            let conns: HashSet<u32> = log
                .events()
                .into_iter()
                .filter_map(|e| match e {
                    CommandEvent::Started(s) if s.command.contains_key("txnNumber") => {
                        Some(s.connection.id)
                    }
                    _ => None,
                })
                .collect();
            txn_connections.push(conns.len());
        }
        eprintln!("driver connections used per transaction: {txn_connections:?}");
        let mut want = vec![-1];
        want.extend([0, 1, 2, 3, 4, 20, 21, 22, 23, 24]);
        assert_eq!(ids(&plain, "txn", "multi").await, want);
        assert_eq!(
            ids(&nx.client(), "txn", "multi").await,
            want,
            "as nx-27017 sees it"
        );
    })
    .await;
}
