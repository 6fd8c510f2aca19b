//! The cluster thread: the official NATS client (`async-nats`) on a small current-thread
//! tokio runtime, between the loop's channels and NATS.
//!
//! It holds no room state of its own beyond what failure handling needs: the registry's
//! records (owner and revision per key, to clean up after a dead node), the last time each
//! node's liveness key was refreshed, and the revisions of the records this node wrote.
//! Everything that can wait on the network (key-value operations, requests) runs in a task
//! of its own, so one slow answer never holds up the commands behind it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::stream;
use async_nats::{Client, ConnectOptions};
use futures_util::StreamExt;
use log::{debug, error, info, warn};
use tokio::sync::mpsc::Receiver;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::timeout;

use super::registry::{NODES_BUCKET, ROOMS_BUCKET, RoomRecord, room_key, room_name};
use super::{
    ASK_TIMEOUT, ClusterConfig, Command, CreateFailure, HEARTBEAT, NODE_DEAD_AFTER, Notice, offer,
    subject,
};

/// How long a key-value operation may take before it counts as failed.
const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one publish may wait for room in the client's queue (NATS down): past it the
/// message is dropped, like any at-most-once message.
const PUBLISH_WAIT: Duration = Duration::from_millis(100);
/// How often liveness is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// This node counts as in touch with NATS while its own key was seen this recently; a node
/// out of touch declares nobody dead (it is the one cut off).
const IN_TOUCH: Duration = Duration::from_millis(2500);
/// A record older than this whose owner is unknown (or is this node, which does not hold
/// it) is stale: left by a node that died unseen or by this node's previous life.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// Liveness keys that nobody refreshes go from the bucket after this.
const NODE_KEY_AGE: Duration = Duration::from_secs(60);
/// How long to wait before retrying to set up the buckets or a watch.
const RETRY: Duration = Duration::from_secs(1);
/// How long shutdown may spend sending what is left.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// The thread's end of the notice channel: never blocks, wakes the loop.
#[derive(Clone)]
pub struct Outbox {
    tx: std::sync::mpsc::SyncSender<Notice>,
    waker: Arc<mio::Waker>,
    dropped: Arc<AtomicU64>,
}

impl Outbox {
    /// The notice channel's sending end, the loop's waker and the drop count.
    pub fn new(
        tx: std::sync::mpsc::SyncSender<Notice>,
        waker: Arc<mio::Waker>,
        dropped: Arc<AtomicU64>,
    ) -> Outbox {
        Outbox { tx, waker, dropped }
    }

    /// Hands `n` to the loop; a full channel drops it (counted, logged).
    fn tell(&self, n: Notice) {
        if !offer(&self.tx, n) {
            let d = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if d.is_power_of_two() {
                warn!("cluster: notice channel full; {d} notices dropped so far");
            }
        }
        let _ = self.waker.wake();
    }
}

/// A record as the thread tracks it.
#[derive(Debug, Clone)]
struct Tracked {
    owner: String,
    revision: u64,
    since: Instant,
}

/// State shared between the thread's tasks (one thread: the locks are never contended).
#[derive(Default)]
struct Shared {
    /// Registry records by key.
    rooms: HashMap<String, Tracked>,
    /// When each node's liveness key was last seen refreshed.
    nodes: HashMap<String, Instant>,
    /// Revisions of the records this node wrote, by key.
    mine: HashMap<String, u64>,
    /// Records being rewritten: a key is here while a task writes it, with the next value
    /// to write, if one came meanwhile (each write needs the revision of the one before).
    updates: HashMap<String, Option<Vec<u8>>>,
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread's body: runs until `stop` fires (or the loop's end is dropped).
pub fn run(
    cfg: ClusterConfig,
    commands: Receiver<Command>,
    stop: oneshot::Receiver<()>,
    out: Outbox,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cluster: cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(serve(cfg, commands, stop, out));
}

/// Everything the command handler needs.
struct Node {
    name: String,
    client: Client,
    rooms: Store,
    nodes: Store,
    shared: SharedRef,
    out: Outbox,
    subs: HashMap<String, AbortHandle>,
}

async fn connect(cfg: &ClusterConfig) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .name(format!("ocm-server {}", cfg.node))
        .retry_on_initial_connect()
        .event_callback(|e| async move { info!("cluster: nats {e}") });
    if let Some(path) = &cfg.creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("credentials {}: {e}", path.display()))?;
    }
    if let Some((user, pass)) = &cfg.user {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    opts.connect(cfg.urls.as_slice())
        .await
        .map_err(|e| e.to_string())
}

/// Gets a bucket, or creates it. The bucket's stream is made here with the key-value
/// layout (`KV_<bucket>` on `$KV.<bucket>.>`, one value per key, roll-ups, direct gets)
/// rather than by `create_key_value`, which first reads account fields that nats-server
/// 2.9 (Debian's) does not send.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<Store, String> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(name).await.map_err(|e| e.to_string())
}

async fn serve(
    cfg: ClusterConfig,
    mut commands: Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
    out: Outbox,
) {
    let client = match connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            error!("cluster: cannot use NATS at {:?}: {e}", cfg.urls);
            return;
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let (rooms, nodes) = loop {
        let made = async {
            let r = bucket(&js, ROOMS_BUCKET, Duration::ZERO, cfg.replicas).await?;
            let n = bucket(&js, NODES_BUCKET, NODE_KEY_AGE, cfg.replicas).await?;
            Ok::<_, String>((r, n))
        };
        tokio::select! {
            _ = &mut stop => return,
            r = made => match r {
                Ok(b) => break b,
                Err(e) => {
                    warn!("cluster: key-value buckets not ready: {e}; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    };
    info!("cluster: node '{}' on NATS {:?}", cfg.node, cfg.urls);
    let shared = SharedRef::default();
    let mut node = Node {
        name: cfg.node.clone(),
        client: client.clone(),
        rooms,
        nodes,
        shared,
        out,
        subs: HashMap::new(),
    };
    node.start_listening().await;
    let started = Instant::now();
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            cmd = commands.recv() => match cmd {
                Some(c) => node.handle(c, false).await,
                None => break,
            },
            _ = beat.tick() => node.beat(),
            _ = check.tick() => node.check_liveness(started),
        }
    }
    // What the loop sent before stopping (its rooms' last batches and record deletions)
    // goes out first, within a bound.
    let last = async {
        while let Ok(c) = commands.try_recv() {
            node.handle(c, true).await;
        }
        let _ = node.nodes.delete(&node.name).await;
        let _ = node.client.flush().await;
    };
    if timeout(SHUTDOWN_WAIT, last).await.is_err() {
        warn!("cluster: shutdown did not finish sending in {SHUTDOWN_WAIT:?}");
    }
}

impl Node {
    /// Subscribes to this node's subjects and watches both buckets, each in a task that
    /// starts over after an error.
    async fn start_listening(&mut self) {
        for (subj, asked) in [
            (subject::forward_all(&self.name), false),
            (subject::ask(&self.name), true),
            (subject::RESUME.to_owned(), true),
        ] {
            let client = self.client.clone();
            let out = self.out.clone();
            tokio::spawn(async move {
                loop {
                    match client.subscribe(subj.clone()).await {
                        Ok(mut sub) => {
                            while let Some(m) = sub.next().await {
                                let bytes = m.payload.to_vec();
                                match (asked, m.reply) {
                                    (false, _) => out.tell(Notice::Forwarded { bytes }),
                                    (true, Some(reply)) => out.tell(Notice::Asked {
                                        reply: reply.to_string(),
                                        bytes,
                                    }),
                                    (true, None) => debug!("cluster: a question without reply"),
                                }
                            }
                        }
                        Err(e) => warn!("cluster: subscribe {subj}: {e}"),
                    }
                    tokio::time::sleep(RETRY).await;
                }
            });
        }
        let (rooms, shared, out) = (self.rooms.clone(), self.shared.clone(), self.out.clone());
        tokio::spawn(async move {
            loop {
                match rooms.watch_with_history(">").await {
                    Ok(mut w) => {
                        while let Some(e) = w.next().await {
                            match e {
                                Ok(e) => on_room_entry(&shared, &out, e),
                                Err(e) => {
                                    warn!("cluster: watch {ROOMS_BUCKET}: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => warn!("cluster: watch {ROOMS_BUCKET}: {e}"),
                }
                tokio::time::sleep(RETRY).await;
            }
        });
        let (nodes, shared, out) = (self.nodes.clone(), self.shared.clone(), self.out.clone());
        let me = self.name.clone();
        tokio::spawn(async move {
            loop {
                match nodes.watch_with_history(">").await {
                    Ok(mut w) => {
                        while let Some(e) = w.next().await {
                            match e {
                                Ok(e) => on_node_entry(&shared, &out, &me, e),
                                Err(e) => {
                                    warn!("cluster: watch {NODES_BUCKET}: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => warn!("cluster: watch {NODES_BUCKET}: {e}"),
                }
                tokio::time::sleep(RETRY).await;
            }
        });
    }

    /// Refreshes this node's liveness key (in a task: a slow NATS must not hold commands).
    fn beat(&self) {
        let (nodes, name) = (self.nodes.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ = timeout(KV_TIMEOUT, nodes.put(&name, "alive".into())).await;
        });
    }

    /// Declares dead every node whose key went stale (if this node is in touch itself), and
    /// deletes their records, and stale ones of nodes nobody knows.
    fn check_liveness(&self, started: Instant) {
        let now = Instant::now();
        let mut s = lock(&self.shared);
        let in_touch = s
            .nodes
            .get(&self.name)
            .is_some_and(|&t| now.duration_since(t) < IN_TOUCH);
        if !in_touch {
            // Cut off ourselves: nobody is judged until we hear again, and then afresh.
            for (n, t) in s.nodes.iter_mut() {
                if *n != self.name {
                    *t = now;
                }
            }
            return;
        }
        let dead: Vec<String> = s
            .nodes
            .iter()
            .filter(|&(n, &t)| *n != self.name && now.duration_since(t) >= NODE_DEAD_AFTER)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &dead {
            s.nodes.remove(n);
            warn!("cluster: node '{n}' is unreachable");
            self.out.tell(Notice::NodeDown {
                node: n.clone(),
                clean: false,
            });
        }
        let settled = now.duration_since(started) >= STALE_AFTER;
        let doomed: Vec<(String, u64)> = s
            .rooms
            .iter()
            .filter(|(k, t)| {
                dead.contains(&t.owner)
                    || (settled
                        && now.duration_since(t.since) >= STALE_AFTER
                        && ((t.owner == self.name && !s.mine.contains_key(*k))
                            || (t.owner != self.name && !s.nodes.contains_key(&t.owner))))
            })
            .map(|(k, t)| (k.clone(), t.revision))
            .collect();
        drop(s);
        for (key, revision) in doomed {
            let rooms = self.rooms.clone();
            tokio::spawn(async move {
                // Revision-checked: of the nodes that try, one deletes; a record rewritten
                // meanwhile (a new room) stays.
                let r = timeout(
                    KV_TIMEOUT,
                    rooms.delete_expect_revision(&key, Some(revision)),
                );
                if let Ok(Ok(())) = r.await {
                    info!("cluster: deleted the record of room {key} (owner gone)");
                }
            });
        }
    }

    /// Carries out one command; `now_only` (at shutdown) awaits each instead of spawning.
    async fn handle(&mut self, cmd: Command, now_only: bool) {
        match cmd {
            Command::Create {
                ticket,
                key,
                record,
            } => self.create(ticket, key, record),
            Command::Update { key, record } => self.update(key, record),
            Command::Lookup { ticket, key } => {
                let (rooms, out) = (self.rooms.clone(), self.out.clone());
                tokio::spawn(async move {
                    let record = match timeout(KV_TIMEOUT, rooms.entry(&key)).await {
                        Ok(Ok(Some(e))) if e.operation == Operation::Put => {
                            RoomRecord::decode(&e.value).ok()
                        }
                        _ => None,
                    };
                    out.tell(Notice::Looked { ticket, record });
                });
            }
            Command::Delete { key } => self.delete(key, now_only).await,
            Command::Publish { subject, bytes } | Command::Reply { subject, bytes } => {
                let r = timeout(PUBLISH_WAIT, self.client.publish(subject, bytes.into())).await;
                if !matches!(r, Ok(Ok(()))) {
                    debug!("cluster: a publish was dropped");
                }
            }
            Command::Subscribe { room } => self.subscribe(room).await,
            Command::Unsubscribe { room } => {
                if let Some(task) = self.subs.remove(&room) {
                    // Dropping the subscriber unsubscribes.
                    task.abort();
                }
            }
            Command::Ask {
                ticket,
                subject,
                bytes,
            } => {
                let (client, out) = (self.client.clone(), self.out.clone());
                tokio::spawn(async move {
                    let answer = timeout(ASK_TIMEOUT, client.request(subject, bytes.into())).await;
                    let bytes = match answer {
                        Ok(Ok(m)) => Some(m.payload.to_vec()),
                        _ => None,
                    };
                    out.tell(Notice::Answer { ticket, bytes });
                });
            }
        }
    }

    /// Creates a record (in a task), and tells the loop how it went.
    fn create(&self, ticket: u64, key: String, record: Vec<u8>) {
        let (rooms, shared, out) = (self.rooms.clone(), self.shared.clone(), self.out.clone());
        tokio::spawn(async move {
            let result = create(&rooms, &key, record).await;
            if let Ok(rev) = result {
                lock(&shared).mine.insert(key.clone(), rev);
            }
            out.tell(Notice::Created {
                ticket,
                key,
                result,
            });
        });
    }

    /// Rewrites a record of ours, if it is still the revision we wrote. One task per key
    /// writes the values in turn (the latest waiting one wins), so that each write names
    /// the revision of the one before.
    fn update(&self, key: String, record: Vec<u8>) {
        {
            let mut s = lock(&self.shared);
            if !s.mine.contains_key(&key) {
                return;
            }
            if let Some(next) = s.updates.get_mut(&key) {
                *next = Some(record);
                return;
            }
            s.updates.insert(key.clone(), Some(record));
        }
        let (rooms, shared) = (self.rooms.clone(), self.shared.clone());
        tokio::spawn(async move {
            loop {
                let (record, rev) = {
                    let mut s = lock(&shared);
                    let next = s.updates.get_mut(&key).and_then(Option::take);
                    match (next, s.mine.get(&key).copied()) {
                        (Some(record), Some(rev)) => (record, rev),
                        _ => {
                            s.updates.remove(&key);
                            return;
                        }
                    }
                };
                let written = timeout(KV_TIMEOUT, rooms.update(&key, record.into(), rev)).await;
                if let Ok(Ok(r)) = written {
                    if let Some(m) = lock(&shared).mine.get_mut(&key) {
                        *m = r;
                    }
                }
            }
        });
    }

    /// Deletes a record of ours, revision-checked (awaited at shutdown, else in a task).
    async fn delete(&self, key: String, now_only: bool) {
        let Some(rev) = lock(&self.shared).mine.remove(&key) else {
            return;
        };
        let rooms = self.rooms.clone();
        let job = async move {
            if let Ok(Err(e)) =
                timeout(KV_TIMEOUT, rooms.delete_expect_revision(&key, Some(rev))).await
            {
                debug!("cluster: delete {key}: {e}");
            }
        };
        if now_only {
            job.await;
        } else {
            tokio::spawn(job);
        }
    }

    /// Starts hearing a room's subject. Awaited: the SUB is on the connection before any
    /// later request (a JOIN's question).
    async fn subscribe(&mut self, room: String) {
        if self.subs.contains_key(&room) {
            return;
        }
        let subj = subject::events(&room_key(&room));
        match self.client.subscribe(subj).await {
            Ok(mut sub) => {
                let out = self.out.clone();
                let name = room.clone();
                let task = tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        out.tell(Notice::Batch {
                            room: name.clone(),
                            bytes: m.payload.to_vec(),
                        });
                    }
                });
                self.subs.insert(room, task.abort_handle());
            }
            Err(e) => warn!("cluster: subscribe to room '{room}': {e}"),
        }
    }
}

/// Creates a record atomically: exactly one of several nodes racing for a name wins.
async fn create(rooms: &Store, key: &str, record: Vec<u8>) -> Result<u64, CreateFailure> {
    match timeout(KV_TIMEOUT, rooms.create(key, record.into())).await {
        Ok(Ok(rev)) => Ok(rev),
        Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(CreateFailure::Exists),
        Ok(Err(e)) => {
            // A lost race over a deleted key shows as a failed update: look.
            debug!("cluster: create {key}: {e}");
            match timeout(KV_TIMEOUT, rooms.entry(key)).await {
                Ok(Ok(Some(e))) if e.operation == Operation::Put => Err(CreateFailure::Exists),
                _ => Err(CreateFailure::Unavailable),
            }
        }
        Err(_) => Err(CreateFailure::Unavailable),
    }
}

fn on_room_entry(shared: &SharedRef, out: &Outbox, e: kv::Entry) {
    let Some(room) = room_name(&e.key) else {
        return;
    };
    let record = match e.operation {
        Operation::Put => match RoomRecord::decode(&e.value) {
            Ok(r) => Some(r),
            Err(err) => {
                warn!("cluster: record of room '{room}': {err}; ignored");
                None
            }
        },
        Operation::Delete | Operation::Purge => None,
    };
    {
        let mut s = lock(shared);
        match &record {
            Some(r) => {
                let since = s
                    .rooms
                    .get(&e.key)
                    .filter(|t| t.owner == r.owner)
                    .map_or_else(Instant::now, |t| t.since);
                s.rooms.insert(
                    e.key.clone(),
                    Tracked {
                        owner: r.owner.clone(),
                        revision: e.revision,
                        since,
                    },
                );
            }
            None => {
                s.rooms.remove(&e.key);
            }
        }
    }
    out.tell(Notice::Registry {
        room,
        record,
        revision: e.revision,
    });
}

fn on_node_entry(shared: &SharedRef, out: &Outbox, me: &str, e: kv::Entry) {
    let mut s = lock(shared);
    match e.operation {
        Operation::Put => {
            s.nodes.insert(e.key, Instant::now());
        }
        Operation::Delete | Operation::Purge => {
            // A node that shut down cleanly: gone at once.
            if s.nodes.remove(&e.key).is_some() && e.key != me {
                info!("cluster: node '{}' left", e.key);
                out.tell(Notice::NodeDown {
                    node: e.key,
                    clean: true,
                });
            }
        }
    }
}
