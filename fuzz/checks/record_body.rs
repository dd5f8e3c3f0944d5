//! `record_body`: `vault_daemon::record::RecordBody::from_bytes`, the
//! decoding of a record body after decryption. The input is the plaintext
//! body; the expected record id is the body's own `id` when it has one.
//!
//! Checked: no panic; a body that decodes has `v <= BODY_VERSION` and the
//! expected id, and is refused under any other id; `to_bytes` of it decodes
//! again to an equal body, and `to_bytes` of that is the same bytes.

use vault_daemon::record::{BODY_VERSION, RecordBody};
use vault_protocol::credential;

/// The whole check of one input.
pub fn check(data: &[u8]) {
    let id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "0123456789abcdef".to_owned());
    let Ok(body) = RecordBody::from_bytes(data, &id) else {
        return;
    };
    assert!(body.v <= BODY_VERSION, "a body of v{} was accepted", body.v);
    assert_eq!(body.id, id);
    assert!(
        RecordBody::from_bytes(data, &format!("{id}x")).is_err(),
        "a body was accepted under another record's id"
    );
    // What the engine does with a body it loaded must not panic either.
    let _ = credential::validate_name(&body.name);
    let _ = credential::validate_fields(body.kind, &body.fields);

    let bytes = body.to_bytes();
    let again = match RecordBody::from_bytes(&bytes, &id) {
        Ok(b) => b,
        Err(e) => panic!(
            "{e}: a body written by to_bytes does not decode: {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again.v, body.v);
    assert_eq!(again.id, body.id);
    assert_eq!(again.name, body.name);
    assert_eq!(again.kind, body.kind);
    assert_eq!(again.description, body.description);
    assert_eq!(again.tags, body.tags);
    assert!(again.fields == body.fields, "the fields changed");
    assert_eq!(again.expires_at, body.expires_at);
    assert_eq!(again.sync, body.sync);
    assert_eq!(
        String::from_utf8_lossy(&again.to_bytes()),
        String::from_utf8_lossy(&bytes),
        "to_bytes is not a fixpoint"
    );
}
