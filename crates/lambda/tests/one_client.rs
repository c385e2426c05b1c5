//! One client per execution environment, under concurrency: many tasks asking a fresh [`Kit`]
//! for its client at the same moment (what Lambda Managed Instances do on a cold start) get
//! one and the same client, and the kit counts exactly one creation. A failed creation leaves
//! the kit empty so the next call tries again.
//!
//! No server is needed: creating a `mongodb::Client` opens no connection. The connection
//! string points at a closed loopback port, so the driver's background monitor only ever
//! knocks on 127.0.0.1.

use std::sync::Arc;

use mongomux_lambda::{Error, Kit, LambdaEnv, LambdaOptions};

fn no_env() -> LambdaEnv {
    LambdaEnv::from_vars(std::iter::empty::<(&str, &str)>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_calls_create_exactly_one_client() {
    let kit = Kit::with_env(
        LambdaOptions::default().uri("mongodb://127.0.0.1:1/app"),
        no_env(),
    );
    assert_eq!(kit.clients_created(), 0, "the kit is lazy");

    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let kit = kit.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let client = kit.client().await.expect("client");
                // The reference points into the kit's cell: one address, one client.
                client as *const _ as usize
            })
        })
        .collect();
    let mut addresses = Vec::new();
    for t in tasks {
        addresses.push(t.await.unwrap());
    }
    addresses.dedup();
    assert_eq!(addresses.len(), 1, "every caller got the same client");
    assert_eq!(kit.clients_created(), 1);

    // Later calls, through other clones, reuse it too.
    for _ in 0..100 {
        let db = kit.clone().default_database().await.unwrap();
        assert_eq!(db.name(), "app");
    }
    assert_eq!(kit.clients_created(), 1);
}

#[tokio::test]
async fn a_failed_creation_is_retried_by_the_next_call() {
    // No connection string at all: every call fails, none is cached, nothing is counted.
    let kit = Kit::with_env(LambdaOptions::default(), no_env());
    for _ in 0..3 {
        assert!(matches!(kit.client().await, Err(Error::NoUri)));
    }
    assert_eq!(kit.clients_created(), 0);

    // The environment (here: the variables) decides on each try.
    let kit = Kit::with_env(
        LambdaOptions::default(),
        LambdaEnv::from_vars([("MONGOMUX_URI", "mongodb://127.0.0.1:1/")]),
    );
    kit.client().await.expect("client");
    assert!(matches!(
        kit.default_database().await,
        Err(Error::NoDefaultDatabase)
    ));
    assert_eq!(kit.clients_created(), 1);
}

#[tokio::test]
async fn debug_output_of_a_kit_with_a_client_shows_no_secret() {
    let kit = Kit::with_env(
        LambdaOptions::default(),
        LambdaEnv::from_vars([
            ("MONGODB_URI", "mongodb://fn:Hunter2-pw@127.0.0.1:1/app"),
            ("AWS_ACCESS_KEY_ID", "ASIAKEYIDSHOULDNOTSHOW"),
        ]),
    );
    kit.client().await.expect("client");
    let text = format!("{kit:?}");
    assert!(!text.contains("Hunter2-pw"), "{text}");
    assert!(!text.contains("ASIAKEYIDSHOULDNOTSHOW"), "{text}");
}
