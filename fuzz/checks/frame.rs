//! `frame`: the local protocol's framing and message decoding
//! (protocol/src/frame.rs, protocol/src/message.rs), fed whatever a peer
//! could send on the socket.
//!
//! The input is a byte stream: 4-byte big-endian length + body, repeated.
//! Checked: `body_len` agrees with the header and the 1 MiB limit;
//! `read_body` returns exactly the announced bytes, refuses oversized
//! headers, and reports truncation; every body (and the input after its
//! first 4 bytes, whatever the header says) decodes as requests and
//! responses without panicking; whatever decodes re-encodes to a frame that
//! decodes to the same bytes again; the `ok` fast path of `ResponseFrame`
//! decodes the same `Response` as serde's derived decoder whenever the
//! derived one accepts it.

use std::io::Cursor;

use serde::Serialize;
use serde::de::DeserializeOwned;
use vault_protocol::WireError;
use vault_protocol::frame::{self, FrameError, MAX_FRAME};
use vault_protocol::message::{Request, RequestFrame, Response, ResponseFrame};

/// The whole check of one input.
pub fn check(data: &[u8]) {
    if let Some(header) = data.first_chunk::<4>() {
        let announced = u32::from_be_bytes(*header) as usize;
        match frame::body_len(*header) {
            Ok(n) => assert!(
                n == announced && n <= MAX_FRAME,
                "body_len({header:?}) = {n}"
            ),
            Err(FrameError::TooLarge(n)) => assert!(n == announced && n > MAX_FRAME),
            Err(e) => panic!("body_len({header:?}) failed with {e}"),
        }
    }

    let mut cursor = Cursor::new(data);
    let mut at = 0;
    let mut whole_input_was_one_frame = false;
    loop {
        let left = data.len() - at;
        let announced = data[at..]
            .first_chunk::<4>()
            .map(|h| u32::from_be_bytes(*h) as usize);
        match frame::read_body(&mut cursor) {
            Ok(body) => {
                let len = announced.expect("a body was read, so there was a header");
                assert!(len <= MAX_FRAME, "read a {len}-byte body past the limit");
                assert_eq!(&body[..], &data[at + 4..at + 4 + len], "read_body's bytes");
                whole_input_was_one_frame = at == 0 && 4 + len == data.len();
                at += 4 + len;
                check_body(&body);
            }
            Err(FrameError::Closed) => {
                assert!(left < 4, "Closed with {left} bytes left");
                break;
            }
            Err(FrameError::TooLarge(n)) => {
                assert!(announced == Some(n) && n > MAX_FRAME, "TooLarge({n})");
                break;
            }
            Err(FrameError::Io(e)) => {
                let len = announced.expect("a header was read");
                assert!(left - 4 < len, "{e} with a complete body of {len} bytes");
                break;
            }
            Err(e @ FrameError::Malformed(_)) => panic!("read_body parses nothing: {e}"),
        }
    }

    if !whole_input_was_one_frame {
        check_body(data.get(4..).unwrap_or_default());
    }
}

/// Decodes one body as everything either end of the socket reads.
pub fn check_body(body: &[u8]) {
    if let Ok(req) = frame::decode::<RequestFrame>(body) {
        let _ = req.req.extends_idle();
        round_trip(&req);
    }
    if let Ok(req) = frame::decode::<Request>(body) {
        round_trip(&req);
    }

    let fast = frame::decode::<ResponseFrame>(body);
    let derived = frame::decode::<derived::ResponseFrame>(body);
    if let Ok(slow) = &derived {
        // The fast path may accept more (e.g. a repeated "kind" after a
        // leading one), never less, and never something different.
        let fast = fast.as_ref().unwrap_or_else(|e| {
            panic!("the derived decoder accepts what the fast path refuses ({e})")
        });
        assert_eq!(fast.id, slow.id);
        assert_eq!(fast.err, slow.err);
        assert_eq!(
            json(&fast.ok),
            json(&slow.ok),
            "the fast path decodes another response"
        );
    }
    if let Ok(resp) = fast {
        round_trip(&resp);
        if let Err(e) = resp.into_result() {
            assert!((1..=7).contains(&e.code.exit_code()));
        }
    }
    if let Ok(resp) = frame::decode::<Response>(body) {
        round_trip(&resp);
    }
    if let Ok(err) = frame::decode::<WireError>(body) {
        round_trip(&err);
        assert!((1..=7).contains(&err.code.exit_code()));
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a decoded message serializes")
}

/// What was decoded encodes into a frame that decodes and encodes to the
/// same bytes (what the daemon sends, the CLI reads, and back).
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
    let first = match frame::encode(value) {
        Ok(f) => f,
        // Re-encoding may be longer than what was read (e.g. fractions of a
        // second dropped, but escapes written differently); a body that
        // close to the limit is not what this checks.
        Err(FrameError::TooLarge(_)) => return,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    };
    let len = frame::body_len(*first.first_chunk::<4>().expect("a header"))
        .expect("encode respects the limit");
    assert_eq!(len, first.len() - 4, "the header announces the body");
    let again: T = match frame::decode(&first[4..]) {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}: an encoded message does not decode: {}",
            String::from_utf8_lossy(&first[4..])
        ),
    };
    let second = frame::encode(&again).expect("encodes again");
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "encode(decode(encode(x))) != encode(x)"
    );
}

/// `ResponseFrame` as serde would derive it, without the fast path.
mod derived {
    use serde::Deserialize;
    use vault_protocol::WireError;
    use vault_protocol::message::Response;

    #[derive(Debug, Deserialize)]
    pub struct ResponseFrame {
        pub id: u64,
        #[serde(default)]
        pub ok: Option<Response>,
        #[serde(default)]
        pub err: Option<WireError>,
    }
}
