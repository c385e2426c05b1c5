//! Unit tests of the rules for sending a request a second time: nothing may be applied twice.

use super::*;
use bson::{rawdoc, spec::BinarySubtype, Binary, RawDocumentBuf};
use mongomux_wire::{encode_op_msg, OpMsg};

fn view(body: RawDocumentBuf) -> CommandView {
    let bytes = encode_op_msg(1, 0, 0, body.as_bytes(), &[]);
    let msg = OpMsg::parse(&bytes).unwrap();
    CommandView::parse(&bytes, &msg).unwrap()
}

fn lsid() -> RawDocumentBuf {
    rawdoc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] } }
}

#[test]
fn reads_outside_transactions_may_run_twice() {
    let find = view(rawdoc! { "find": "c", "$db": "app" });
    assert!(may_run_twice(&find, false));
    assert!(may_run_twice(&find, true));
    let count = view(rawdoc! { "count": "c", "$db": "app", "lsid": lsid() });
    assert!(may_run_twice(&count, false));
}

#[test]
fn reads_that_write_never_run_twice() {
    let out = view(rawdoc! {
        "aggregate": "c", "pipeline": [{ "$out": "d" }], "cursor": {}, "$db": "app",
    });
    assert!(!may_run_twice(&out, true));
}

#[test]
fn a_write_runs_twice_only_as_a_retryable_write_on_a_server_that_deduplicates() {
    let retryable = view(rawdoc! {
        "insert": "c", "documents": [{ "_id": 1 }], "lsid": lsid(), "txnNumber": 4i64, "$db": "app",
    });
    assert!(may_run_twice(&retryable, true));
    assert!(
        !may_run_twice(&retryable, false),
        "FerretDB 1.x ignores txnNumber"
    );
    let plain =
        view(rawdoc! { "insert": "c", "documents": [{ "_id": 1 }], "lsid": lsid(), "$db": "app" });
    assert!(
        !may_run_twice(&plain, true),
        "no txnNumber: nothing deduplicates it"
    );
    let no_session =
        view(rawdoc! { "delete": "c", "deletes": [], "txnNumber": 4i64, "$db": "app" });
    assert!(!may_run_twice(&no_session, true));
}

#[test]
fn transactions_cursors_and_fire_and_forget_never_run_twice() {
    let in_txn = view(rawdoc! {
        "find": "c", "lsid": lsid(), "txnNumber": 1i64, "autocommit": false, "$db": "app",
    });
    assert!(!may_run_twice(&in_txn, true));
    let get_more = view(rawdoc! { "getMore": 5i64, "collection": "c", "$db": "app" });
    assert!(
        !may_run_twice(&get_more, true),
        "a batch read twice is a batch lost"
    );
    let kill = view(rawdoc! { "killCursors": "c", "cursors": [5i64], "$db": "app" });
    assert!(!may_run_twice(&kill, true));
    let bytes = encode_op_msg(
        1,
        0,
        2,
        rawdoc! { "find": "c", "$db": "app" }.as_bytes(),
        &[],
    );
    let msg = OpMsg::parse(&bytes).unwrap();
    let unacknowledged = CommandView::parse(&bytes, &msg).unwrap();
    assert!(!may_run_twice(&unacknowledged, true));
}
