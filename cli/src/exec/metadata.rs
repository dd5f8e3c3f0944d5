//! `vault exec --server` for a `gcp` credential: a loopback endpoint in the
//! shape of the GCE metadata server, for one child (docs/gcp.md). google-auth
//! and the other client libraries find it through `GCE_METADATA_HOST` /
//! `GCE_METADATA_IP` and get the default service account's access token,
//! email and scopes, and the project id from it, so the child never sees
//! the key: every token comes from the daemon's cache (`GcpToken`).
//!
//! The protocol has no secret: any process that can reach the port could
//! ask. So every connection is mapped to the uid that owns its socket
//! (`/proc/net/tcp`) and only ours is answered; `Metadata-Flavor: Google`
//! must be sent (a browser page cannot send it without a preflight, which
//! is refused), the `Host` must be this endpoint's own address (a page
//! whose name was rebound to 127.0.0.1 sends its own name), a request that
//! went through a proxy (`X-Forwarded-For`) is refused as GCE refuses it,
//! and every answer carries the header back.

use std::net::SocketAddrV4;
use std::sync::Arc;

use vault_protocol::timefmt::Timestamp;
use vault_protocol::{ErrorCode, Request, Response};
use zeroize::Zeroizing;

use super::loopback::{Loopback, Reply, Request as HttpRequest};
use crate::client::{Client, Target};

/// The scope a token has when the child names none (the daemon's default).
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// What the endpoint tells about the account, besides tokens.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The account whose tokens the daemon mints (`impersonate`, else the
    /// key's `client_email`).
    pub email: String,
    /// The project id, when the record or key names one.
    pub project: Option<String>,
}

/// The running endpoint; stopped on drop.
pub struct MetadataServer {
    _server: Loopback,
    /// `127.0.0.1:PORT`, what `GCE_METADATA_HOST` holds.
    pub host: String,
}

impl MetadataServer {
    /// Serves credential `name` of the vault at `target` on a free loopback
    /// port, to processes of this uid only.
    pub fn start(target: Target, name: String, identity: Identity) -> Result<Self, String> {
        let uid = rustix::process::geteuid().as_raw();
        let handler = move |request: &HttpRequest, local: SocketAddrV4| {
            let owner = request.owner();
            let (status, kind, body) = if owner == Some(uid) {
                answer(request, &target, &name, &identity, local.port())
            } else {
                let why = match owner {
                    Some(other) => format!("this endpoint serves uid {uid} only, not uid {other}"),
                    None => "cannot tell which user opened this connection".into(),
                };
                (403, TEXT, Zeroizing::new(why))
            };
            reply(status, kind, body)
        };
        let server = Loopback::start(Arc::new(handler), || {
            reply(
                503,
                TEXT,
                Zeroizing::new("too many requests at once: try again".into()),
            )
        })?;
        Ok(Self {
            host: server.addr.to_string(),
            _server: server,
        })
    }
}

fn reply(status: u16, kind: &'static str, body: Zeroizing<String>) -> Reply {
    Reply {
        status,
        headers: vec![("Metadata-Flavor", "Google"), ("Content-Type", kind)],
        body,
    }
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer")
            .field("host", &self.host)
            .finish()
    }
}

const TEXT: &str = "application/text";
const JSON: &str = "application/json";

type Answer = (u16, &'static str, Zeroizing<String>);

fn text(status: u16, body: impl Into<String>) -> Answer {
    (status, TEXT, Zeroizing::new(body.into()))
}

/// The status, content type and body for one request of our uid.
fn answer(request: &HttpRequest, target: &Target, name: &str, id: &Identity, port: u16) -> Answer {
    let header = |field: &'static str| request.header(field);
    let host = header("Host").unwrap_or_default();
    if host != format!("127.0.0.1:{port}") && host != format!("localhost:{port}") {
        return text(
            403,
            format!("this endpoint answers requests for 127.0.0.1:{port} only"),
        );
    }
    if header("X-Forwarded-For").is_some() {
        return text(
            403,
            "requests through a proxy (X-Forwarded-For) are refused",
        );
    }
    if header("Metadata-Flavor") != Some("Google") {
        return text(403, "missing the header Metadata-Flavor: Google");
    }
    if request.method() != "GET" {
        return text(405, "use GET");
    }
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    if path == "/" {
        return text(200, "computeMetadata/\n");
    }
    let Some(rest) = path.strip_prefix("/computeMetadata/v1/") else {
        return text(404, "not found");
    };
    match rest {
        "project/project-id" => match &id.project {
            Some(p) => text(200, p.clone()),
            None => text(
                404,
                format!("'{name}' names no project: vault set {name} project=ID"),
            ),
        },
        "universe/universe-domain" => text(200, "googleapis.com"),
        "instance/service-accounts/" => text(200, format!("default/\n{}/\n", id.email)),
        _ => {
            let Some(account_path) = rest.strip_prefix("instance/service-accounts/") else {
                return text(404, "not found");
            };
            let (account, item) = account_path.split_once('/').unwrap_or((account_path, ""));
            if account != "default" && account != id.email {
                return text(404, format!("no service account {account} here"));
            }
            account_item(
                item,
                param("recursive") == Some("true"),
                param("scopes"),
                target,
                name,
                id,
            )
        }
    }
}

/// `instance/service-accounts/ACCOUNT/ITEM`.
fn account_item(
    item: &str,
    recursive: bool,
    scopes: Option<&str>,
    target: &Target,
    name: &str,
    id: &Identity,
) -> Answer {
    match item {
        "" if recursive => {
            let doc = serde_json::json!({
                "aliases": ["default"],
                "email": id.email,
                "scopes": [DEFAULT_SCOPE],
            });
            (200, JSON, Zeroizing::new(doc.to_string()))
        }
        "" => text(200, "aliases\nemail\nscopes\ntoken\n"),
        "aliases" => text(200, "default\n"),
        "email" => text(200, id.email.clone()),
        "scopes" => text(200, format!("{DEFAULT_SCOPE}\n")),
        "token" => token(target, name, scopes),
        "identity" => text(
            404,
            "ID tokens are not served by vault exec --server (only access tokens)",
        ),
        _ => text(404, "not found"),
    }
}

/// An access token from the daemon, as GCE gives it:
/// `{"access_token","expires_in","token_type"}`.
fn token(target: &Target, name: &str, scopes: Option<&str>) -> Answer {
    // google-auth sends `scopes=A%2CB`: decode the value first, then split.
    let scopes: Vec<String> = vault_protocol::form::decode(scopes.unwrap_or_default())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let minted = Client::connect_or_start(target).and_then(|mut client| {
        client.call(Request::GcpToken {
            name: name.to_owned(),
            scopes,
        })
    });
    match minted {
        Ok(Response::AccessToken { token, expires_at }) => {
            let left = (expires_at.unix() - Timestamp::now().unix()).max(0);
            let mut body = crate::secret_json::object(&[
                ("access_token", Some(token.expose_secret())),
                ("token_type", Some("Bearer")),
            ]);
            body.pop();
            body.push_str(&format!(",\"expires_in\":{left}}}"));
            (200, JSON, body)
        }
        Ok(_) => text(500, "vaultd sent an unexpected answer"),
        Err(e) if e.code == ErrorCode::Locked => {
            text(503, "the vault is locked: run 'vault unlock'")
        }
        Err(e) => text(500, e.message),
    }
}

/// The uid that owns the TCP socket at `client` connected to our `server`
/// address, from the kernel's table of this network namespace; `None` when
/// it is not there (gone already) or cannot be read.
///
/// A client that opened an IPv6 socket to our IPv4 address (Java's
/// default, any dual-stack socket) is listed in `/proc/net/tcp6` with
/// IPv4-mapped addresses, so both tables are read.
pub fn loopback_owner(client: SocketAddrV4, server: SocketAddrV4) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .find_map(|table| owner_in(&std::fs::read_to_string(table).ok()?, client, server))
}

/// `ADDR:PORT` as `/proc/net/tcp` prints it: the address's four bytes as
/// one native-endian word in hex, the port in hex.
fn proc_addr(a: SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

/// The same address as `/proc/net/tcp6` prints an IPv4-mapped one
/// (`::ffff:a.b.c.d`): four native-endian words.
fn proc_addr6(a: SocketAddrV4) -> String {
    let octets = a.ip().to_ipv6_mapped().octets();
    let words: String = octets
        .chunks_exact(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{words}:{:04X}", a.port())
}

/// The uid column of the row whose local end is `client` and remote end
/// `server`, in either table's notation.
fn owner_in(table: &str, client: SocketAddrV4, server: SocketAddrV4) -> Option<u32> {
    let pairs = [
        (proc_addr(client), proc_addr(server)),
        (proc_addr6(client), proc_addr6(server)),
    ];
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid ...
        let (Some(local), Some(remote)) = (cols.get(1), cols.get(2)) else {
            return None;
        };
        pairs
            .iter()
            .any(|(l, r)| l == local && r == remote)
            .then(|| cols.get(7)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn a_socket_of_ours_is_found_as_ours_and_its_server_side_is_not_taken_for_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(server) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let stream = std::net::TcpStream::connect(server).unwrap();
        let SocketAddr::V4(client) = stream.local_addr().unwrap() else {
            panic!("v4")
        };
        let (_accepted, _) = listener.accept().unwrap();
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(loopback_owner(client, server), Some(me));
        // The reverse pair is the accepted socket, not a client of ours.
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let stranger = SocketAddrV4::new(*client.ip(), 1);
        assert_eq!(owner_in(&table, stranger, server), None);
    }

    #[test]
    fn the_uid_column_of_the_matching_row_is_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1 1\n\
            1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let (client, server) = (SocketAddrV4::new(ip, 0xA000), SocketAddrV4::new(ip, 0x1F90));
        if cfg!(target_endian = "little") {
            assert_eq!(owner_in(table, client, server), Some(1000));
            assert_eq!(owner_in(table, server, client), Some(0));
        }
    }

    #[test]
    fn a_dual_stack_client_socket_is_found_in_the_ipv6_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(server) = listener.local_addr().unwrap() else {
            panic!("v4")
        };
        let mapped = SocketAddr::new(server.ip().to_ipv6_mapped().into(), server.port());
        let stream = match std::net::TcpStream::connect(mapped) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipped: this kernel cannot open an IPv6 socket ({e})");
                return;
            }
        };
        let SocketAddr::V6(client) = stream.local_addr().unwrap() else {
            panic!("an IPv6 socket")
        };
        let (_accepted, peer) = listener.accept().unwrap();
        // The server side sees an IPv4 peer; the client's row is in tcp6.
        let SocketAddr::V4(peer) = peer else {
            panic!("v4 peer")
        };
        assert_eq!(peer.port(), client.port());
        let me = rustix::process::geteuid().as_raw();
        assert_eq!(loopback_owner(peer, server), Some(me));
        let v4_only = std::fs::read_to_string("/proc/net/tcp").unwrap();
        assert_eq!(owner_in(&v4_only, peer, server), None);
    }

    #[test]
    fn the_ipv6_table_notation_of_a_mapped_address_is_read() {
        let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0000000000000000FFFF00000100007F:A000 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 1 1\n";
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let (client, server) = (SocketAddrV4::new(ip, 0xA000), SocketAddrV4::new(ip, 0x1F90));
        if cfg!(target_endian = "little") {
            assert_eq!(owner_in(table, client, server), Some(1001));
            assert_eq!(owner_in(table, server, client), None);
        }
    }
}
