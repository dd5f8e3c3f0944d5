//! Byte-exact golden frames. The local protocol is frozen by these: a change
//! that breaks one needs a `PROTOCOL_VERSION` bump (and a note in
//! docs/protocol.md), not an edit of the expected bytes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use vault_protocol::message::{Completable, Completion, ListFilter, NewRecord};
use vault_protocol::timefmt::Timestamp;
use vault_protocol::{
    CredentialType, ErrorCode, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame,
    SecretValue, WireError, frame,
};

fn frame_of<T: serde::Serialize>(v: &T) -> Vec<u8> {
    frame::encode(v).unwrap().to_vec()
}

fn with_header(body: &str) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}

#[test]
fn protocol_version_is_pinned() {
    assert_eq!(PROTOCOL_VERSION, 1);
}

#[test]
fn hello_frame() {
    let hello = RequestFrame {
        id: 1,
        req: Request::Hello {
            protocol: 1,
            build: "0.1.0".into(),
        },
    };
    let expected = r#"{"id":1,"req":{"op":"hello","protocol":1,"build":"0.1.0"}}"#;
    assert_eq!(frame_of(&hello), with_header(expected));
    assert_eq!(&frame_of(&hello)[..4], &[0, 0, 0, 58]);
}

#[test]
fn get_request_frame() {
    let get = RequestFrame {
        id: 7,
        req: Request::Get {
            name: "aws-dev".into(),
        },
    };
    let expected = r#"{"id":7,"req":{"op":"get","name":"aws-dev"}}"#;
    assert_eq!(frame_of(&get), with_header(expected));
}

#[test]
fn add_request_frame() {
    let mut fields = BTreeMap::new();
    fields.insert("token".to_string(), SecretValue::from("t0k"));
    let add = RequestFrame {
        id: 2,
        req: Request::Add {
            record: NewRecord {
                name: "gh".into(),
                kind: CredentialType::Token,
                fields,
                description: None,
                tags: vec!["ci".into()],
                expires_at: Some(Timestamp(1_800_000_000)),
            },
        },
    };
    let expected = r#"{"id":2,"req":{"op":"add","record":{"name":"gh","type":"token","fields":{"token":"t0k"},"description":null,"tags":["ci"],"expires_at":"2027-01-15T08:00:00Z"}}}"#;
    assert_eq!(frame_of(&add), with_header(expected));
}

#[test]
fn list_request_decodes_with_defaults() {
    let body = r#"{"id":3,"req":{"op":"list"}}"#;
    let frame: RequestFrame = frame::decode(body.as_bytes()).unwrap();
    let Request::List { filter, after } = frame.req else {
        panic!("not a list")
    };
    assert!(after.is_none(), "no cursor: the first page");
    let ListFilter {
        kind,
        tag,
        expiring_within_secs,
        expired,
        used,
    } = filter;
    assert!(kind.is_none() && tag.is_none() && expiring_within_secs.is_none() && !expired && !used);
}

#[test]
fn error_frame() {
    let err = ResponseFrame::new(
        7,
        Err(WireError::new(
            ErrorCode::NotFound,
            "no credential named 'x': see 'vault list'",
        )),
    );
    let expected = r#"{"id":7,"err":{"code":"not_found","message":"no credential named 'x': see 'vault list'"}}"#;
    assert_eq!(frame_of(&err), with_header(expected));
}

#[test]
fn hello_response_frame() {
    let ok = ResponseFrame::new(
        1,
        Ok(Response::Hello {
            protocol: 1,
            build: "0.1.0".into(),
            pid: 42,
        }),
    );
    let expected = r#"{"id":1,"ok":{"kind":"hello","protocol":1,"build":"0.1.0","pid":42}}"#;
    assert_eq!(frame_of(&ok), with_header(expected));
}

#[test]
fn set_without_expiry_change_round_trips_as_no_change() {
    let set = Request::Set {
        name: "x".into(),
        fields: BTreeMap::new(),
        unset: vec![],
        description: None,
        tags: None,
        expires_at: None,
    };
    let json = serde_json::to_string(&set).unwrap();
    assert!(!json.contains("expires_at"), "{json}");
    let Request::Set { expires_at, .. } = serde_json::from_str(&json).unwrap() else {
        panic!()
    };
    assert!(expires_at.is_none());
    let clear = r#"{"op":"set","name":"x","expires_at":null}"#;
    let Request::Set { expires_at, .. } = serde_json::from_str(clear).unwrap() else {
        panic!()
    };
    assert_eq!(expires_at, Some(None));
}

#[test]
fn idle_timer_policy() {
    assert!(Request::Get { name: "x".into() }.extends_idle());
    assert!(!Request::Status.extends_idle());
    assert!(
        !Request::Hello {
            protocol: 1,
            build: String::new()
        }
        .extends_idle()
    );
    assert!(!Request::Lock.extends_idle());
}

#[test]
fn list_page_frames() {
    let req = RequestFrame {
        id: 4,
        req: Request::List {
            filter: ListFilter {
                tag: Some("ci".into()),
                ..ListFilter::default()
            },
            after: Some("gh".into()),
        },
    };
    let expected = r#"{"id":4,"req":{"op":"list","filter":{"type":null,"tag":"ci","expiring_within_secs":null,"expired":false},"after":"gh"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));

    let last_page = ResponseFrame::new(
        4,
        Ok(Response::Records {
            records: vec![],
            next: None,
        }),
    );
    let expected = r#"{"id":4,"ok":{"kind":"records","records":[]}}"#;
    assert_eq!(frame_of(&last_page), with_header(expected));
}

#[test]
fn responses_decode_whatever_the_key_order() {
    // As written: the tag first (the direct path).
    let record = r#"{"id":5,"ok":{"kind":"record","name":"gh","type":"token","fields":{"token":"t0k"},"description":null,"tags":[],"created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:00:00Z","expires_at":null,"expired":false,"revision":2}}"#;
    let frame: ResponseFrame = frame::decode(record.as_bytes()).unwrap();
    let Ok(Response::Record(view)) = frame.into_result() else {
        panic!("not a record")
    };
    assert_eq!(view.fields["token"].expose_secret(), "t0k");
    assert_eq!(view.revision, 2);

    // The tag last (another writer): the derived path, same result.
    let page = r#"{"id":6,"ok":{"records":[{"name":"gh","type":"token","description":null,"tags":["ci"],"created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:00:00Z","expires_at":null,"expired":false,"state":"ok","revision":1}],"next":"gh","kind":"records"}}"#;
    let frame: ResponseFrame = frame::decode(page.as_bytes()).unwrap();
    let Ok(Response::Records { records, next }) = frame.into_result() else {
        panic!("not records")
    };
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].tags, ["ci"]);
    assert_eq!(next.as_deref(), Some("gh"));

    let done: ResponseFrame = frame::decode(br#"{"id":7,"ok":{"kind":"done"}}"#).unwrap();
    assert!(matches!(done.into_result(), Ok(Response::Done)));
    let unknown = frame::decode::<ResponseFrame>(br#"{"id":8,"ok":{"kind":"no_such"}}"#);
    assert!(unknown.is_err(), "an unknown kind is a decode error");
}

#[test]
fn resolve_request_frame() {
    let req = RequestFrame {
        id: 9,
        req: Request::Resolve {
            names: vec!["aws-dev".into(), "wandb".into()],
        },
    };
    let expected = r#"{"id":9,"req":{"op":"resolve","names":["aws-dev","wandb"]}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let answer: ResponseFrame =
        frame::decode(br#"{"id":9,"ok":{"kind":"resolved","records":[]}}"#).unwrap();
    assert!(matches!(
        answer.into_result(),
        Ok(Response::Resolved { records }) if records.is_empty()
    ));
}

#[test]
fn remove_frames_with_and_without_force() {
    let plain = RequestFrame {
        id: 10,
        req: Request::Remove {
            name: "gh".into(),
            force: false,
        },
    };
    let expected = r#"{"id":10,"req":{"op":"remove","name":"gh"}}"#;
    assert_eq!(frame_of(&plain), with_header(expected));
    let forced = RequestFrame {
        id: 11,
        req: Request::Remove {
            name: "gh".into(),
            force: true,
        },
    };
    let expected = r#"{"id":11,"req":{"op":"remove","name":"gh","force":true}}"#;
    assert_eq!(frame_of(&forced), with_header(expected));
}

#[test]
fn emit_docker_frames_with_and_without_helper() {
    let auths = RequestFrame {
        id: 12,
        req: Request::EmitDocker {
            name: "ngc".into(),
            path: "/home/u/.docker/config.json".into(),
            force: false,
            helper: false,
            adopt: false,
        },
    };
    let expected = r#"{"id":12,"req":{"op":"emit_docker","name":"ngc","path":"/home/u/.docker/config.json","force":false}}"#;
    assert_eq!(frame_of(&auths), with_header(expected));
    let helper = RequestFrame {
        id: 13,
        req: Request::EmitDocker {
            name: "ngc".into(),
            path: "/home/u/.docker/config.json".into(),
            force: false,
            helper: true,
            adopt: false,
        },
    };
    let expected = r#"{"id":13,"req":{"op":"emit_docker","name":"ngc","path":"/home/u/.docker/config.json","force":false,"helper":true}}"#;
    assert_eq!(frame_of(&helper), with_header(expected));
}

#[test]
fn adoption_and_keep_frames() {
    // `vault import … --adopt` and `--undo`: the new fields appear only
    // when set, so every earlier frame is unchanged.
    let docker = RequestFrame {
        id: 16,
        req: Request::EmitDocker {
            name: "ngc".into(),
            path: "/home/u/.docker/config.json".into(),
            force: false,
            helper: true,
            adopt: true,
        },
    };
    let expected = r#"{"id":16,"req":{"op":"emit_docker","name":"ngc","path":"/home/u/.docker/config.json","force":false,"helper":true,"adopt":true}}"#;
    assert_eq!(frame_of(&docker), with_header(expected));
    let aws = RequestFrame {
        id: 17,
        req: Request::EmitAws {
            name: "aws-dev".into(),
            profile: "dev".into(),
            path: "/home/u/.aws/credentials".into(),
            force: false,
            process: Some("/usr/bin/vault".into()),
            config: None,
            adopt: true,
            sso_cache: None,
        },
    };
    let expected = r#"{"id":17,"req":{"op":"emit_aws","name":"aws-dev","profile":"dev","path":"/home/u/.aws/credentials","force":false,"process":"/usr/bin/vault","adopt":true}}"#;
    assert_eq!(frame_of(&aws), with_header(expected));
    let keep = RequestFrame {
        id: 18,
        req: Request::EmitRemove {
            id: "a1b2c3".into(),
            keep: true,
        },
    };
    let expected = r#"{"id":18,"req":{"op":"emit_remove","id":"a1b2c3","keep":true}}"#;
    assert_eq!(frame_of(&keep), with_header(expected));
    let back: RequestFrame =
        frame::decode(br#"{"id":19,"req":{"op":"emit_remove","id":"a1b2c3"}}"#).unwrap();
    assert!(matches!(back.req, Request::EmitRemove { keep: false, .. }));
}

#[test]
fn publish_frames() {
    use vault_protocol::message::{PublicationInfo, PublishState, RemoteKind};
    let add = RequestFrame {
        id: 20,
        req: Request::RemoteAdd {
            name: "osmo".into(),
            kind: RemoteKind::Osmo,
            url: "https://osmo.example".into(),
            token: SecretValue::from("pat"),
            replace: false,
        },
    };
    let expected = r#"{"id":20,"req":{"op":"remote_add","name":"osmo","kind":"osmo","url":"https://osmo.example","token":"pat"}}"#;
    assert_eq!(frame_of(&add), with_header(expected));
    let publish = RequestFrame {
        id: 21,
        req: Request::Publish {
            name: "team.ngc".into(),
            remote: "osmo".into(),
            remote_name: Some("ngc".into()),
        },
    };
    let expected =
        r#"{"id":21,"req":{"op":"publish","name":"team.ngc","remote":"osmo","remote_name":"ngc"}}"#;
    assert_eq!(frame_of(&publish), with_header(expected));
    let unpublish = RequestFrame {
        id: 22,
        req: Request::Unpublish {
            name: "team.ngc".into(),
            remote: None,
        },
    };
    let expected = r#"{"id":22,"req":{"op":"unpublish","name":"team.ngc"}}"#;
    assert_eq!(frame_of(&unpublish), with_header(expected));
    let answer = ResponseFrame::new(
        21,
        Ok(Response::Publications {
            publications: vec![PublicationInfo {
                remote: "osmo".into(),
                remote_name: "ngc".into(),
                name: Some("team.ngc".into()),
                cred_type: "REGISTRY".into(),
                state: PublishState::Failed,
                error: Some("the platform refused it (400): no".into()),
                pushed_revision: None,
            }],
        }),
    );
    let expected = r#"{"id":21,"ok":{"kind":"publications","publications":[{"remote":"osmo","remote_name":"ngc","name":"team.ngc","cred_type":"REGISTRY","state":"failed","error":"the platform refused it (400): no"}]}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
}

#[test]
fn approval_frames() {
    use vault_protocol::message::{ApprovalInfo, GatedField};
    let all = RequestFrame {
        id: 30,
        req: Request::Approvals { names: vec![] },
    };
    let expected = r#"{"id":30,"req":{"op":"approvals"}}"#;
    assert_eq!(frame_of(&all), with_header(expected));
    let approve = RequestFrame {
        id: 31,
        req: Request::Approve {
            name: "gh".into(),
            revision: 3,
        },
    };
    let expected = r#"{"id":31,"req":{"op":"approve","name":"gh","revision":3}}"#;
    assert_eq!(frame_of(&approve), with_header(expected));
    let answer = ResponseFrame::new(
        30,
        Ok(Response::Approvals {
            approvals: vec![ApprovalInfo {
                name: "gh".into(),
                kind: CredentialType::Token,
                revision: 3,
                device: Some("d1".into()),
                fields: vec![GatedField {
                    field: "refresh_command".into(),
                    value: SecretValue::from("gh auth token"),
                    meaning: "runs it".into(),
                }],
            }],
        }),
    );
    let expected = r#"{"id":30,"ok":{"kind":"approvals","approvals":[{"name":"gh","type":"token","revision":3,"device":"d1","fields":[{"field":"refresh_command","value":"gh auth token","meaning":"runs it"}]}]}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
    let refused = ResponseFrame::new(
        32,
        Err(WireError::new(
            ErrorCode::NotApproved,
            "run 'vault approve gh'",
        )),
    );
    let expected = r#"{"id":32,"err":{"code":"not_approved","message":"run 'vault approve gh'"}}"#;
    assert_eq!(frame_of(&refused), with_header(expected));
    assert_eq!(ErrorCode::NotApproved.exit_code(), 1);
}

#[test]
fn emitter_kinds_keep_their_strings_on_the_wire() {
    use vault_protocol::message::{EmitState, EmitterInfo, EmitterKind};
    let spelled = [
        "aws",
        "aws-process",
        "gcloud",
        "docker",
        "docker-helper",
        "file",
        "kube",
        "aws-sso",
        "aws-sso-token",
    ];
    assert_eq!(EmitterKind::ALL.len(), spelled.len());
    for (kind, text) in EmitterKind::ALL.into_iter().zip(spelled) {
        let info = EmitterInfo {
            id: "e1".into(),
            name: None,
            kind,
            path: "/p".into(),
            section: "s".into(),
            state: EmitState::Ok,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains(&format!(r#""type":"{text}""#)), "{json}");
        let back: EmitterInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back.kind, kind);
        assert_eq!(EmitterKind::parse(text), Some(kind));
        assert_eq!(kind.to_string(), text);
    }
    assert_eq!(EmitterKind::parse("nomad"), None);
}

#[test]
fn emitter_states_keep_their_strings_on_the_wire() {
    use vault_protocol::message::{EmitState, EmitterInfo, EmitterKind, Removed};
    let info = |state: EmitState| EmitterInfo {
        id: "e1".into(),
        name: Some("dev".into()),
        kind: EmitterKind::Aws,
        path: "/h/.aws/credentials".into(),
        section: "dev".into(),
        state,
    };
    let frame = ResponseFrame {
        id: 21,
        ok: Some(Response::Emitters {
            emitters: vec![info(EmitState::Expired(Removed::Section))],
        }),
        err: None,
    };
    let expected = r#"{"id":21,"ok":{"kind":"emitters","emitters":[{"id":"e1","name":"dev","type":"aws","path":"/h/.aws/credentials","section":"dev","state":"expired (section removed)"}]}}"#;
    assert_eq!(frame_of(&frame), with_header(expected));
    // Every state reads back as itself, and its text is what `vault emit
    // list --json` has always shown.
    for (state, text) in [
        (EmitState::Ok, "ok"),
        (EmitState::Drifted, "drifted"),
        (EmitState::Missing, "missing"),
        (
            EmitState::Expired(Removed::Section),
            "expired (section removed)",
        ),
        (EmitState::Expired(Removed::File), "expired (file removed)"),
        (
            EmitState::Expired(Removed::Entry),
            "expired (entry removed)",
        ),
        (EmitState::CredentialDeleted, "credential deleted"),
        (EmitState::CredentialUnreadable, "credential unreadable"),
        (
            EmitState::Unreadable("Permission denied".into()),
            "unreadable: Permission denied",
        ),
        (
            EmitState::Error("line 3: no '='".into()),
            "error: line 3: no '='",
        ),
        (EmitState::Removed, "removed"),
    ] {
        assert_eq!(state.to_string(), text);
        assert_eq!(EmitState::parse(text), state, "{text}");
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(json, serde_json::to_string(text).unwrap());
        assert_eq!(serde_json::from_str::<EmitState>(&json).unwrap(), state);
    }
    // A newer daemon's state is kept as written, and needs attention.
    let newer = EmitState::parse("quarantined");
    assert_eq!(newer, EmitState::Other("quarantined".into()));
    assert!(newer.needs_attention());
    assert!(!EmitState::Expired(Removed::File).needs_attention());
}

#[test]
fn otp_frames() {
    let req = RequestFrame {
        id: 11,
        req: Request::Otp {
            name: "github".into(),
        },
    };
    let expected = r#"{"id":11,"req":{"op":"otp","name":"github"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let answer = ResponseFrame {
        id: 11,
        ok: Some(Response::Otp {
            code: SecretValue::from("287082"),
            valid_for_secs: 17,
            period_secs: 30,
        }),
        err: None,
    };
    let expected =
        r#"{"id":11,"ok":{"kind":"otp","code":"287082","valid_for_secs":17,"period_secs":30}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
    let back: ResponseFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.into_result(),
        Ok(Response::Otp { code, valid_for_secs: 17, period_secs: 30 })
            if code.expose_secret() == "287082"
    ));
}

#[test]
fn eks_token_frames() {
    let req = RequestFrame {
        id: 22,
        req: Request::EksToken {
            name: "aws-dev".into(),
            cluster: "demo".into(),
            region: None,
        },
    };
    let expected = r#"{"id":22,"req":{"op":"eks_token","name":"aws-dev","cluster":"demo"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let regional = RequestFrame {
        id: 23,
        req: Request::EksToken {
            name: "aws-dev".into(),
            cluster: "demo".into(),
            region: Some("eu-west-1".into()),
        },
    };
    let expected = r#"{"id":23,"req":{"op":"eks_token","name":"aws-dev","cluster":"demo","region":"eu-west-1"}}"#;
    assert_eq!(frame_of(&regional), with_header(expected));
}

#[test]
fn console_url_frames() {
    let req = RequestFrame {
        id: 24,
        req: Request::ConsoleUrl {
            name: "aws-dev".into(),
            destination: None,
            region: None,
            duration_secs: None,
        },
    };
    let expected = r#"{"id":24,"req":{"op":"console_url","name":"aws-dev"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let full = RequestFrame {
        id: 25,
        req: Request::ConsoleUrl {
            name: "aws-dev".into(),
            destination: Some("https://console.aws.amazon.com/s3/".into()),
            region: Some("eu-west-1".into()),
            duration_secs: Some(7200),
        },
    };
    let expected = r#"{"id":25,"req":{"op":"console_url","name":"aws-dev","destination":"https://console.aws.amazon.com/s3/","region":"eu-west-1","duration_secs":7200}}"#;
    assert_eq!(frame_of(&full), with_header(expected));
}

#[test]
fn sso_frames() {
    let login = RequestFrame {
        id: 26,
        req: Request::SsoLogin {
            name: "aws-sso".into(),
        },
    };
    let expected = r#"{"id":26,"req":{"op":"sso_login","name":"aws-sso"}}"#;
    assert_eq!(frame_of(&login), with_header(expected));
    let wait = RequestFrame {
        id: 27,
        req: Request::SsoWait {
            name: "aws-sso".into(),
            user_code: "ABCD-EFGH".into(),
        },
    };
    let expected = r#"{"id":27,"req":{"op":"sso_wait","name":"aws-sso","user_code":"ABCD-EFGH"}}"#;
    assert_eq!(frame_of(&wait), with_header(expected));
    let device = ResponseFrame {
        id: 26,
        ok: Some(Response::SsoDevice {
            verification_uri: "https://device.sso.eu-west-1.amazonaws.com/".into(),
            verification_uri_complete: Some(
                "https://device.sso.eu-west-1.amazonaws.com/?user_code=ABCD-EFGH".into(),
            ),
            user_code: "ABCD-EFGH".into(),
            expires_at: Timestamp(1_796_000_000),
            issuer: None,
        }),
        err: None,
    };
    let roles = RequestFrame {
        id: 28,
        req: Request::SsoRoles {
            name: "aws-sso".into(),
        },
    };
    let expected = r#"{"id":28,"req":{"op":"sso_roles","name":"aws-sso"}}"#;
    assert_eq!(frame_of(&roles), with_header(expected));
    let listed = ResponseFrame {
        id: 28,
        ok: Some(Response::SsoRoles {
            roles: vec![vault_protocol::message::SsoRole {
                account_id: "111122223333".into(),
                account_name: "prod".into(),
                role_name: "ReadOnly".into(),
            }],
        }),
        err: None,
    };
    let expected = r#"{"id":28,"ok":{"kind":"sso_roles","roles":[{"account_id":"111122223333","account_name":"prod","role_name":"ReadOnly"}]}}"#;
    assert_eq!(frame_of(&listed), with_header(expected));
    let expected = r#"{"id":26,"ok":{"kind":"sso_device","verification_uri":"https://device.sso.eu-west-1.amazonaws.com/","verification_uri_complete":"https://device.sso.eu-west-1.amazonaws.com/?user_code=ABCD-EFGH","user_code":"ABCD-EFGH","expires_at":"2026-11-30T00:53:20Z"}}"#;
    assert_eq!(frame_of(&device), with_header(expected));
}

#[test]
fn gcp_token_frames() {
    let req = RequestFrame {
        id: 20,
        req: Request::GcpToken {
            name: "sa-dev".into(),
            scopes: vec![],
        },
    };
    let expected = r#"{"id":20,"req":{"op":"gcp_token","name":"sa-dev"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let scoped = RequestFrame {
        id: 21,
        req: Request::GcpToken {
            name: "sa-dev".into(),
            scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".into()],
        },
    };
    let expected = r#"{"id":21,"req":{"op":"gcp_token","name":"sa-dev","scopes":["https://www.googleapis.com/auth/devstorage.read_only"]}}"#;
    assert_eq!(frame_of(&scoped), with_header(expected));
    let answer = ResponseFrame {
        id: 21,
        ok: Some(Response::AccessToken {
            token: SecretValue::from("ya29.token"),
            expires_at: Timestamp(1_796_000_000),
        }),
        err: None,
    };
    let expected = r#"{"id":21,"ok":{"kind":"access_token","token":"ya29.token","expires_at":"2026-11-30T00:53:20Z"}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
    let back: ResponseFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.into_result(),
        Ok(Response::AccessToken { token, expires_at: Timestamp(1_796_000_000) })
            if token.expose_secret() == "ya29.token"
    ));
}

#[test]
fn gcp_subject_token_frames() {
    let req = RequestFrame {
        id: 22,
        req: Request::GcpSubjectToken {
            name: "wif-laptop".into(),
        },
    };
    let expected = r#"{"id":22,"req":{"op":"gcp_subject_token","name":"wif-laptop"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
}

#[test]
fn emit_file_frames() {
    // Without a program: the frame every build before --external-account sent.
    let plain = RequestFrame {
        id: 30,
        req: Request::EmitFile {
            name: "sa-dev".into(),
            kind: "gcloud".into(),
            path: Some("/home/me/.config/gcloud/application_default_credentials.json".into()),
            force: false,
            program: None,
        },
    };
    let expected = r#"{"id":30,"req":{"op":"emit_file","name":"sa-dev","kind":"gcloud","path":"/home/me/.config/gcloud/application_default_credentials.json","force":false}}"#;
    assert_eq!(frame_of(&plain), with_header(expected));
    let external = RequestFrame {
        id: 31,
        req: Request::EmitFile {
            name: "wif-laptop".into(),
            kind: "gcloud".into(),
            path: Some("/home/me/wif.json".into()),
            force: true,
            program: Some("/usr/bin/vault".into()),
        },
    };
    let expected = r#"{"id":31,"req":{"op":"emit_file","name":"wif-laptop","kind":"gcloud","path":"/home/me/wif.json","force":true,"program":"/usr/bin/vault"}}"#;
    assert_eq!(frame_of(&external), with_header(expected));
}

#[test]
fn complete_frames() {
    let req = RequestFrame {
        id: 12,
        req: Request::Complete {
            what: Completable::Field {
                name: "github".into(),
            },
            prefix: "to".into(),
        },
    };
    let expected =
        r#"{"id":12,"req":{"op":"complete","what":{"of":"field","name":"github"},"prefix":"to"}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let req = RequestFrame {
        id: 13,
        req: Request::Complete {
            what: Completable::Credential,
            prefix: String::new(),
        },
    };
    let expected = r#"{"id":13,"req":{"op":"complete","what":{"of":"credential"},"prefix":""}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let answer = ResponseFrame {
        id: 13,
        ok: Some(Response::Completions {
            items: vec![
                Completion {
                    value: "github".into(),
                    help: Some("token: personal".into()),
                },
                Completion {
                    value: "ci".into(),
                    help: None,
                },
            ],
        }),
        err: None,
    };
    let expected = r#"{"id":13,"ok":{"kind":"completions","items":[{"value":"github","help":"token: personal"},{"value":"ci"}]}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
    let back: ResponseFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.into_result(),
        Ok(Response::Completions { items }) if items.len() == 2 && items[1].help.is_none()
    ));
}

#[test]
fn emit_aws_frames_with_and_without_config() {
    let keys = RequestFrame {
        id: 14,
        req: Request::EmitAws {
            name: "dev".into(),
            profile: "dev".into(),
            path: "/home/u/.aws/credentials".into(),
            force: false,
            process: None,
            config: Some("/home/u/.aws/config".into()),
            adopt: false,
            sso_cache: None,
        },
    };
    let expected = r#"{"id":14,"req":{"op":"emit_aws","name":"dev","profile":"dev","path":"/home/u/.aws/credentials","force":false,"config":"/home/u/.aws/config"}}"#;
    assert_eq!(frame_of(&keys), with_header(expected));
    let back: RequestFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.req,
        Request::EmitAws { config: Some(c), process: None, .. } if c == "/home/u/.aws/config"
    ));
    // Without `config` (a CLI of before it, or --process): absent on the
    // wire, and read back as `None`.
    let process = RequestFrame {
        id: 15,
        req: Request::EmitAws {
            name: "dev".into(),
            profile: "dev".into(),
            path: "/home/u/.aws/config".into(),
            force: true,
            process: Some("/usr/bin/vault".into()),
            config: None,
            adopt: false,
            sso_cache: None,
        },
    };
    let expected = r#"{"id":15,"req":{"op":"emit_aws","name":"dev","profile":"dev","path":"/home/u/.aws/config","force":true,"process":"/usr/bin/vault"}}"#;
    assert_eq!(frame_of(&process), with_header(expected));
    let back: RequestFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.req,
        Request::EmitAws {
            config: None,
            sso_cache: None,
            ..
        }
    ));
    // `--sso` (docs/sso.md): the aws CLI's token cache directory.
    let sso = RequestFrame {
        id: 16,
        req: Request::EmitAws {
            name: "dev".into(),
            profile: "dev".into(),
            path: "/home/u/.aws/config".into(),
            force: false,
            process: None,
            config: None,
            adopt: false,
            sso_cache: Some("/home/u/.aws/sso/cache".into()),
        },
    };
    let expected = r#"{"id":16,"req":{"op":"emit_aws","name":"dev","profile":"dev","path":"/home/u/.aws/config","force":false,"sso_cache":"/home/u/.aws/sso/cache"}}"#;
    assert_eq!(frame_of(&sso), with_header(expected));
    let back: RequestFrame = frame::decode(expected.as_bytes()).unwrap();
    assert!(matches!(
        back.req,
        Request::EmitAws { sso_cache: Some(c), .. } if c == "/home/u/.aws/sso/cache"
    ));
}

#[test]
fn check_frames() {
    let req = RequestFrame {
        id: 12,
        req: Request::Check {
            names: vec!["aws-dev".into()],
            timeout_ms: Some(5000),
        },
    };
    let expected = r#"{"id":12,"req":{"op":"check","names":["aws-dev"],"timeout_ms":5000}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    // Every record, the daemon's limit: both fields left out.
    let all: RequestFrame = frame::decode(br#"{"id":1,"req":{"op":"check"}}"#).unwrap();
    assert!(matches!(
        all.req,
        Request::Check { names, timeout_ms: None } if names.is_empty()
    ));
    let answer = ResponseFrame {
        id: 12,
        ok: Some(Response::Checked {
            results: vec![vault_protocol::message::CheckResult {
                name: "aws-dev".into(),
                kind: vault_protocol::CredentialType::Aws,
                outcome: vault_protocol::message::CheckOutcome::Failed,
                detail: "no answer within 5 s".into(),
                checked_at: Timestamp(1_700_000_000),
                elapsed_ms: 5001,
            }],
        }),
        err: None,
    };
    let expected = r#"{"id":12,"ok":{"kind":"checked","results":[{"name":"aws-dev","type":"aws","outcome":"failed","detail":"no answer within 5 s","checked_at":"2023-11-14T22:13:20Z","elapsed_ms":5001}]}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
}

#[test]
fn audit_frames() {
    let req = RequestFrame {
        id: 13,
        req: Request::Audit {
            name: Some("gh".into()),
            since: Some(Timestamp(1_700_000_000)),
            after: Some(40),
            device: None,
            all_devices: false,
        },
    };
    let expected =
        r#"{"id":13,"req":{"op":"audit","name":"gh","since":"2023-11-14T22:13:20Z","after":40}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    // Other devices' synced entries (`[audit] sync`).
    let req = RequestFrame {
        id: 14,
        req: Request::Audit {
            name: None,
            since: None,
            after: None,
            device: Some("laptop-1".into()),
            all_devices: true,
        },
    };
    let expected = r#"{"id":14,"req":{"op":"audit","device":"laptop-1","all_devices":true}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let answer = ResponseFrame {
        id: 13,
        ok: Some(Response::Audit {
            entries: vec![vault_protocol::message::AuditEntry {
                seq: 41,
                at: Timestamp(1_700_000_000),
                name: Some("gh".into()),
                op: "get".into(),
                uid: 1000,
                client: vault_protocol::message::AuditProcess {
                    pid: 4242,
                    exe: Some("/usr/bin/vault".into()),
                    cmdline: "vault get gh".into(),
                },
                parents: vec![vault_protocol::message::AuditProcess {
                    pid: 4000,
                    exe: None,
                    cmdline: "bash".into(),
                }],
                device: None,
            }],
            problems: vec!["entry 3 is missing".into()],
            next: None,
        }),
        err: None,
    };
    let expected = r#"{"id":13,"ok":{"kind":"audit","entries":[{"seq":41,"at":"2023-11-14T22:13:20Z","name":"gh","op":"get","uid":1000,"client":{"pid":4242,"exe":"/usr/bin/vault","cmdline":"vault get gh"},"parents":[{"pid":4000,"cmdline":"bash"}]}],"problems":["entry 3 is missing"]}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
    let answer = ResponseFrame {
        id: 14,
        ok: Some(Response::Audit {
            entries: vec![vault_protocol::message::AuditEntry {
                seq: 7,
                at: Timestamp(1_700_000_000),
                name: None,
                op: "resolve".into(),
                uid: 1000,
                client: vault_protocol::message::AuditProcess {
                    pid: 99,
                    exe: None,
                    cmdline: String::new(),
                },
                parents: Vec::new(),
                device: Some("laptop-1".into()),
            }],
            problems: Vec::new(),
            next: Some(1),
        }),
        err: None,
    };
    let expected = r#"{"id":14,"ok":{"kind":"audit","entries":[{"seq":7,"at":"2023-11-14T22:13:20Z","name":null,"op":"resolve","uid":1000,"client":{"pid":99,"cmdline":""},"parents":[],"device":"laptop-1"}],"problems":[],"next":1}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
}

#[test]
fn audit_unshare_frames() {
    let req = RequestFrame {
        id: 15,
        req: Request::AuditUnshare,
    };
    assert_eq!(
        frame_of(&req),
        with_header(r#"{"id":15,"req":{"op":"audit_unshare"}}"#)
    );
    let answer = ResponseFrame {
        id: 15,
        ok: Some(Response::AuditUnshared {
            server: "https://vault.example.com".into(),
            removed: 3,
            through: 4,
        }),
        err: None,
    };
    let expected = r#"{"id":15,"ok":{"kind":"audit_unshared","server":"https://vault.example.com","removed":3,"through":4}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
}

#[test]
fn rotate_frames() {
    let req = RequestFrame {
        id: 14,
        req: Request::Rotate {
            name: "aws-dev".into(),
            fields: BTreeMap::new(),
            grace_secs: Some(86_400),
            verify_ms: Some(30_000),
            finish: false,
        },
    };
    let expected =
        r#"{"id":14,"req":{"op":"rotate","name":"aws-dev","grace_secs":86400,"verify_ms":30000}}"#;
    assert_eq!(frame_of(&req), with_header(expected));
    let mut fields = BTreeMap::new();
    fields.insert("token".to_string(), SecretValue::from("t1"));
    let generic = RequestFrame {
        id: 15,
        req: Request::Rotate {
            name: "gh".into(),
            fields,
            grace_secs: None,
            verify_ms: None,
            finish: false,
        },
    };
    let expected = r#"{"id":15,"req":{"op":"rotate","name":"gh","fields":{"token":"t1"}}}"#;
    assert_eq!(frame_of(&generic), with_header(expected));
    let finish: RequestFrame =
        frame::decode(br#"{"id":1,"req":{"op":"rotate","name":"a","finish":true}}"#).unwrap();
    assert!(matches!(
        finish.req,
        Request::Rotate { finish: true, grace_secs: None, verify_ms: None, ref fields, .. }
            if fields.is_empty()
    ));
    use vault_protocol::message::{RotateReport, RotateStep, StepOutcome};
    let answer = ResponseFrame {
        id: 14,
        ok: Some(Response::Rotated(RotateReport {
            name: "aws-dev".into(),
            kind: CredentialType::Aws,
            complete: false,
            steps: vec![
                RotateStep::new("create", StepOutcome::Ok, "IAM made access key AKIANEW"),
                RotateStep::new("deactivate", StepOutcome::Failed, "no answer"),
            ],
            revision: 4,
            live_key: Some("AKIANEW".into()),
            old_key: Some("AKIAOLD".into()),
            files: vec![],
            publications: vec![],
            running: vec![],
            next: Some("'vault rotate aws-dev --finish'".into()),
        })),
        err: None,
    };
    let expected = r#"{"id":14,"ok":{"kind":"rotated","name":"aws-dev","type":"aws","complete":false,"steps":[{"step":"create","outcome":"ok","detail":"IAM made access key AKIANEW"},{"step":"deactivate","outcome":"failed","detail":"no answer"}],"revision":4,"live_key":"AKIANEW","old_key":"AKIAOLD","files":[],"publications":[],"running":[],"next":"'vault rotate aws-dev --finish'"}}"#;
    assert_eq!(frame_of(&answer), with_header(expected));
}

#[test]
fn emit_kube_frames() {
    let eks = RequestFrame {
        id: 26,
        req: Request::EmitKube {
            name: "aws-dev".into(),
            path: "/home/u/.kube/config".into(),
            user: None,
            program: "/usr/bin/vault".into(),
            cluster: Some("prod".into()),
            region: Some("eu-west-1".into()),
            scopes: Vec::new(),
            force: false,
        },
    };
    let expected = r#"{"id":26,"req":{"op":"emit_kube","name":"aws-dev","path":"/home/u/.kube/config","program":"/usr/bin/vault","cluster":"prod","region":"eu-west-1","force":false}}"#;
    assert_eq!(frame_of(&eks), with_header(expected));
    let gke = RequestFrame {
        id: 27,
        req: Request::EmitKube {
            name: "gcp-dev".into(),
            path: "/home/u/.kube/config".into(),
            user: Some("me-gke".into()),
            program: "/usr/bin/vault".into(),
            cluster: None,
            region: None,
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
            force: true,
        },
    };
    let expected = r#"{"id":27,"req":{"op":"emit_kube","name":"gcp-dev","path":"/home/u/.kube/config","user":"me-gke","program":"/usr/bin/vault","scopes":["https://www.googleapis.com/auth/cloud-platform"],"force":true}}"#;
    assert_eq!(frame_of(&gke), with_header(expected));
}

#[test]
fn login_sso_frames() {
    let start = RequestFrame {
        id: 30,
        req: Request::LoginSso {
            url: "https://vault.example.com".into(),
        },
    };
    let expected = r#"{"id":30,"req":{"op":"login_sso","url":"https://vault.example.com"}}"#;
    assert_eq!(frame_of(&start), with_header(expected));
    let wait = RequestFrame {
        id: 31,
        req: Request::LoginSsoWait {
            url: "https://vault.example.com".into(),
            user_code: "WDJB-MJHT".into(),
        },
    };
    let expected = r#"{"id":31,"req":{"op":"login_sso_wait","url":"https://vault.example.com","user_code":"WDJB-MJHT"}}"#;
    assert_eq!(frame_of(&wait), with_header(expected));
}
