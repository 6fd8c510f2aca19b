//! Nodes of a cluster without NATS or sockets: relays whose commands a small in-memory
//! backplane (a key-value map with revisions, subjects, request-reply) turns into the
//! notices the cluster thread would give, in virtual time.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::HOST_UNREACHABLE;
use crate::protocol::Status;
use crate::protocol::control::ControlBody;
use crate::protocol::event::{EventKind, Events, RawEvents, SyncInfo};
use crate::protocol::frame::{Grant, Request, parse_status, split_reply};
use crate::server::cluster::registry::{RoomRecord, room_name};
use crate::server::cluster::{Command, CreateFailure, Notice, REQUEST_DEADLINE, subject};
use crate::server::relay::testing::{chat_datagram, control_datagram};
use crate::server::relay::{Config, Relay};
use crate::server::transmit::{Recorder, SessionId};

struct Node {
    name: String,
    relay: Relay<StdRng>,
    tx: Recorder,
    subs: HashSet<String>,
}

/// The backplane: what NATS and the key-value bucket would do with the nodes' commands.
struct Net {
    nodes: Vec<Node>,
    kv: BTreeMap<String, Vec<u8>>,
    rev: u64,
    now: Instant,
    /// Whether commands are carried (false: NATS is away).
    up: bool,
    /// Nodes whose registry watch shows nothing (it lags).
    lagging: HashSet<usize>,
    /// Event batches published so far.
    published: usize,
    /// Forwards to lose (NATS away for a moment).
    lose_forwards: usize,
}

fn conn(n: usize) -> SessionId {
    SessionId { key: n, id: 0 }
}

fn ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

impl Net {
    fn new(n: usize) -> Net {
        let nodes = (1..=n)
            .map(|i| {
                let name = format!("n{i}");
                let mut relay = Relay::new(Config::default(), StdRng::seed_from_u64(i as u64));
                relay.enable_cluster(&name);
                Node {
                    name,
                    relay,
                    tx: Recorder::default(),
                    subs: HashSet::new(),
                }
            })
            .collect();
        Net {
            nodes,
            kv: BTreeMap::new(),
            rev: 0,
            now: Instant::now(),
            up: true,
            lagging: HashSet::new(),
            published: 0,
            lose_forwards: 0,
        }
    }

    fn node(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn tell(&mut self, i: usize, n: Notice) {
        let node = &mut self.nodes[i];
        node.relay.on_cluster_notice(self.now, n, &mut node.tx);
    }

    /// Carries commands until none are left (bounded).
    fn settle(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            for i in 0..self.nodes.len() {
                let node = &mut self.nodes[i];
                node.relay.flush(&mut node.tx);
                node.relay.cluster_turn(self.now, &mut node.tx);
                let cmds = node.relay.take_cluster_commands();
                if !self.up {
                    continue;
                }
                for c in cmds {
                    any = true;
                    self.carry(i, c);
                }
            }
            if !any {
                return;
            }
        }
        panic!("the backplane never settled");
    }

    fn registry(&mut self, key: &str, record: Option<&[u8]>) {
        self.rev += 1;
        let (room, rev) = (room_name(key).unwrap(), self.rev);
        let record = record.map(|r| RoomRecord::decode(r).unwrap());
        for i in 0..self.nodes.len() {
            if self.lagging.contains(&i) {
                continue;
            }
            let n = Notice::Registry {
                room: room.clone(),
                record: record.clone(),
                revision: rev,
            };
            self.tell(i, n);
        }
    }

    fn carry(&mut self, from: usize, c: Command) {
        match c {
            Command::Create {
                ticket,
                key,
                record,
            } => {
                let result = if self.kv.contains_key(&key) {
                    Err(CreateFailure::Exists)
                } else {
                    self.kv.insert(key.clone(), record.clone());
                    self.registry(&key, Some(&record));
                    Ok(self.rev)
                };
                self.tell(
                    from,
                    Notice::Created {
                        ticket,
                        key,
                        result,
                    },
                );
            }
            Command::Lookup { ticket, key } => {
                let record = self.kv.get(&key).map(|r| RoomRecord::decode(r).unwrap());
                self.tell(from, Notice::Looked { ticket, record });
            }
            Command::Update { key, record } => {
                if self.kv.contains_key(&key) {
                    self.kv.insert(key.clone(), record.clone());
                    self.registry(&key, Some(&record));
                }
            }
            Command::Delete { key } => {
                if self.kv.remove(&key).is_some() {
                    self.registry(&key, None);
                }
            }
            Command::Subscribe { room } => {
                self.nodes[from].subs.insert(room);
            }
            Command::Unsubscribe { room } => {
                self.nodes[from].subs.remove(&room);
            }
            Command::Publish { subject, bytes } => self.publish(&subject, bytes),
            Command::Ask {
                ticket,
                subject,
                bytes,
            } => {
                let to: Vec<usize> = if subject == subject::RESUME {
                    (0..self.nodes.len()).collect()
                } else {
                    let name = subject.strip_prefix("ocm.ask.").unwrap();
                    vec![self.node(name)]
                };
                let mut answer = None;
                for i in to {
                    let node = &mut self.nodes[i];
                    let reply = format!("reply.{ticket}");
                    node.relay.on_cluster_notice(
                        self.now,
                        Notice::Asked {
                            reply: reply.clone(),
                            bytes: bytes.clone(),
                        },
                        &mut node.tx,
                    );
                    let mut rest = Vec::new();
                    for c in node.relay.take_cluster_commands() {
                        match c {
                            Command::Reply { subject, bytes } if subject == reply => {
                                answer.get_or_insert(bytes);
                            }
                            other => rest.push(other),
                        }
                    }
                    for c in rest {
                        self.carry(i, c);
                    }
                }
                self.tell(
                    from,
                    Notice::Answer {
                        ticket,
                        bytes: answer,
                    },
                );
            }
            Command::Reply { .. } => {}
        }
    }

    fn publish(&mut self, subject: &str, bytes: Vec<u8>) {
        if let Some(key) = subject.strip_prefix("ocm.ev.") {
            self.published += 1;
            let room = room_name(key).unwrap();
            for i in 0..self.nodes.len() {
                if self.nodes[i].subs.contains(&room) {
                    self.tell(
                        i,
                        Notice::Batch {
                            room: room.clone(),
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
        } else if let Some(rest) = subject.strip_prefix("ocm.fwd.") {
            if self.lose_forwards > 0 {
                self.lose_forwards -= 1;
                return;
            }
            let owner = rest.split('.').next().unwrap();
            let i = self.node(owner);
            self.tell(i, Notice::Forwarded { bytes });
        }
    }

    /// A TCRP request to node `i` from connection `c`: the answer now, or `None` (deferred).
    fn request(&mut self, i: usize, c: usize, req: &Request<'_>) -> Option<Vec<u8>> {
        let node = &mut self.nodes[i];
        let mut out = Vec::new();
        let now = self.now;
        node.relay
            .handle_request_deferrable(now, ip(), conn(c), req, &mut out, &mut node.tx)
            .then_some(out)
    }

    /// A request answered, now or after the backplane settles.
    fn ask(&mut self, i: usize, c: usize, req: &Request<'_>) -> Vec<u8> {
        let now = self.request(i, c, req);
        self.settle();
        if let Some(out) = now {
            return out;
        }
        let answers = self.nodes[i].relay.take_cluster_answers();
        let (_, out) = answers
            .into_iter()
            .find(|(s, _)| *s == conn(c))
            .expect("an answer");
        out
    }
}

fn status(out: &[u8]) -> Status {
    let (f, _) = split_reply(out).unwrap().unwrap();
    parse_status(&f).unwrap()
}

fn token(out: &[u8]) -> Vec<u8> {
    let (_, n) = split_reply(out).unwrap().unwrap();
    let (f, _) = split_reply(&out[n..]).unwrap().unwrap();
    Grant::parse(f.payload).unwrap().token.to_vec()
}

fn create<'a>(room: &'a str, user: &'a str) -> Request<'a> {
    Request::Create {
        room,
        user,
        password: b"",
        capacity: 0,
        resume_key: None,
    }
}

fn join<'a>(room: &'a str, user: &'a str) -> Request<'a> {
    Request::Join {
        room,
        user,
        password: b"",
        resume_key: None,
    }
}

/// Binds member `token` of `room` on node `i` from `port`, carrying what follows.
fn bind(net: &mut Net, i: usize, room: &str, token: &[u8], port: u16) {
    send(net, i, room, token, port, "");
}

fn send(net: &mut Net, i: usize, room: &str, token: &[u8], port: u16, msg: &str) {
    let node = &mut net.nodes[i];
    let from = SocketAddr::new(ip(), port);
    node.relay.handle_datagram(
        net.now,
        from,
        &chat_datagram(room, token, msg),
        &mut node.tx,
    );
    net.settle();
}

/// (kind, Seq, user, body) of what node `i` sent to `port`.
fn got(net: &Net, i: usize, port: u16) -> Vec<(u8, u32, String, String)> {
    net.nodes[i]
        .tx
        .to(SocketAddr::new(ip(), port))
        .iter()
        .flat_map(|d| Events::new(d).flatten())
        .map(|e| (e.kind, e.seq, e.user.to_string(), e.body.to_string()))
        .collect()
}

#[test]
fn a_creation_race_has_one_winner_and_the_loser_hears_room_exists() {
    let mut net = Net::new(2);
    assert!(net.request(0, 1, &create("r", "a")).is_none(), "deferred");
    assert!(net.request(1, 2, &create("r", "b")).is_none(), "deferred");
    net.settle();
    let a = net.nodes[0].relay.take_cluster_answers();
    let b = net.nodes[1].relay.take_cluster_answers();
    assert_eq!(status(&a[0].1), Status::Ok);
    assert_eq!(status(&b[0].1), Status::RoomExists);
    // Now the registry says so at once, without asking.
    let again = net.request(1, 3, &create("r", "c")).expect("answered now");
    assert_eq!(status(&again), Status::RoomExists);
}

#[test]
fn members_on_two_nodes_share_one_seq() {
    let mut net = Net::new(2);
    let host = net.ask(0, 1, &create("r", "ann"));
    let host = token(&host);
    bind(&mut net, 0, "r", &host, 10);
    let bob = net.ask(1, 2, &join("r", "bob"));
    assert_eq!(status(&bob), Status::Ok);
    let bob = token(&bob);
    bind(&mut net, 1, "r", &bob, 20);
    send(&mut net, 1, "r", &bob, 20, "hi from n2");
    send(&mut net, 0, "r", &host, 10, "hi from n1");
    let on_owner = got(&net, 0, 10);
    let on_mirror = got(&net, 1, 20);
    let msg = EventKind::Message as u8;
    let want = |v: &[(u8, u32, String, String)]| -> Vec<(u32, String)> {
        v.iter()
            .filter(|e| e.0 == msg)
            .map(|e| (e.1, e.3.clone()))
            .collect()
    };
    assert_eq!(want(&on_owner), want(&on_mirror));
    assert_eq!(want(&on_owner).len(), 2);
    assert!(
        on_owner
            .iter()
            .any(|e| e.0 == EventKind::Joined as u8 && e.2 == "bob")
    );
    // Names and capacity are the owner's: bob again on the owner is NAME_TAKEN.
    let twice = net.ask(0, 3, &join("r", "bob"));
    assert_eq!(status(&twice), Status::NameTaken);
}

#[test]
fn a_request_the_cluster_never_answers_is_server_full_at_its_deadline() {
    let mut net = Net::new(1);
    net.up = false;
    assert!(net.request(0, 1, &create("r", "a")).is_none());
    net.settle();
    assert!(net.nodes[0].relay.take_cluster_answers().is_empty());
    let due = net.nodes[0].relay.cluster_deadline().expect("a deadline");
    assert_eq!(due, net.now + REQUEST_DEADLINE);
    net.now += REQUEST_DEADLINE;
    net.settle();
    let a = net.nodes[0].relay.take_cluster_answers();
    assert_eq!(status(&a[0].1), Status::ServerFull);
    // The record lands after all: it is deleted again, and no room was made.
    net.tell(
        0,
        Notice::Created {
            ticket: 1,
            key: "cg".into(),
            result: Ok(9),
        },
    );
    let cmds = net.nodes[0].relay.take_cluster_commands();
    assert!(
        matches!(&cmds[..], [Command::Delete { key }] if key == "cg"),
        "{cmds:?}"
    );
    assert_eq!(net.nodes[0].relay.room_count(), 0);
}

#[test]
fn a_dead_owner_closes_the_mirror_with_host_unreachable() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    net.tell(
        1,
        Notice::NodeDown {
            node: "n1".into(),
            clean: false,
        },
    );
    net.up = false;
    net.settle();
    let last = got(&net, 1, 20).pop().unwrap();
    assert_eq!(last.0, EventKind::RoomClosed as u8);
    assert_eq!(last.3, HOST_UNREACHABLE);
    assert_eq!(net.nodes[1].relay.room_count(), 0);
    assert_eq!(net.nodes[1].relay.member_count(), 0);
    // Its name is free on the survivor (its registry forgot the dead node's rooms).
    let mut list = Vec::new();
    let node = &mut net.nodes[1];
    node.relay
        .handle_request(net.now, ip(), &Request::List, &mut list, &mut node.tx);
    let (_, n) = split_reply(&list).unwrap().unwrap();
    let (f, _) = split_reply(&list[n..]).unwrap().unwrap();
    assert_eq!(f.payload, [0, 0], "no room listed");
}

#[test]
fn a_member_left_on_its_node_leaves_the_owners_room() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    let leave = Request::Leave {
        room: "r",
        token: &bob,
    };
    assert_eq!(status(&net.ask(1, 3, &leave)), Status::Ok);
    assert!(
        got(&net, 0, 10)
            .iter()
            .any(|e| e.0 == EventKind::Left as u8 && e.2 == "bob")
    );
    // The mirror had no member left: it is gone, and so is its subscription.
    assert_eq!(net.nodes[1].relay.room_count(), 0);
    assert!(net.nodes[1].subs.is_empty());
    // And the owner's record counts one member again.
    let rec = RoomRecord::decode(net.kv.values().next().unwrap()).unwrap();
    assert_eq!(rec.members, 1);
}

#[test]
fn a_member_timed_out_on_a_mirror_gets_its_own_timed_out() {
    let mut net = Net::new(2);
    let t0 = net.now;
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    let idle = Config::default().idle_timeout;
    net.now = t0 + idle - std::time::Duration::from_secs(1);
    send(&mut net, 0, "r", &host, 10, "");
    net.now = t0 + idle + std::time::Duration::from_secs(1);
    let node = &mut net.nodes[1];
    node.relay.handle_timeout(net.now, &mut node.tx);
    net.settle();
    let last = got(&net, 1, 20).pop().unwrap();
    assert_eq!(
        (last.0, last.2.as_str()),
        (EventKind::TimedOut as u8, "bob")
    );
    let on_owner = got(&net, 0, 10).pop().unwrap();
    assert_eq!(on_owner.1, last.1, "the owner's event, with its Seq");
    // Then the empty mirror goes.
    assert_eq!(net.nodes[1].relay.room_count(), 0);
}

#[test]
fn a_join_before_the_watch_shows_the_room_reads_the_bucket() {
    let mut net = Net::new(2);
    net.lagging.insert(1);
    let host = token(&net.ask(0, 1, &create("fresh", "ann")));
    bind(&mut net, 0, "fresh", &host, 10);
    let bob = net.ask(1, 2, &join("fresh", "bob"));
    assert_eq!(status(&bob), Status::Ok);
    let missing = net.ask(1, 3, &join("nowhere", "bob"));
    assert_eq!(status(&missing), Status::RoomNotFound);
}

#[test]
fn a_room_with_no_member_elsewhere_publishes_nothing() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    send(&mut net, 0, "r", &host, 10, "alone");
    assert_eq!(net.published, 0, "no copies, no publishes");
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    send(&mut net, 0, "r", &host, 10, "shared");
    assert!(net.published >= 2, "bob's JOINED and the message");
    let leave = Request::Leave {
        room: "r",
        token: &bob,
    };
    net.ask(1, 3, &leave);
    let before = net.published;
    send(&mut net, 0, "r", &host, 10, "alone again");
    assert_eq!(net.published, before, "nobody elsewhere: nothing published");
}

#[test]
fn a_node_that_left_cleanly_gets_a_moment_for_its_room_closed() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    // Its key's deletion outruns its last batch.
    net.tell(
        1,
        Notice::NodeDown {
            node: "n1".into(),
            clean: true,
        },
    );
    net.settle();
    assert_eq!(net.nodes[1].relay.room_count(), 1, "not closed yet");
    let node = &mut net.nodes[0];
    node.relay.shutdown(&mut node.tx);
    net.settle();
    let last = got(&net, 1, 20).pop().unwrap();
    assert_eq!(
        (last.0, last.3.as_str()),
        (EventKind::RoomClosed as u8, "server shutting down")
    );
    assert_eq!(net.nodes[1].relay.room_count(), 0);
}

#[test]
fn a_clean_leave_without_its_room_closed_still_closes_after_the_grace() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    net.up = false;
    net.tell(
        1,
        Notice::NodeDown {
            node: "n1".into(),
            clean: true,
        },
    );
    let due = net.nodes[1].relay.cluster_deadline().expect("the grace");
    net.now = due;
    net.settle();
    let last = got(&net, 1, 20).pop().unwrap();
    assert_eq!(
        (last.0, last.3.as_str()),
        (EventKind::RoomClosed as u8, HOST_UNREACHABLE)
    );
}

/// A v1.1 control datagram of member `token` on node `i` from `port`, carried through.
fn control(net: &mut Net, i: usize, token: &[u8], port: u16, body: ControlBody<'_>) {
    let node = &mut net.nodes[i];
    let from = SocketAddr::new(ip(), port);
    let d = control_datagram("r", token, body);
    node.relay.handle_datagram(net.now, from, &d, &mut node.tx);
    net.settle();
}

/// The LastClientSeq of the latest SYNC answer node `i` sent to `port`.
fn last_client_seq(net: &Net, i: usize, port: u16) -> u32 {
    net.nodes[i]
        .tx
        .to(SocketAddr::new(ip(), port))
        .iter()
        .flat_map(|d| RawEvents::new(d).flatten())
        .filter(|e| e.kind == EventKind::Sync as u8 && !e.user.is_empty())
        .map(|e| SyncInfo::parse(e.body).unwrap().last_client_seq)
        .last()
        .expect("a SYNC answer")
}

#[test]
fn a_send_lost_on_the_way_to_the_owner_is_sent_again_and_relayed_once() {
    let mut net = Net::new(2);
    let host = token(&net.ask(0, 1, &create("r", "ann")));
    bind(&mut net, 0, "r", &host, 10);
    let bob = token(&net.ask(1, 2, &join("r", "bob")));
    bind(&mut net, 1, "r", &bob, 20);
    let send = |cs| ControlBody::Send {
        client_seq: cs,
        message: "once",
    };
    let count = |net: &Net| got(net, 0, 10).iter().filter(|e| e.3 == "once").count();
    net.lose_forwards = 1;
    control(&mut net, 1, &bob, 20, send(1));
    assert_eq!(count(&net), 0, "lost on the way");
    // Its client asks: not relayed (its node does not guess), so it sends it again.
    control(&mut net, 1, &bob, 20, ControlBody::Sync);
    assert_eq!(last_client_seq(&net, 1, 20), 0);
    control(&mut net, 1, &bob, 20, send(1));
    assert_eq!(count(&net), 1);
    control(&mut net, 1, &bob, 20, ControlBody::Sync);
    assert_eq!(last_client_seq(&net, 1, 20), 1, "the owner said RELAYED");
    // Sent again once more: relayed at most once.
    control(&mut net, 1, &bob, 20, send(1));
    assert_eq!(count(&net), 1);
    assert_eq!(got(&net, 1, 20).iter().filter(|e| e.3 == "once").count(), 1);
}
