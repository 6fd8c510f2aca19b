//! (cluster) CREATE, JOIN and RESUME that wait for the cluster: deferred at once, settled
//! when the registry or the owner has answered, or SERVER_FULL at their deadline.

use super::*;

impl<R: Rng> Relay<R> {
    /// Answers a TCRP request from connection `conn`, or defers it (CREATE, JOIN and
    /// RESUME that need the cluster); returns whether it was answered now.
    pub fn handle_request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        conn: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        self.request_deferrable(now, peer, None, conn, req, out, tx)
    }

    /// [`Relay::handle_request_deferrable`] for a request on WebSocket session `session`
    /// (PROTOCOL.md §6): the tokens it issues are bound to the session.
    pub fn handle_session_request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        self.request_deferrable(now, peer, Some(session), session, req, out, tx)
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::server::relay) fn request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: Option<SessionId>,
        conn: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        if self.cluster.is_none() {
            self.handle_request_on(now, peer, session, req, out, tx);
            return true;
        }
        let origin = (peer.to_canonical(), session);
        let early = match *req {
            Request::Create {
                room,
                user,
                password,
                capacity,
                resume_key,
            } => self.defer_create(
                now, origin, conn, room, user, password, capacity, resume_key,
            ),
            Request::Join {
                room,
                user,
                password,
                resume_key,
            } => {
                let local = self.by_name.get(room).copied().filter(|k| {
                    !self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.mirrors.contains_key(k))
                });
                if let Some(key) = local {
                    self.handle_request_on(now, peer, session, req, out, tx);
                    // Its member count may have changed: the record says it.
                    if let Some(c) = self.cluster.as_mut() {
                        c.touched.push(key);
                    }
                    return true;
                }
                self.defer_join(now, origin, conn, room, user, password, resume_key)
            }
            Request::Resume {
                room,
                token,
                resume_key,
            } => {
                let here = <&crate::server::token::Token>::try_from(token)
                    .is_ok_and(|t| self.by_token.contains_key(t));
                if here {
                    self.handle_request_on(now, peer, session, req, out, tx);
                    return true;
                }
                self.defer_resume(now, origin, conn, room, token, resume_key)
            }
            _ => {
                self.handle_request_on(now, peer, session, req, out, tx);
                return true;
            }
        };
        match early {
            Some(status) => {
                self.answer(req.operation(), req.room().as_bytes(), Err(status), out);
                true
            }
            None => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::server::relay) fn defer_create(
        &mut self,
        now: Instant,
        origin: Origin,
        conn: SessionId,
        room: &str,
        user: &str,
        password: &[u8],
        capacity: u16,
        resume_key: Option<&[u8]>,
    ) -> Option<Status> {
        let peer = origin.0;
        let c = self.cluster.as_ref()?;
        if self.by_name.contains_key(room) || c.registry.contains_key(room) {
            return Some(Status::RoomExists);
        }
        if self.room_limit_reached(peer) {
            return Some(Status::ServerFull);
        }
        let capacity = self.room_capacity(capacity);
        let mut salt = [0u8; SALT_LEN];
        self.rng.fill_bytes(&mut salt);
        let c = self.cluster.as_mut()?;
        let record = RoomRecord::new(&c.node, capacity, password, salt);
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        let ticket = c.ticket();
        c.commands.push(Command::Create {
            ticket,
            key: room_key(room),
            record: bytes,
        });
        c.pending.insert(
            ticket,
            (
                now + REQUEST_DEADLINE,
                Pending::Create(NewRoom {
                    conn,
                    origin,
                    room: room.to_owned(),
                    user: user.to_owned(),
                    password: password.to_vec(),
                    capacity,
                    resume_key: resume_key.map(<[u8]>::to_vec),
                    record,
                }),
            ),
        );
        None
    }

    #[allow(clippy::too_many_arguments)]
    pub(in crate::server::relay) fn defer_join(
        &mut self,
        now: Instant,
        origin: Origin,
        conn: SessionId,
        room: &str,
        user: &str,
        password: &[u8],
        resume_key: Option<&[u8]>,
    ) -> Option<Status> {
        let peer = origin.0;
        if self.throttle.is_throttled(peer, now) {
            return Some(Status::TooManyRequests);
        }
        let c = self.cluster.as_mut()?;
        let Some(reg) = c.registry.get(room) else {
            // Not shown by the watch (yet: a room made a moment ago elsewhere): the bucket
            // itself says.
            let ticket = c.ticket();
            c.commands.push(Command::Lookup {
                ticket,
                key: room_key(room),
            });
            let r = Lookup {
                conn,
                origin,
                room: room.to_owned(),
                user: user.to_owned(),
                password: password.to_vec(),
                resume_key: resume_key.map(<[u8]>::to_vec),
            };
            c.pending
                .insert(ticket, (now + REQUEST_DEADLINE, Pending::Lookup(r)));
            return None;
        };
        let record = reg.record.clone();
        if !record.password_ok(password) {
            self.record_failure(peer, now);
            return Some(Status::BadPassword);
        }
        if self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
        {
            return Some(Status::ServerFull);
        }
        let c = self.cluster.as_mut()?;
        // Hear the room before asking: what the owner publishes after its answer is not
        // missed (the subscription reaches NATS before the question).
        c.commands.push(Command::Subscribe {
            room: room.to_owned(),
        });
        let ticket = c.ticket();
        let mut bytes = Vec::new();
        Msg::Join {
            room,
            node: &c.node,
            user,
        }
        .encode(&mut bytes);
        c.commands.push(Command::Ask {
            ticket,
            subject: subject::ask(&record.owner),
            bytes,
        });
        c.pending.insert(
            ticket,
            (
                now + REQUEST_DEADLINE,
                Pending::Join(Entering {
                    conn,
                    origin,
                    room: room.to_owned(),
                    user: user.to_owned(),
                    resume_key: resume_key.map(<[u8]>::to_vec),
                    record,
                }),
            ),
        );
        None
    }

    pub(in crate::server::relay) fn on_created(
        &mut self,
        now: Instant,
        ticket: u64,
        key: String,
        result: Result<u64, Status>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !matches!(c.pending.get(&ticket), Some((_, Pending::Create(_)))) {
            // Too late: it was answered SERVER_FULL at its deadline. A record made after
            // all names this node and holds no room: delete it.
            if result.is_ok() {
                debug!("cluster: a late CREATE's record {key} is deleted");
                c.commands.push(Command::Delete { key });
            }
            return;
        }
        self.settle(now, ticket, result, tx);
    }

    /// Ends a deferred request: `Ok` carries the record revision (CREATE) or nothing
    /// (JOIN); `Err` its status.
    pub(in crate::server::relay) fn settle(
        &mut self,
        now: Instant,
        ticket: u64,
        result: Result<u64, Status>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((_, pending)) = c.pending.remove(&ticket) else {
            return;
        };
        match pending {
            Pending::Create(r) => self.settle_create(now, r, result),
            Pending::Lookup(r) => {
                let mut out = Vec::new();
                let result = result.and(Err(Status::ServerFull));
                self.answer(Operation::Join, r.room.as_bytes(), result, &mut out);
                if let Some(c) = self.cluster.as_mut() {
                    c.answers.push((r.conn, out));
                }
            }
            Pending::Join(r) => self.settle_join(now, r, result, tx),
            Pending::Resume(r) => {
                let result = match result {
                    Ok(_) => Err(Status::ServerFull),
                    Err(s) => Err(s),
                };
                let mut out = Vec::new();
                self.answer(Operation::Resume, r.room.as_bytes(), result, &mut out);
                if let Some(c) = self.cluster.as_mut() {
                    c.answers.push((r.conn, out));
                }
            }
            Pending::Repair { room, id } => {
                // Timed out: take the next batch wherever it starts.
                if let Some(r) = self.rooms.get_mut(room).filter(|r| r.id == id) {
                    r.forget_seq();
                }
                if let Some(m) = self.cluster.as_mut().and_then(|c| c.mirrors.get_mut(&room)) {
                    m.repairing = None;
                }
            }
        }
    }

    /// A deferred CREATE: on the registry's yes the room is made here (its record deleted
    /// again if this node cannot make it after all), and the answer goes to its connection.
    fn settle_create(&mut self, now: Instant, r: NewRoom, result: Result<u64, Status>) {
        let key = room_key(&r.room);
        let made = result.and_then(|rev| {
            let made = self.create(now, r.origin, &r.room, &r.user, &r.password, r.capacity);
            match made {
                Ok(Some(host)) => {
                    self.set_resume_key(Some(host), r.resume_key.as_deref());
                    let rk = self.members[host].room;
                    let owned = Owned {
                        key,
                        revision: rev,
                        members: 1,
                        record: r.record,
                    };
                    if let Some(c) = self.cluster.as_mut() {
                        c.owned.insert(rk, owned);
                    }
                }
                _ => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.commands.push(Command::Delete { key });
                    }
                }
            }
            made
        });
        let mut out = Vec::new();
        self.answer(Operation::Create, r.room.as_bytes(), made, &mut out);
        if let Some(c) = self.cluster.as_mut() {
            c.answers.push((r.conn, out));
        }
    }

    /// A deferred JOIN: on the owner's yes the member enters this node's mirror; on a no,
    /// a subscription made for it alone is dropped.
    fn settle_join(
        &mut self,
        now: Instant,
        r: Entering,
        result: Result<u64, Status>,
        tx: &mut impl Transmit,
    ) {
        let joined =
            result.and_then(|_| self.join_mirror(now, r.origin, &r.room, &r.user, &r.record, tx));
        if let Ok(Some(m)) = joined {
            self.set_resume_key(Some(m), r.resume_key.as_deref());
        }
        if joined.is_err() && !self.by_name.contains_key(r.room.as_str()) {
            if let Some(c) = self.cluster.as_mut() {
                c.commands.push(Command::Unsubscribe {
                    room: r.room.clone(),
                });
            }
        }
        let mut out = Vec::new();
        self.answer(Operation::Join, r.room.as_bytes(), joined, &mut out);
        if let Some(c) = self.cluster.as_mut() {
            c.answers.push((r.conn, out));
        }
    }

    /// The bucket's answer to a JOIN's lookup: no record is ROOM_NOT_FOUND; a record joins
    /// the registry and the JOIN goes on as if the watch had shown it.
    pub(in crate::server::relay) fn looked(
        &mut self,
        now: Instant,
        ticket: u64,
        record: Option<RoomRecord>,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((_, Pending::Lookup(r))) = c.pending.remove(&ticket) else {
            return;
        };
        let early = match record {
            None => Some(Status::RoomNotFound),
            Some(record) => {
                c.registry
                    .entry(r.room.as_str().into())
                    .or_insert(Registered { record });
                self.defer_join(
                    now,
                    r.origin,
                    r.conn,
                    &r.room,
                    &r.user,
                    &r.password,
                    r.resume_key.as_deref(),
                )
            }
        };
        if let Some(status) = early {
            let mut out = Vec::new();
            self.answer(Operation::Join, r.room.as_bytes(), Err(status), &mut out);
            if let Some(c) = self.cluster.as_mut() {
                c.answers.push((r.conn, out));
            }
        }
    }
}
