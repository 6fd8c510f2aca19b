//! (cluster) The loop's side of `--cluster`: starting the NATS thread, handing the relay
//! the thread's notices, the thread the relay's commands, and connections their deferred
//! answers. Nothing here waits: both channels are bounded and tried, never blocked on.

use std::io;
use std::time::{Duration, Instant};

use log::warn;

use super::{CLUSTER, LoopTx, Server, WebSide};
use crate::server::cluster::{Cluster, ClusterConfig};
use crate::server::conn::admission::Kind;
use crate::server::conn::tcrp;
use crate::server::transmit::SessionId;
use crate::server::web::session::{Web, frame_replies};

/// Notices handled per wake-up; more wait for the next (the thread's waker is rung again).
const NOTICES_PER_TURN: usize = 4096;
/// How long shutdown waits for the thread to send the last batches and deletions.
const STOP_WAIT: Duration = Duration::from_secs(2);

impl Server {
    /// Makes this server node `cfg.node` of the cluster on `cfg.urls` (docs/cluster.md).
    pub fn with_cluster(mut self, cfg: ClusterConfig) -> io::Result<Server> {
        let waker = mio::Waker::new(self.poll.registry(), CLUSTER)?;
        self.relay.enable_cluster(&cfg.node);
        self.cluster = Some(Cluster::start(cfg, waker)?);
        Ok(self)
    }

    /// The end of a wake-up, with `--cluster`: the thread's notices to the relay, the
    /// relay's turn (deadlines, batches to publish), its commands to the thread, deferred
    /// answers to their connections.
    pub(super) fn cluster_turn(&mut self, now: Instant) {
        if self.cluster.is_none() {
            return;
        }
        let mut more = false;
        for i in 0.. {
            let Some(cluster) = self.cluster.as_mut() else {
                return;
            };
            if i == NOTICES_PER_TURN {
                more = true;
                break;
            }
            let Some(n) = cluster.try_recv() else {
                break;
            };
            let mut tx = LoopTx::new(&mut self.udp, &mut self.web.outbox);
            self.relay.on_cluster_notice(now, n, &mut tx);
        }
        let mut tx = LoopTx::new(&mut self.udp, &mut self.web.outbox);
        self.relay.flush(&mut tx);
        self.relay.cluster_turn(now, &mut tx);
        self.send_commands();
        for (conn, answer) in self.relay.take_cluster_answers() {
            self.answer_deferred(conn.key, conn.id, &answer, now);
        }
        if more {
            // Not waited for: the poll comes back at once.
            self.backlog.push(CLUSTER);
        }
    }

    fn send_commands(&mut self) {
        let commands = self.relay.take_cluster_commands();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        for c in commands {
            cluster.send(c);
        }
    }

    /// Gives connection `key` (generation `id`) the answer it waited for, and serves the
    /// requests queued behind it. A WebSocket session gets it framed as channel-1
    /// messages (PROTOCOL.md §6).
    fn answer_deferred(&mut self, key: usize, id: u64, answer: &[u8], now: Instant) {
        let Server {
            relay,
            udp,
            clients,
            web,
            ..
        } = self;
        let Some(client) = clients.slab.get_mut(key).filter(|c| c.id == id) else {
            return; // it closed meanwhile
        };
        let session = SessionId { key, id };
        match client.kind {
            Kind::Tcrp => {
                let mut tx = LoopTx::new(udp, &mut web.outbox);
                let mut service = tcrp::Tcrp {
                    relay,
                    tx: &mut tx,
                    peer: client.peer.ip(),
                    conn: session,
                };
                client.conn.answer_deferred(now, answer, &mut service);
            }
            Kind::Web => {
                let WebSide {
                    site,
                    outbox,
                    scratch,
                    stats,
                    ..
                } = web;
                let mut framed = Vec::new();
                frame_replies(&mut framed, answer, stats);
                let mut tx = LoopTx::new(udp, outbox);
                let mut service = Web {
                    relay,
                    tx: &mut tx,
                    peer: client.peer.ip(),
                    session,
                    state: &mut client.web,
                    site,
                    scratch,
                    stats,
                };
                client.conn.answer_deferred(now, &framed, &mut service);
                self.deliver_to_sessions();
            }
            Kind::Http => return,
        }
        self.on_writable(key, now);
    }

    /// At shutdown, after the rooms closed: their last batches and record deletions go to
    /// the thread, which sends them and stops (bounded wait).
    pub(super) fn cluster_stop(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        self.send_commands();
        if let Some(mut c) = self.cluster.take() {
            if c.dropped_commands > 0 || c.dropped_notices() > 0 {
                warn!(
                    "cluster: {} commands and {} notices were dropped (channels full)",
                    c.dropped_commands,
                    c.dropped_notices()
                );
            }
            c.stop(STOP_WAIT);
        }
    }
}
