//! Nothing a peer or a sync server can put into a record makes the CLI fail
//! to decode the daemon's answer (issue 18: a clock of 2^64 - 1 once made
//! every `vault list` fail with "is not an RFC 3339 timestamp"). Every value
//! the daemon copies from a pulled record body — times, revision numbers,
//! names, descriptions, tags, field names and values — goes through the
//! real frame encoder and decoder here with extreme values.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use vault_protocol::message::{
    RecordState, RecordSummary, RecordView, Response, ResponseFrame, RevisionInfo,
};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{CredentialType, SecretValue, frame};

fn any_time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        Just(((u64::MAX >> 16) / 1000) as i64),
        any::<i64>(),
    ]
    .prop_map(Timestamp)
}

fn any_text() -> impl Strategy<Value = String> {
    // Control characters, quotes, backslashes, non-BMP: all must round-trip.
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\"\\\\]{0,40}",
        Just(String::new())
    ]
}

fn summary() -> impl Strategy<Value = RecordSummary> {
    (
        any_text(),
        proptest::option::of(any_text()),
        proptest::collection::vec(any_text(), 0..4),
        any_time(),
        any_time(),
        proptest::option::of(any_time()),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, description, tags, created_at, updated_at, expires_at, revision, expired)| {
                RecordSummary {
                    name,
                    kind: CredentialType::Token,
                    description,
                    tags,
                    created_at,
                    updated_at,
                    expires_at,
                    expired,
                    state: RecordState::Ok,
                    revision,
                    // Extreme times in a check mark too.
                    checked: expired.then_some(vault_protocol::message::CheckMark {
                        at: created_at,
                        ok: false,
                    }),
                    last_used: None,
                }
            },
        )
}

fn round_trip(response: Response) -> Response {
    let bytes = frame::encode(&ResponseFrame::new(7, Ok(response))).unwrap();
    let back: ResponseFrame = frame::decode(&bytes[4..]).unwrap();
    back.into_result().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_listing_with_extreme_values_decodes(records in proptest::collection::vec(summary(), 1..5)) {
        let n = records.len();
        match round_trip(Response::Records { records, next: None }) {
            Response::Records { records, .. } => {
                prop_assert_eq!(records.len(), n);
                for r in records {
                    prop_assert!(r.created_at.in_range() && r.updated_at.in_range());
                    prop_assert!(r.expires_at.is_none_or(Timestamp::in_range));
                }
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn a_record_with_extreme_values_decodes(
        s in summary(),
        fields in proptest::collection::btree_map(any_text(), any_text(), 0..4),
    ) {
        let fields: BTreeMap<String, SecretValue> =
            fields.into_iter().map(|(k, v)| (k, SecretValue::new(v))).collect();
        let want: Vec<String> = fields.keys().cloned().collect();
        let view = RecordView {
            name: s.name,
            kind: s.kind,
            fields,
            description: s.description,
            tags: s.tags,
            created_at: s.created_at,
            updated_at: s.updated_at,
            expires_at: s.expires_at,
            expired: s.expired,
            revision: s.revision,
        };
        match round_trip(Response::Record(view)) {
            Response::Record(v) => {
                prop_assert_eq!(v.fields.keys().cloned().collect::<Vec<_>>(), want);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn a_history_with_extreme_values_decodes(
        times in proptest::collection::vec((any_time(), any::<u64>(), any_text()), 1..6),
    ) {
        let revisions: Vec<RevisionInfo> = times
            .into_iter()
            .map(|(updated_at, revision, device)| RevisionInfo {
                revision,
                updated_at,
                device,
                change: "set".into(),
            })
            .collect();
        let n = revisions.len();
        match round_trip(Response::History { revisions }) {
            Response::History { revisions } => prop_assert_eq!(revisions.len(), n),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}
