//! The disk format, frozen. `fixtures/v1/` holds a vault written by the first
//! release's `vault` (passphrase below): `identity.age` sealed with scrypt and
//! a schema-v1 `vault.db` with two records, one of them at revision 2. Every
//! later build must still open it, find records through the blind index and
//! decrypt every revision. A change that breaks this test needs a new schema
//! or body version and a migration, not a new fixture.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use vault_daemon::crypto::VaultKey;
use vault_daemon::record::{BODY_VERSION, RecordBody};
use vault_daemon::store::{SCHEMA_VERSION, Store};
use vault_protocol::CredentialType;

const PASSPHRASE: &str = "golden-passphrase";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name)
}

fn key() -> VaultKey {
    let sealed = std::fs::read(fixture("identity.age")).unwrap();
    VaultKey::open(&sealed, PASSPHRASE)
        .unwrap_or_else(|_| panic!("the frozen identity.age no longer opens"))
}

/// A private copy: opening may write WAL files next to the database.
fn store_copy() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    std::fs::copy(fixture("vault.db"), &db).unwrap();
    let store = Store::open(&db).unwrap();
    (dir, store)
}

#[test]
fn frozen_identity_opens_and_keeps_its_key_id() {
    let key = key();
    assert_eq!(
        key.recipient(),
        "age1g77x2c6mfxlzcvd33mexcdc3rf0kal28y4zvfftgj34us6sh3seqkvtpae"
    );
    assert_eq!(key.key_id(), "a3dedd0fb48be9cd02cb24f9d804d92c");
    let sealed = std::fs::read(fixture("identity.age")).unwrap();
    assert!(
        VaultKey::open(&sealed, "wrong").is_err(),
        "a wrong passphrase must not open it"
    );
}

#[test]
fn blind_index_is_frozen() {
    let key = key();
    assert_eq!(
        hex::encode_upper(key.name_mac("golden/token")),
        "C756BE3A7075CB4AA3AD7C09BB2B7A679C80E7405D7521AFB64AC361DCA70983"
    );
    assert_eq!(
        hex::encode_upper(key.name_mac("golden-aws")),
        "FE2E9A72513E8180ED967108BF11079F8225C4AE7B4EA95EF0E63198616018DA"
    );
}

#[test]
fn frozen_records_decrypt_with_every_revision() {
    let key = key();
    let (_dir, store) = store_copy();
    // The v1 fixture is migrated on open (v2 added the emitters table, v3
    // the sync bookkeeping, v4 remotes and publications, v5 the chain,
    // claims and refused entries of authenticated sync, v6 approvals, v7
    // where an AWS keys binding writes its region and the rendering
    // version of every binding, v8 health checks, v9 the audit log, v10
    // unfinished rotations, v11 kubeconfig bindings' arguments, v12 the
    // aws CLI's SSO bindings: kinds only, no table change, v13 other
    // devices' audit log segments, v14 their times and the runs of them
    // gone on purpose).
    assert_eq!(SCHEMA_VERSION, 14, "a new schema: check its migration here");
    assert!(store.emitters().unwrap().is_empty());
    assert!(store.checks().unwrap().is_empty());
    assert!(store.audit_rows().unwrap().is_empty());
    assert!(store.audit_segments(None).unwrap().is_empty());
    assert!(store.audit_gaps(None).unwrap().is_empty());
    assert!(store.rotations().unwrap().is_empty());
    assert!(!store.approved("any", "refresh_command", &[0; 32]).unwrap());
    assert!(store.remotes().unwrap().is_empty());
    assert!(store.publications(None).unwrap().is_empty());
    assert!(store.refused().unwrap().is_empty());
    assert!(store.claims().unwrap().is_empty());
    assert_eq!(store.chain("any").unwrap(), None);
    // v2 bodies add the sync stamp, v3 the MAC; v1 bodies (these) decode
    // without either.
    assert_eq!(
        BODY_VERSION, 3,
        "a new body version: freeze its JSON in v3_body_json_is_frozen's way"
    );
    assert_eq!(
        store.meta("key_id").unwrap().as_deref(),
        Some(key.key_id().as_str())
    );

    let row = store
        .find_live(&key.name_mac("golden/token"))
        .unwrap()
        .expect("golden/token is found through the blind index");
    assert_eq!(row.revision, 2);
    assert_eq!(row.kind, "token");
    let body = RecordBody::from_bytes(&key.decrypt(&row.body).unwrap(), &row.id).unwrap();
    assert!(body.sync.is_none(), "a v1 body has no sync stamp");
    assert!(
        store.unlogged_heads().unwrap().len() == 2,
        "records from before sync are enrolled at the first sync"
    );
    assert_eq!(body.name, "golden/token");
    assert_eq!(body.kind, CredentialType::Token);
    assert_eq!(body.description.as_deref(), Some("frozen v1 record"));
    assert_eq!(body.tags, ["golden"]);
    assert_eq!(body.fields["token"].expose_secret(), "golden-token-v2");

    let first = store.revision_body(&row.id, 1).unwrap().unwrap();
    let first = RecordBody::from_bytes(&key.decrypt(&first).unwrap(), &row.id).unwrap();
    assert_eq!(first.fields["token"].expose_secret(), "golden-token-value");
    let changes: Vec<String> = store
        .revisions(&row.id)
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {}", r.revision, r.change))
        .collect();
    assert_eq!(changes, ["2 set", "1 add"]);

    let aws = store
        .find_live(&key.name_mac("golden-aws"))
        .unwrap()
        .unwrap();
    let body = RecordBody::from_bytes(&key.decrypt(&aws.body).unwrap(), &aws.id).unwrap();
    assert_eq!(body.kind, CredentialType::Aws);
    assert_eq!(body.fields["access_key_id"].expose_secret(), "AKIAGOLDEN");
    assert_eq!(
        body.fields["secret_access_key"].expose_secret(),
        "golden-secret-key"
    );
    assert_eq!(body.fields["region"].expose_secret(), "eu-west-1");
}

#[test]
fn a_body_filed_under_another_record_is_refused() {
    let key = key();
    let (_dir, store) = store_copy();
    let token = store
        .find_live(&key.name_mac("golden/token"))
        .unwrap()
        .unwrap();
    let aws = store
        .find_live(&key.name_mac("golden-aws"))
        .unwrap()
        .unwrap();
    let swapped = key.decrypt(&aws.body).unwrap();
    assert!(RecordBody::from_bytes(&swapped, &token.id).is_err());
}

/// The v2 body (with its sync stamp) as written, frozen.
const V2_BODY: &str = r#"{"v":2,"id":"0123456789abcdef0123456789abcdef","name":"golden/token","type":"token","description":null,"tags":["golden"],"fields":{"token":"golden-token-v3"},"expires_at":"2030-01-02T03:04:05Z","sync":{"device":"d1","index":7,"clock":123456789,"parents":[{"device":"d0","index":3}],"change":"set"}}"#;

#[test]
fn v2_body_json_is_frozen() {
    let body = RecordBody::from_bytes(V2_BODY.as_bytes(), "0123456789abcdef0123456789abcdef")
        .expect("the frozen v2 body decodes");
    let stamp = body.sync.as_ref().unwrap();
    assert_eq!((stamp.device.as_str(), stamp.index), ("d1", 7));
    assert_eq!(stamp.clock, 123_456_789);
    assert_eq!(stamp.parents.len(), 1);
    assert!(!stamp.deleted);
    assert_eq!(String::from_utf8_lossy(&body.to_bytes()), V2_BODY);
    let tomb = V2_BODY.replace(r#""change":"set"}"#, r#""change":"remove","deleted":true}"#);
    let body = RecordBody::parse(tomb.as_bytes()).unwrap();
    assert!(body.sync.as_ref().unwrap().deleted);
    assert_eq!(String::from_utf8_lossy(&body.to_bytes()), tomb);
}

/// The v3 body as written: stamp with vault, prev and seen, and the MAC
/// under the frozen identity's entry key as the last member.
const V3_BODY: &str = r#"{"v":3,"id":"0123456789abcdef0123456789abcdef","name":"golden/token","type":"token","description":null,"tags":["golden"],"fields":{"token":"golden-token-v3"},"expires_at":"2030-01-02T03:04:05Z","sync":{"device":"d1","index":7,"clock":123456789,"parents":[{"device":"d0","index":3}],"change":"set","vault":"0f0e0d0c0b0a09080706050403020100","prev":"PREV","seen":{"d0":3,"d2":9}}}"#;

#[test]
fn v3_body_json_and_its_mac_are_frozen() {
    let key = key();
    let prev = "ab".repeat(32);
    let unsigned = V3_BODY.replace("PREV", &prev);
    let body = RecordBody::parse(unsigned.as_bytes()).unwrap();
    let stamp = body.sync.as_ref().unwrap();
    assert_eq!(stamp.vault, "0f0e0d0c0b0a09080706050403020100");
    assert_eq!(stamp.seen.len(), 2);
    assert_eq!(String::from_utf8_lossy(&body.to_bytes()), unsigned);
    let (signed, mac) = body.to_signed_bytes(|b| key.entry_mac(b));
    let text = String::from_utf8(signed.to_vec()).unwrap();
    assert_eq!(
        text,
        format!(
            "{},\"mac\":\"{FROZEN_MAC}\"}}",
            &unsigned[..unsigned.len() - 1]
        )
    );
    assert_eq!(hex::encode(mac), FROZEN_MAC);
    // The signed part comes back exactly, and verifies; one changed byte
    // anywhere does not.
    let (part, tag) = RecordBody::signed_part(text.as_bytes()).unwrap();
    assert_eq!(&part[..], unsigned.as_bytes());
    assert!(key.verify_entry(&part, &tag));
    let parsed = RecordBody::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed.mac.as_deref(), Some(FROZEN_MAC));
    let tampered = text.replace("golden-token-v3", "golden-token-v4");
    let (part, tag) = RecordBody::signed_part(tampered.as_bytes()).unwrap();
    assert!(!key.verify_entry(&part, &tag));
    assert!(RecordBody::signed_part(unsigned.as_bytes()).is_none());
}

const FROZEN_MAC: &str = "579c23313567e7b5f40711db3895194218a86a0cd7ffb70da75c3020c50f8343";
