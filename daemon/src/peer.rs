//! Who is on the other end of a connection, for the audit log
//! (docs/lifecycle.md): the peer's pid and uid come from the socket
//! (SO_PEERCRED), its executable, command line and parents from `/proc`.
//! Read while the client still waits for its answer, so it is still there.

use vault_protocol::message::AuditProcess;

/// How many parents are recorded.
const PARENTS: usize = 3;
/// A command line is cut here.
const MAX_CMDLINE: usize = 512;

/// A client as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its uid.
    pub uid: u32,
    /// The process.
    pub client: AuditProcess,
    /// Its parents, nearest first, up to three (not past pid 1).
    pub parents: Vec<AuditProcess>,
}

/// Parents seen before, by pid, with their start time (pids are reused:
/// a different start time is a different process). A shell runs many
/// clients; its `/proc` files are read once. Emptied when full.
type Seen = std::collections::HashMap<u32, (u64, AuditProcess)>;
static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
const SEEN_MAX: usize = 512;

impl Peer {
    /// Describes process `pid` of user `uid` and its parents.
    pub fn of(pid: u32, uid: u32) -> Self {
        let client = process(pid);
        let mut parents = Vec::new();
        let mut at = stat(pid);
        while parents.len() < PARENTS {
            let Some((ppid, _)) = at else { break };
            if ppid <= 1 {
                break;
            }
            let here = stat(ppid);
            let Some((_, started)) = here else { break };
            parents.push(remembered(ppid, started));
            at = here;
        }
        Self {
            uid,
            client,
            parents,
        }
    }

    /// The daemon itself, for what it hands out on its own: an emitted
    /// file rewritten after a change, a publication sent in the
    /// background. Read once.
    pub fn daemon() -> std::sync::Arc<Self> {
        static ME: std::sync::OnceLock<std::sync::Arc<Peer>> = std::sync::OnceLock::new();
        std::sync::Arc::clone(ME.get_or_init(|| {
            std::sync::Arc::new(Peer::of(
                std::process::id(),
                rustix::process::geteuid().as_raw(),
            ))
        }))
    }

    /// A client whose pid the socket did not give.
    pub fn unknown(uid: u32) -> Self {
        Self {
            uid,
            client: AuditProcess {
                pid: 0,
                exe: None,
                cmdline: String::new(),
            },
            parents: Vec::new(),
        }
    }
}

/// A process as `/proc` describes it now (gone: no exe, empty command line).
pub(crate) fn process(pid: u32) -> AuditProcess {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if cmdline.len() > MAX_CMDLINE {
        let mut cut = MAX_CMDLINE;
        while !cmdline.is_char_boundary(cut) {
            cut -= 1;
        }
        cmdline.truncate(cut);
        cmdline.push('…');
    }
    AuditProcess { pid, exe, cmdline }
}

/// A parent's description, from [`SEEN`] when the same process (pid and
/// start time) was described before.
fn remembered(pid: u32, started: u64) -> AuditProcess {
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(Seen::new);
    if let Some((s, p)) = seen.get(&pid)
        && *s == started
    {
        return p.clone();
    }
    let p = process(pid);
    if seen.len() >= SEEN_MAX {
        seen.clear();
    }
    seen.insert(pid, (started, p.clone()));
    p
}

/// The parent pid and start time, from `/proc/PID/stat` (fields 4 and 22,
/// after the command name in parentheses, which may itself hold spaces
/// and parentheses).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut after = stat[stat.rfind(')')? + 1..].split_whitespace();
    let ppid = after.nth(1)?.parse().ok()?;
    let started = after.nth(17)?.parse().ok()?;
    Some((ppid, started))
}

#[cfg(test)]
fn parent_of(pid: u32) -> Option<u32> {
    stat(pid).map(|(ppid, _)| ppid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_parent() {
        let me = std::process::id();
        let peer = Peer::of(me, 0);
        assert_eq!(peer.client.pid, me);
        assert_eq!(
            peer.client.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert!(!peer.client.cmdline.is_empty());
        // The test harness has a parent (cargo, a shell), never pid 1 itself.
        assert!(peer.parents.len() <= PARENTS);
        assert!(peer.parents.iter().all(|p| p.pid > 1));
        assert_eq!(
            peer.parents.first().map(|p| p.pid),
            parent_of(me).filter(|p| *p > 1)
        );
        // Described again, partly from what was seen: the same.
        assert_eq!(Peer::of(me, 0), peer);
    }

    #[test]
    fn stat_reads_past_a_name_with_parentheses() {
        let (ppid, started) = stat(std::process::id()).unwrap();
        assert!(ppid >= 1 && started > 0);
    }
}
