//! Several `ocm-server` nodes joined through NATS (`--cluster`; design in docs/cluster.md).
//!
//! The relay's loop never waits for the network: NATS is spoken by the official client
//! (`async-nats`) on a thread of its own, with a small current-thread tokio runtime
//! ([`nats`]). The loop hands it [`Command`]s through a bounded channel and is handed
//! [`Notice`]s back through another, with a [`mio::Waker`] to wake it. Neither side ever
//! blocks on the other: a full channel drops the message, counts it and logs it (the
//! protocols on top recover: a lost batch is a Seq gap repaired from the owner, a lost
//! answer a deferred request that times out).
//!
//! * [`registry`]: the room records in the key-value bucket (sans-IO).
//! * [`wire`]: the backplane messages between nodes (sans-IO).
//! * [`nats`]: the thread.
//! * The relay's side (owned rooms shared with other nodes, mirrors of rooms owned
//!   elsewhere, deferred CREATE and JOIN) is `server/relay/cluster.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use log::warn;

pub mod nats;
pub mod registry;
pub mod wire;

/// Messages waiting in each direction at most. A burst past it is dropped and counted: the
/// loop must never block on the cluster thread, nor the thread on the loop.
pub const CHANNEL_CAP: usize = 16 * 1024;
/// How long a deferred CREATE or JOIN waits for the cluster before it is answered
/// SERVER_FULL (the nearest status the contract has for "cannot serve this now").
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a node waits for another's answer on the backplane.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a node refreshes its liveness key.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose key has not been refreshed for this long is dead (three missed beats:
/// a death is acted on within about 3.5 s, inside the 5 s the contract promises).
pub const NODE_DEAD_AFTER: Duration = Duration::from_millis(3000);

/// How to reach NATS, and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`), tried in turn.
    pub urls: Vec<String>,
    /// This node's name (see [`registry::valid_node_name`]).
    pub node: String,
    /// A `.creds` file for a secured NATS.
    pub creds: Option<std::path::PathBuf>,
    /// User and password for a secured NATS.
    pub user: Option<(String, String)>,
    /// Copies of the key-value buckets a NATS cluster keeps (1 for a single server; 3 to
    /// survive the loss of one of three).
    pub replicas: usize,
}

impl ClusterConfig {
    /// The settings from `--cluster`, `--node`, `--cluster-creds`, `--cluster-user` and
    /// `--cluster-password`, checked.
    pub fn from_flags(
        urls: &str,
        node: Option<&str>,
        creds: Option<std::path::PathBuf>,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<ClusterConfig, String> {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err("--cluster needs at least one nats://HOST:PORT".into());
        }
        if let Some(bad) = urls.iter().find(|u| !u.contains("://")) {
            return Err(format!(
                "--cluster: '{bad}' is not a URL like nats://HOST:PORT"
            ));
        }
        let node = node.ok_or("--cluster needs --node NAME")?;
        if !registry::valid_node_name(node) {
            return Err(format!(
                "--node '{node}': 1 to {} of A-Z a-z 0-9 - _",
                registry::MAX_NODE_NAME
            ));
        }
        if let Some(path) = &creds {
            // Read by the cluster thread later; a missing file is a start-up error now.
            std::fs::metadata(path)
                .map_err(|e| format!("--cluster-creds {}: {e}", path.display()))?;
        }
        let user = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err("--cluster-user and --cluster-password go together".into()),
        };
        Ok(ClusterConfig {
            urls,
            node: node.to_owned(),
            creds,
            user,
            replicas: 1,
        })
    }
}

/// What the loop asks the cluster thread to do.
#[derive(Debug)]
pub enum Command {
    /// Create the registry record `key` (atomically: fails if it exists); answered by
    /// [`Notice::Created`].
    Create {
        /// The relay's ticket of the deferred request.
        ticket: u64,
        /// The record's key.
        key: String,
        /// The encoded record.
        record: Vec<u8>,
    },
    /// Read room record `key` from the bucket (a JOIN for a room the registry's watch has
    /// not shown yet); answered by [`Notice::Looked`].
    Lookup {
        /// The relay's ticket.
        ticket: u64,
        /// The record's key.
        key: String,
    },
    /// Rewrite an owned room's record (its member count), if it is still ours.
    Update {
        /// The record's key.
        key: String,
        /// The encoded record.
        record: Vec<u8>,
    },
    /// Delete an owned room's record, if it is still the one we created.
    Delete {
        /// The record's key.
        key: String,
    },
    /// Publish `bytes` on `subject` (at most once).
    Publish {
        /// Subject.
        subject: String,
        /// Payload.
        bytes: Vec<u8>,
    },
    /// Start hearing a room's event subject (before asking to join it, so that nothing
    /// published after the answer is missed).
    Subscribe {
        /// The room's name.
        room: String,
    },
    /// Stop hearing a room's event subject.
    Unsubscribe {
        /// The room's name.
        room: String,
    },
    /// Ask another node (request-reply); answered by [`Notice::Answer`].
    Ask {
        /// The relay's ticket.
        ticket: u64,
        /// The other node's ask subject.
        subject: String,
        /// The question ([`wire::Msg`]).
        bytes: Vec<u8>,
    },
    /// Answer a question another node asked.
    Reply {
        /// Its reply subject.
        subject: String,
        /// The answer ([`wire::Msg`]).
        bytes: Vec<u8>,
    },
}

/// What the cluster thread tells the loop.
#[derive(Debug)]
pub enum Notice {
    /// A registry record appeared or changed (`Some`), or went (`None`).
    Registry {
        /// The room's name.
        room: String,
        /// Its record.
        record: Option<registry::RoomRecord>,
        /// The entry's revision.
        revision: u64,
    },
    /// The answer to [`Command::Create`]: `Ok(revision)`, or why not.
    Created {
        /// The ticket it carried.
        ticket: u64,
        /// The record's key.
        key: String,
        /// The record's revision, or the failure.
        result: Result<u64, CreateFailure>,
    },
    /// The answer to [`Command::Lookup`]: the record, if the room exists.
    Looked {
        /// The ticket it carried.
        ticket: u64,
        /// The record.
        record: Option<registry::RoomRecord>,
    },
    /// Another node is gone (its liveness key expired or was deleted).
    NodeDown {
        /// Its name.
        node: String,
        /// It left cleanly (deleted its key at shutdown): its rooms' ROOM_CLOSED is on the
        /// way, and should win over `host unreachable`.
        clean: bool,
    },
    /// An event batch of a room this node hears (the owner's datagram bytes).
    Batch {
        /// The room's name.
        room: String,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A forwarded event for a room this node owns ([`wire::Msg::Forward`], unparsed).
    Forwarded {
        /// The message.
        bytes: Vec<u8>,
    },
    /// A question from another node, to answer with [`Command::Reply`].
    Asked {
        /// Where the answer goes.
        reply: String,
        /// The question.
        bytes: Vec<u8>,
    },
    /// The answer to [`Command::Ask`]; `None` if none came in time.
    Answer {
        /// The ticket it carried.
        ticket: u64,
        /// The answer.
        bytes: Option<Vec<u8>>,
    },
}

/// Why a [`Command::Create`] did not create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFailure {
    /// The name is taken (on any node).
    Exists,
    /// NATS could not be reached or did not answer.
    Unavailable,
}

/// Subjects of the backplane.
pub mod subject {
    /// Where the owner publishes room `key`'s event batches.
    pub fn events(key: &str) -> String {
        format!("ocm.ev.{key}")
    }

    /// Where events of `owner`'s rooms are forwarded (one wildcard subscription per node;
    /// the room key is the last token, so a NATS operator can see per-room traffic).
    pub fn forward(owner: &str, key: &str) -> String {
        format!("ocm.fwd.{owner}.{key}")
    }

    /// What node `node` subscribes to for forwarded events.
    pub fn forward_all(node: &str) -> String {
        format!("ocm.fwd.{node}.>")
    }

    /// Where node `node` is asked questions (JOIN, history).
    pub fn ask(node: &str) -> String {
        format!("ocm.ask.{node}")
    }

    /// Where every node is asked who holds a member that resumes elsewhere.
    pub const RESUME: &str = "ocm.resume";
}

/// The loop's end of the cluster thread.
pub struct Cluster {
    commands: tokio::sync::mpsc::Sender<Command>,
    notices: Receiver<Notice>,
    /// Commands dropped because the thread's channel was full (or it is gone).
    pub dropped_commands: u64,
    /// Notices the thread dropped because the loop's channel was full.
    dropped_notices: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    node: String,
}

impl Cluster {
    /// Starts the cluster thread; it wakes the loop through `waker` when notices wait.
    pub fn start(cfg: ClusterConfig, waker: mio::Waker) -> std::io::Result<Cluster> {
        let (ctx, crx) = tokio::sync::mpsc::channel(CHANNEL_CAP);
        let (ntx, nrx) = std::sync::mpsc::sync_channel(CHANNEL_CAP);
        let (stx, srx) = tokio::sync::oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let node = cfg.node.clone();
        let out = nats::Outbox::new(ntx, Arc::new(waker), Arc::clone(&dropped));
        let thread = std::thread::Builder::new()
            .name("ocm-cluster".into())
            .spawn(move || nats::run(cfg, crx, srx, out))?;
        Ok(Cluster {
            commands: ctx,
            notices: nrx,
            dropped_commands: 0,
            dropped_notices: dropped,
            thread: Some(thread),
            shutdown: Some(stx),
            node,
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Hands a command to the thread without waiting; a full channel drops it (counted,
    /// logged).
    pub fn send(&mut self, cmd: Command) {
        match self.commands.try_send(cmd) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(c)) => {
                self.dropped_commands += 1;
                warn!("cluster: command channel full; dropped {c:?}");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.dropped_commands += 1;
            }
        }
    }

    /// The next notice waiting, if any.
    pub fn try_recv(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }

    /// Notices the thread had to drop so far.
    pub fn dropped_notices(&self) -> u64 {
        self.dropped_notices.load(Ordering::Relaxed)
    }

    /// Tells the thread to send what it holds, delete this node's liveness key and stop;
    /// waits for it at most `within`.
    pub fn stop(&mut self, within: Duration) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let Some(t) = self.thread.take() else {
            return;
        };
        let until = std::time::Instant::now() + within;
        while !t.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            warn!("cluster thread still busy after {within:?}; leaving it");
        }
    }
}

/// Sends a notice from the thread: never blocks; a full channel drops it (counted).
pub(crate) fn offer(tx: &SyncSender<Notice>, n: Notice) -> bool {
    !matches!(
        tx.try_send(n),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked() {
        let ok = ClusterConfig::from_flags(
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
            Some("n1"),
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(ok.urls, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        assert_eq!(ok.node, "n1");
        let err = |urls, node, user: Option<&str>, pass: Option<&str>| {
            ClusterConfig::from_flags(
                urls,
                node,
                None,
                user.map(str::to_owned),
                pass.map(str::to_owned),
            )
            .is_err()
        };
        assert!(err("nats://h:1", None, None, None));
        assert!(err("", Some("n1"), None, None));
        assert!(err("h:1", Some("n1"), None, None));
        assert!(err("nats://h:1", Some("a.b"), None, None));
        assert!(err("nats://h:1", Some("n1"), Some("u"), None));
        assert!(!err("nats://h:1", Some("n1"), Some("u"), Some("p")));
        let missing = std::path::PathBuf::from("/nonexistent/ocm-test.creds");
        let got = ClusterConfig::from_flags("nats://h:1", Some("n1"), Some(missing), None, None);
        assert!(got.is_err_and(|e| e.contains("--cluster-creds")));
    }
}
