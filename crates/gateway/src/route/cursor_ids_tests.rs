use super::*;
use mongomux_auth::Secret;

fn shared() -> SessionKey {
    SessionKey::parse(&Secret::new("00112233445566778899aabbccddeeff")).unwrap()
}

fn session(lsid: &[u8]) -> IdCipher {
    IdCipher::for_owner(&shared(), IdOwner::Session(lsid))
}

const EDGES: [i64; 8] = [1, 2, 3, i64::MAX, i64::MAX - 1, -1, -2, i64::MIN];

#[test]
fn hide_and_reveal_are_inverses_and_keep_the_sign() {
    let c = session(b"lsid-a");
    let random = (0..2000).map(|_| rand::random::<i64>());
    for id in EDGES.into_iter().chain(random) {
        let seen = c.hide(id);
        assert_eq!(c.reveal(seen), id, "round trip of {id}");
        assert_eq!(c.hide(c.reveal(id)), id, "the other way round, {id}");
        assert_eq!(seen.signum(), id.signum(), "{id} -> {seen}");
    }
    assert_eq!(c.hide(0), 0, "0 is no cursor");
    assert_eq!(c.reveal(0), 0);
}

#[test]
fn small_sequential_ids_are_scattered() {
    let c = session(b"lsid-a");
    let hidden: Vec<i64> = (1..=1000).map(|id| c.hide(id)).collect();
    let mut distinct = hidden.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), hidden.len(), "a permutation");
    assert!(hidden.iter().all(|&h| h > 0));
    // Sequential upstream ids give ids all over the positive range, not neighbours.
    let near = hidden
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) < 1 << 40)
        .count();
    assert!(near < 5, "{near} neighbouring pairs stayed close");
}

#[test]
fn neighbours_of_a_hidden_id_reveal_to_unrelated_ids() {
    let c = session(b"lsid-a");
    // (The full 1..4096 of the attack runs against FerretDB in test_cross_gateway.py.)
    for upstream in [1_i64, 17, 1_804_164_985, i64::MAX, -5] {
        let seen = c.hide(upstream);
        for d in 1..=1024_i64 {
            for probe in [seen ^ d, seen.wrapping_add(d), seen.wrapping_sub(d)] {
                let named = c.reveal(probe);
                // A PRP sends each probe to a random id: within 2^32 of the real one with
                // probability about 2^-30, so a hit here means the ids leak structure.
                assert!(
                    named.abs_diff(upstream) > 1 << 32,
                    "{probe} (from {seen}, d {d}) names {named}, near {upstream}"
                );
            }
        }
    }
}

#[test]
fn every_gateway_with_the_key_agrees_and_no_other_owner_does() {
    let (a, b) = (shared(), shared());
    let upstream = 1_804_164_985;
    let seen = IdCipher::for_owner(&a, IdOwner::Session(b"lsid-a")).hide(upstream);
    assert_ne!(seen, upstream);
    let elsewhere = IdCipher::for_owner(&b, IdOwner::Session(b"lsid-a"));
    assert_eq!(elsewhere.reveal(seen), upstream, "same key, same owner");
    let other = IdCipher::for_owner(&b, IdOwner::Session(b"lsid-b"));
    assert_ne!(other.reveal(seen), upstream);
    let conn = |process: u8, connection| IdOwner::Connection {
        process: [process; 12],
        connection,
    };
    let owners = [
        IdCipher::for_owner(&a, IdOwner::Session(b"lsid-a")),
        IdCipher::for_owner(&a, IdOwner::Session(b"lsid-b")),
        IdCipher::for_owner(&a, conn(1, 7)),
        IdCipher::for_owner(&a, conn(2, 7)),
        IdCipher::for_owner(&a, conn(1, 8)),
    ];
    // Different owners, different permutations: of 100 ids, none maps alike.
    for (i, x) in owners.iter().enumerate() {
        for y in &owners[i + 1..] {
            let same = (1..=100).filter(|&id| x.hide(id) == y.hide(id)).count();
            assert_eq!(same, 0, "{x:?} and {y:?} agree on {same} ids");
        }
    }
    // Another deployment's key: another permutation of the same owner.
    let foreign = SessionKey::parse(&Secret::new("ffeeddccbbaa99887766554433221100")).unwrap();
    let theirs = IdCipher::for_owner(&foreign, IdOwner::Session(b"lsid-a"));
    assert_ne!(theirs.reveal(seen), upstream);
}

#[test]
fn without_a_configured_key_ids_pass_through() {
    let drawn = SessionKey::generate();
    let c = IdCipher::for_owner(&drawn, IdOwner::Session(b"lsid-a"));
    for id in EDGES.into_iter().chain([0, 42]) {
        assert_eq!((c.hide(id), c.reveal(id)), (id, id));
    }
    assert_eq!(IdCipher::identity().hide(42), 42);
    assert_eq!(format!("{c:?}"), "IdCipher { keyed: false, .. }");
}

/// What hiding and revealing cost, printed (`cargo test ... cursor_ids -- --nocapture`); in a
/// debug build, so the figure is an upper bound. The bound asserted only catches a cipher
/// gone pathological (a walk that does not end quickly).
#[test]
fn cost_per_call() {
    let key = shared();
    let lsid = [7u8; 40];
    let n = 2000;
    let start = std::time::Instant::now();
    let mut sink = 0i64;
    for id in 1..=n {
        let c = IdCipher::for_owner(&key, IdOwner::Session(&lsid));
        sink ^= c.reveal(c.hide(id));
    }
    let per_pair = start.elapsed() / n as u32;
    let c = session(&lsid);
    let start = std::time::Instant::now();
    for id in 1..=n {
        sink ^= c.reveal(c.hide(id));
    }
    let per_pair_keyed = start.elapsed() / n as u32;
    println!(
        "cursor ids: derive + hide + reveal {per_pair:?}; hide + reveal with the owner's key \
         derived {per_pair_keyed:?} (this build's profile; {sink})"
    );
    assert!(
        per_pair < std::time::Duration::from_millis(5),
        "{per_pair:?}"
    );
}
