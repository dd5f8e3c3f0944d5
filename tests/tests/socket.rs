//! Hostile bytes on the daemon's socket (docs/protocol.md): an oversized frame, random
//! bytes, malformed JSON, a stalled client. The daemon answers an error frame
//! or closes that connection, and keeps serving everyone else — the same
//! daemon process, not a restarted one.

// Helper fns of a test report failure by panicking.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vault_e2e::{VaultHome, hello};
use vault_protocol::ErrorCode;
use vault_protocol::frame::{self, FrameError, MAX_FRAME};
use vault_protocol::message::ResponseFrame;

/// How the daemon ended a hostile connection.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// An error frame with this code (and then, maybe, a close).
    ErrorFrame(ErrorCode),
    /// Closed or reset without an answer.
    Closed,
}

/// Reads what the daemon does after the hostile bytes. Fails on a hang (no
/// answer and no close within the socket timeout) or a non-error answer.
fn outcome(stream: &mut UnixStream) -> Outcome {
    match frame::read::<_, ResponseFrame>(stream) {
        Ok(resp) => {
            let err = resp
                .err
                .unwrap_or_else(|| panic!("the daemon accepted hostile bytes: ok={:?}", resp.ok));
            assert!(!err.message.is_empty());
            Outcome::ErrorFrame(err.code)
        }
        Err(FrameError::Closed) => Outcome::Closed,
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
            ) =>
        {
            Outcome::Closed
        }
        Err(FrameError::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            panic!("the daemon neither answered nor closed the connection within 10 s")
        }
        Err(e) => panic!("unexpected reply to hostile bytes: {e}"),
    }
}

/// After an error frame the connection must be closed (docs/protocol.md).
fn assert_closed_after(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the daemon kept talking after the error frame ({n} more bytes)"),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("connection not closed after the error frame: {e}"),
    }
}

/// Writes `bytes` from a thread (the daemon may stop reading and close), so
/// the test can read the answer meanwhile.
fn send_in_background(stream: &UnixStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        // EPIPE/ECONNRESET are expected once the daemon gives up on us.
        let _ = w.write_all(&bytes);
    })
}

fn ready_vault() -> (VaultHome, u32) {
    let vh = VaultHome::new();
    vh.init();
    let f = vh.at_file("v", &vault_e2e::secret("sock"));
    vh.vault(["add", "sock-rec", "--type", "token", &format!("token={f}")])
        .ok();
    let pid = vh.daemon_pid().expect("daemon answers Hello");
    (vh, pid)
}

/// The daemon that answered before still answers, and the CLI works.
fn assert_still_serving(vh: &VaultHome, pid: u32) {
    assert_eq!(
        vh.daemon_pid(),
        Some(pid),
        "the same daemon (pid {pid}) must keep serving after hostile input"
    );
    let list = vh.vault(["list", "--format", "json"]).ok().json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

fn two_mib_frame() -> Vec<u8> {
    let len = 2 * 1024 * 1024usize;
    let mut bytes = (len as u32).to_be_bytes().to_vec();
    // A body that would be valid JSON if it were allowed, to show the size
    // alone is refused.
    let mut body = format!(
        "{{\"id\":9,\"req\":{{\"op\":\"get\",\"name\":\"{}",
        "a".repeat(len)
    );
    body.truncate(len - 4);
    body.push_str("\"}}");
    bytes.extend_from_slice(body.as_bytes());
    bytes.resize(4 + len, b' ');
    bytes
}

#[test]
fn two_mib_frame_before_hello() {
    let (vh, pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    let writer = send_in_background(&s, two_mib_frame());
    let got = outcome(&mut s);
    if let Outcome::ErrorFrame(code) = got {
        assert_eq!(code, ErrorCode::BadFrame);
        assert_closed_after(&mut s);
    }
    drop(s);
    writer.join().unwrap();
    assert_still_serving(&vh, pid);
}

#[test]
fn two_mib_frame_after_hello() {
    let (vh, pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    hello(&mut s).unwrap();
    let writer = send_in_background(&s, two_mib_frame());
    let got = outcome(&mut s);
    if let Outcome::ErrorFrame(code) = got {
        assert_eq!(code, ErrorCode::BadFrame);
        assert_closed_after(&mut s);
    }
    drop(s);
    writer.join().unwrap();
    assert_still_serving(&vh, pid);
}

#[test]
fn header_just_over_the_limit_is_refused_without_a_body() {
    let (vh, pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    // Announce MAX_FRAME + 1 and send nothing more: the daemon must refuse on
    // the header alone, not wait for a megabyte that never comes.
    s.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .unwrap();
    let got = outcome(&mut s);
    if let Outcome::ErrorFrame(code) = got {
        assert_eq!(code, ErrorCode::BadFrame);
    }
    drop(s);
    assert_still_serving(&vh, pid);
}

#[test]
fn random_bytes_on_the_socket() {
    let (vh, pid) = ready_vault();
    for round in 0..5 {
        let mut s = vh.connect().unwrap();
        if round % 2 == 1 {
            hello(&mut s).unwrap();
        }
        let writer = send_in_background(&s, vault_e2e::random_bytes(64 * 1024));
        let got = outcome(&mut s);
        if let Outcome::ErrorFrame(code) = got {
            assert_eq!(code, ErrorCode::BadFrame, "round {round}");
        }
        drop(s);
        writer.join().unwrap();
    }
    assert_still_serving(&vh, pid);
}

#[test]
fn malformed_json_gets_an_error_frame_then_close() {
    let (vh, pid) = ready_vault();
    let bodies: Vec<Vec<u8>> = vec![
        vault_e2e::random_bytes(1000),
        b"{\"id\":7,\"req\":{\"op\":\"no_such_op\"}}".to_vec(),
        b"{\"id\":7}".to_vec(),
        b"[]".to_vec(),
        b"".to_vec(),
        b"{\"id\":7,\"req\":{\"op\":\"get\",\"name\":".to_vec(),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        for with_hello in [false, true] {
            let mut s = vh.connect().unwrap();
            if with_hello {
                hello(&mut s).unwrap();
            }
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            s.write_all(&bytes).unwrap();
            match outcome(&mut s) {
                Outcome::ErrorFrame(code) => {
                    assert!(
                        matches!(code, ErrorCode::BadFrame | ErrorCode::Usage),
                        "body {i} (hello: {with_hello}): code {code:?}"
                    );
                    assert_closed_after(&mut s);
                }
                Outcome::Closed => panic!(
                    "body {i} (hello: {with_hello}): a malformed frame must get an error reply \
                     before the close (docs/protocol.md), got a bare close"
                ),
            }
        }
    }
    assert_still_serving(&vh, pid);
}

#[test]
fn data_request_before_hello_is_refused() {
    let (vh, pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    let resp = vault_e2e::request(
        &mut s,
        3,
        vault_protocol::Request::Get {
            name: "sock-rec".to_owned(),
        },
    );
    match resp {
        Ok(frame) => {
            assert!(
                frame.ok.is_none(),
                "a Get before Hello was answered: {:?}",
                frame.ok
            );
        }
        Err(FrameError::Closed) => {}
        Err(FrameError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("unexpected: {e}"),
    }
    drop(s);
    assert_still_serving(&vh, pid);
}

#[test]
fn stalled_and_truncated_clients_do_not_block_others() {
    let (vh, pid) = ready_vault();
    // One client sends half a header and waits; another announces 100 bytes,
    // sends 10 and waits; a third connects and says nothing.
    let mut half = vh.connect().unwrap();
    half.write_all(&[0, 0]).unwrap();
    let mut short = vh.connect().unwrap();
    hello(&mut short).unwrap();
    short.write_all(&100u32.to_be_bytes()).unwrap();
    short.write_all(b"{\"id\":1,\"r").unwrap();
    let silent = vh.connect().unwrap();
    // Meanwhile the CLI is served promptly.
    let list = vh.vault(["list", "--format", "json"]);
    list.ok();
    assert!(
        list.elapsed < Duration::from_secs(5),
        "list took {:?} while other clients stalled",
        list.elapsed
    );
    assert_eq!(vh.daemon_pid(), Some(pid));
    // A client that disconnects mid-frame does not hurt the daemon.
    drop(short);
    drop(half);
    drop(silent);
    assert_still_serving(&vh, pid);
}

#[test]
fn many_requests_on_one_connection_keep_their_ids() {
    let (vh, _pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    hello(&mut s).unwrap();
    for id in [2u64, 99, 7, u64::MAX] {
        let resp = vault_e2e::request(
            &mut s,
            id,
            vault_protocol::Request::Get {
                name: "sock-rec".to_owned(),
            },
        )
        .unwrap();
        assert_eq!(resp.id, id);
        assert!(resp.ok.is_some(), "{:?}", resp.err);
    }
    let resp = vault_e2e::request(
        &mut s,
        5,
        vault_protocol::Request::Get {
            name: "missing".to_owned(),
        },
    )
    .unwrap();
    assert_eq!(resp.id, 5);
    assert_eq!(resp.err.map(|e| e.code), Some(ErrorCode::NotFound));
}

#[test]
fn version_mismatch_tells_the_user_to_restart() {
    let (vh, pid) = ready_vault();
    let mut s = vh.connect().unwrap();
    let resp = vault_e2e::request(
        &mut s,
        1,
        vault_protocol::Request::Hello {
            protocol: vault_protocol::PROTOCOL_VERSION + 1,
            build: "0.0.0-e2e".to_owned(),
        },
    );
    match resp {
        Ok(frame) => {
            let err = frame.err.expect("a mismatched Hello is refused");
            assert_eq!(err.code, ErrorCode::VersionMismatch);
            assert!(
                err.message.contains("vault daemon restart"),
                "{}",
                err.message
            );
        }
        Err(e) => panic!("expected a version_mismatch error frame, got {e}"),
    }
    drop(s);
    assert_still_serving(&vh, pid);
}

/// `n` connections; every other one (or each, with `all_greeted`) has said
/// `hello`.
fn crowd(vh: &VaultHome, n: usize, all_greeted: bool) -> Vec<UnixStream> {
    (0..n)
        .map(|i| {
            let mut s = vh.connect().unwrap();
            if all_greeted || i % 2 == 0 {
                hello(&mut s).unwrap();
            }
            s
        })
        .collect()
}

/// More silent clients than the daemon has connection slots (256), each
/// greeted (so no hello timeout frees a slot): the daemon closes the one
/// idle longest to make room, so the CLI is still served.
#[test]
fn silent_clients_beyond_the_connection_limit_do_not_lock_others_out() {
    let (vh, pid) = ready_vault();
    let mut first_silent = crowd(&vh, 1, true).remove(0);
    let silent = crowd(&vh, 300, true);
    // Without eviction this waits for a slot forever (the harness times out).
    let list = vh.vault(["list", "--format", "json"]);
    list.ok();
    assert_eq!(vh.daemon_pid(), Some(pid));
    // The connection idle longest is the one that was closed.
    assert_closed_within(
        &mut first_silent,
        Duration::from_secs(5),
        "the connection idle longest",
    );
    drop(silent);
    assert_still_serving(&vh, pid);
}

/// Clients that send one byte per second — before and after `hello` —
/// neither hold the daemon nor keep their connection: the whole frame must
/// arrive within 10 s of its first byte.
#[test]
fn dribbling_clients_are_cut_off_and_do_not_lock_others_out() {
    let (vh, pid) = ready_vault();
    let mut dribblers = crowd(&vh, 300, false);
    let frame = {
        let body = br#"{"id":2,"req":{"op":"status"}}"#;
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dribbler = {
        let stop = std::sync::Arc::clone(&stop);
        let mut conns: Vec<UnixStream> = dribblers.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut cut = vec![false; conns.len()];
            // Up to 40 s: a frame of 34 bytes at one byte per second would
            // take 34 s if the daemon let it.
            for byte in frame.iter().cycle().take(40) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for (i, s) in conns.iter_mut().enumerate() {
                    if !cut[i] && s.write_all(&[*byte]).is_err() {
                        cut[i] = true;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            cut
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let list = vh.vault(["list", "--format", "json"]);
    list.ok();
    assert!(
        list.elapsed < Duration::from_secs(8),
        "list took {:?} while 300 clients dribbled (their frames time out after 10 s; the CLI \
         must not wait for that)",
        list.elapsed
    );
    // Every dribbler's connection ends (the writer stops after 40 s).
    for s in &mut dribblers {
        assert_closed_within(s, Duration::from_secs(40), "a dribbling client");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribbler.join().unwrap();
    assert_still_serving(&vh, pid);
}

/// 10,000 malformed frames in a row, on 10,000 connections (a malformed
/// frame ends its connection): every one answered or closed, and the same
/// daemon keeps serving with no descriptor leaked.
#[test]
fn ten_thousand_malformed_frames_leave_the_daemon_serving() {
    let (vh, pid) = ready_vault();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .ok()
    };
    let before = fds();
    let socket = vh.socket();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for i in 0..2500usize {
                    let mut s = vault_e2e::connect(&socket).unwrap();
                    let bytes: Vec<u8> = match (w * 2500 + i) % 5 {
                        0 => {
                            let mut b = 9u32.to_be_bytes().to_vec();
                            b.extend_from_slice(b"{\"id\":1,\"");
                            b
                        }
                        1 => ((MAX_FRAME + 1 + i) as u32).to_be_bytes().to_vec(),
                        2 => 0u32.to_be_bytes().to_vec(),
                        3 => {
                            let body = br#"{"id":5,"req":{"op":"get","name":"sock-rec"}}"#;
                            let mut b = (body.len() as u32).to_be_bytes().to_vec();
                            b.extend_from_slice(body);
                            b
                        }
                        _ => {
                            let mut b = 64u32.to_be_bytes().to_vec();
                            b.extend(vault_e2e::random_bytes(64));
                            b
                        }
                    };
                    let _ = s.write_all(&bytes);
                    match outcome(&mut s) {
                        Outcome::ErrorFrame(code) => assert!(
                            matches!(code, ErrorCode::BadFrame | ErrorCode::Usage),
                            "frame {i} of worker {w}: {code:?}"
                        ),
                        Outcome::Closed => {}
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_still_serving(&vh, pid);
    // No descriptor kept per bad connection (read as root or the same uid;
    // /proc hides them from others).
    if let (Some(before), Some(after)) = (before, fds()) {
        assert!(
            after <= before + 8,
            "vaultd holds {after} descriptors after 10,000 bad frames (was {before})"
        );
    }
}

/// Reads until the daemon closes the connection; fails if it is still open
/// after `within`.
fn assert_closed_within(s: &mut UnixStream, within: Duration, what: &str) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            // An error frame before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: still open after {within:?} ({e})"),
        }
    }
}

/// Without any crowding: a client that never says `hello` and one that
/// stops half-way through a frame are each dropped (hello and frame
/// timeouts, 10 s), while a greeted client that merely waits between
/// requests keeps its connection and is answered afterwards.
#[test]
fn silent_and_half_sent_clients_time_out_but_an_idle_greeted_one_stays() {
    let (vh, pid) = ready_vault();
    let mut silent = vh.connect().unwrap();
    let mut half = vh.connect().unwrap();
    hello(&mut half).unwrap();
    half.write_all(&[0, 0]).unwrap();
    let mut idle = vh.connect().unwrap();
    hello(&mut idle).unwrap();
    assert_closed_within(
        &mut silent,
        Duration::from_secs(40),
        "a client that never said hello",
    );
    assert_closed_within(
        &mut half,
        Duration::from_secs(40),
        "a client stuck mid-frame",
    );
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let resp = vault_e2e::request(&mut idle, 2, vault_protocol::message::Request::Status)
        .expect("the idle greeted connection is still served");
    assert!(
        matches!(
            resp.into_result(),
            Ok(vault_protocol::message::Response::Status(_))
        ),
        "status on the idle connection"
    );
    assert_still_serving(&vh, pid);
}
