//! `agent_message`: the SSH agent's framing and message parser
//! (daemon/src/agent.rs), fed whatever a client could send on
//! `ssh-agent.sock`.
//!
//! The input is a byte stream: 4-byte big-endian length + body, repeated.
//! Checked: `message_len` agrees with the header and the 256 KiB bound;
//! every body, and the whole input taken as one body, parses or is refused
//! without panicking; a parsed sign request re-encodes to the very body it
//! came from; a parsed `ssh-add` key either becomes the fields of an `ssh`
//! credential whose key loads again with the same public blob, or is
//! refused; its derived credential name is always a valid name; and no
//! `Debug` of a parsed request shows the key.

use vault_daemon::agent::{self, AgentRequest, MAX_MESSAGE};

/// The whole check of one input.
pub fn check(data: &[u8]) {
    if let Some(header) = data.first_chunk::<4>() {
        let announced = u32::from_be_bytes(*header) as usize;
        match agent::message_len(*header) {
            Some(n) => assert!(n == announced && (1..=MAX_MESSAGE).contains(&n)),
            None => assert!(announced == 0 || announced > MAX_MESSAGE),
        }
    }
    let mut rest = data;
    while let Some(header) = rest.first_chunk::<4>() {
        let Some(len) = agent::message_len(*header) else {
            break;
        };
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        check_body(body);
        rest = &rest[4 + len..];
    }
    check_body(data);
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn check_body(body: &[u8]) {
    let Ok(req) = agent::parse(body) else {
        return;
    };
    match req {
        AgentRequest::Identities => assert_eq!(body, [11]),
        AgentRequest::Sign {
            ref key_blob,
            ref data,
            flags,
        } => {
            let mut again = vec![13];
            string(&mut again, key_blob);
            string(&mut again, data);
            again.extend_from_slice(&flags.to_be_bytes());
            assert_eq!(again, body, "a sign request re-encodes to its body");
        }
        AgentRequest::Add(new) => {
            assert!(
                !format!("{new:?}").contains("private"),
                "Debug of an added key shows only what is not secret"
            );
            let name = agent::name_for(&new.comment);
            assert!(
                vault_protocol::validate_name(&name).is_ok(),
                "{name:?} from {:?}",
                new.comment
            );
            let comment = new.comment.clone();
            if let Ok((key, fields)) = agent::stored_fields(*new) {
                let stored = fields["private_key"].expose_secret();
                let again = agent::load_key(&comment, stored).expect("a stored key loads again");
                assert_eq!(again.blob, key.blob);
                assert!(
                    vault_protocol::credential::validate_fields(
                        vault_protocol::CredentialType::Ssh,
                        &fields
                    )
                    .is_ok(),
                    "the stored fields are a valid ssh credential"
                );
            }
        }
        AgentRequest::Refused(kind) => assert_eq!(body.first(), Some(&kind)),
    }
}
