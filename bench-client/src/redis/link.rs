//! One user's connection to Redis: set up blocking (`HELLO 3`, `SUBSCRIBE`, each wait
//! bounded), then non-blocking in a worker's mio loop, with bounded buffers both ways.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use super::resp::{self, Frame, MAX_FRAME};

/// Bytes of PUBLISHes a connection may have queued for Redis. Past it a message is not
/// queued but dropped and counted (`send_failed`), as a UDP send to a full socket buffer
/// would be: a Redis that falls behind cannot grow the bench's memory. 64 KiB is hundreds
/// of messages, more than one user ever has due at once while Redis keeps up.
pub const OUT_CAP: usize = 64 * 1024;

/// Input buffer of a connection: one largest frame, and as much again to read into, so a
/// read never has less than [`MAX_FRAME`] bytes of room.
const IN_CAP: usize = 2 * MAX_FRAME;

/// One connection, non-blocking: what is queued for Redis, what Redis sent and is not yet
/// parsed.
pub struct Link {
    stream: mio::net::TcpStream,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    input: Box<[u8]>,
    /// `input[start..end]` is read and not yet parsed.
    start: usize,
    end: usize,
    /// Redis closed it, or it failed: nothing more is read or written.
    pub closed: bool,
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// Bytes, now parsed; `drained` when the read took less than it had room for, which
    /// on a stream socket means the receive queue is empty (epoll(7)): no further read
    /// is needed to learn it.
    Bytes {
        /// The receive queue was emptied.
        drained: bool,
    },
    /// Nothing more for now.
    Drained,
    /// Redis closed the connection, or it failed.
    Closed,
}

impl Link {
    /// Queues `PUBLISH channel body`; false (nothing queued) when the connection is closed
    /// or its queue is over [`OUT_CAP`].
    pub fn publish(&mut self, channel: &[u8], body: &[u8]) -> bool {
        if self.closed || self.out.len() - self.written > OUT_CAP {
            return false;
        }
        resp::publish(&mut self.out, channel, body);
        true
    }

    /// Whether bytes wait to be written.
    pub fn has_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes what is queued until done or the socket would block (the rest leaves on the
    /// next writable readiness). False when the connection failed.
    pub fn flush(&mut self) -> bool {
        while self.written < self.out.len() && !self.closed {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => self.closed = true,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        if !self.closed {
            self.out.clear();
            self.written = 0;
        }
        !self.closed
    }

    /// Reads once, then hands every whole frame to `each`. A frame Redis should never send
    /// (see [`resp::ParseError`]) closes the connection: the stream cannot be resynchronised.
    pub fn read(&mut self, mut each: impl FnMut(Frame<'_>)) -> Got {
        if self.closed {
            return Got::Closed;
        }
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.input.len() - self.end;
        let n = loop {
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => {
                    self.closed = true;
                    return Got::Closed;
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return Got::Closed;
                }
            }
        };
        self.end += n;
        loop {
            match resp::parse(&self.input[self.start..self.end]) {
                Ok(Some((frame, used))) => {
                    each(frame);
                    self.start += used;
                }
                Ok(None) => break,
                Err(_) => {
                    self.closed = true;
                    return Got::Closed;
                }
            }
        }
        Got::Bytes { drained: n < room }
    }

    /// The stream, to register with a poll.
    pub fn stream(&mut self) -> &mut mio::net::TcpStream {
        &mut self.stream
    }
}

/// Connects `users` connections to Redis at `server`, each says `HELLO 3` and subscribes
/// to `channels[u]`; returns them subscribed, non-blocking, in the order given. Fails
/// with a reason a person can act on, by `deadline` at the latest.
pub fn open_all(
    server: SocketAddr,
    channels: &[Vec<u8>],
    deadline: Instant,
) -> Result<Vec<Link>, String> {
    // Every connection's commands are written before any answer is read, so Redis
    // answers them all in one pass rather than one round trip each.
    let mut streams = Vec::with_capacity(channels.len());
    for (u, ch) in channels.iter().enumerate() {
        let fail = |e: &dyn std::fmt::Display| {
            format!("user {u}: cannot connect to Redis at {server}: {e}")
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(&"--bind-timeout passed"));
        }
        let mut s = TcpStream::connect_timeout(&server, left).map_err(|e| fail(&e))?;
        s.set_nodelay(true).map_err(|e| fail(&e))?;
        let mut hello = Vec::new();
        resp::command(&mut hello, &[b"HELLO", b"3"]);
        resp::command(&mut hello, &[b"SUBSCRIBE", ch]);
        s.write_all(&hello).map_err(|e| fail(&e))?;
        streams.push(s);
    }
    streams
        .into_iter()
        .zip(channels)
        .enumerate()
        .map(|(u, (s, ch))| {
            subscribed(s, ch, deadline).map_err(|e| format!("user {u} on Redis at {server}: {e}"))
        })
        .collect()
}

/// Reads `HELLO`'s answer and the confirmation of the subscription to `channel`; then
/// the link, non-blocking, with whatever came after them.
fn subscribed(mut s: TcpStream, channel: &[u8], deadline: Instant) -> Result<Link, String> {
    let mut input = vec![0u8; IN_CAP].into_boxed_slice();
    let (mut start, mut end) = (0, 0);
    let mut hello = false;
    loop {
        // Whole frames first; then read more.
        loop {
            let frame = resp::parse(&input[start..end]).map_err(|e| e.to_string())?;
            let Some((frame, used)) = frame else { break };
            start += used;
            match frame {
                Frame::Error(text) if !hello => {
                    return Err(format!(
                        "HELLO 3 refused ({}): the bench speaks RESP3, which needs Redis 6 or later",
                        String::from_utf8_lossy(text)
                    ));
                }
                Frame::Error(text) => {
                    return Err(format!(
                        "SUBSCRIBE refused: {}",
                        String::from_utf8_lossy(text)
                    ));
                }
                Frame::Map(_) if !hello => hello = true,
                Frame::Push(p) if hello => {
                    let mut it = p.iter();
                    if let (Some(Frame::Blob(b"subscribe")), Some(Frame::Blob(ch))) =
                        (it.next(), it.next())
                        && ch == channel
                    {
                        return link(s, input, start, end);
                    }
                }
                // Attributes, and anything else before the answers, are skipped.
                _ => {}
            }
        }
        if start > 0 {
            input.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer to HELLO 3 and SUBSCRIBE within --bind-timeout".into());
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut input[end..]) {
            Ok(0) => return Err("Redis closed the connection while subscribing".into()),
            Ok(n) => end += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("while subscribing: {e}")),
        }
    }
}

fn link(s: TcpStream, input: Box<[u8]>, start: usize, end: usize) -> Result<Link, String> {
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Link {
        stream: mio::net::TcpStream::from_std(s),
        out: Vec::new(),
        written: 0,
        input,
        start,
        end,
        closed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A link to a loopback peer that never reads, and the peer.
    fn pair() -> (Link, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        let input = vec![0u8; IN_CAP].into_boxed_slice();
        (link(s, input, 0, 0).unwrap(), peer)
    }

    #[test]
    fn a_peer_that_does_not_read_cannot_grow_the_queue_past_its_cap() {
        let (mut link, _peer) = pair();
        let body = [b'.'; 64];
        let mut queued = 0usize;
        // Bounded: the cap is reached long before this many.
        for _ in 0..100_000 {
            if !link.publish(b"ch", &body) {
                break;
            }
            queued += 1;
        }
        assert!(queued > 100, "{queued}");
        assert!(link.out.len() <= OUT_CAP + 100, "{}", link.out.len());
        assert!(!link.publish(b"ch", &body), "still refused");
        // What the kernel takes leaves; what it does not stays queued, and is written on
        // a later flush.
        assert!(link.flush());
        assert!(!link.closed);
    }

    #[test]
    fn frames_split_across_reads_are_joined_and_a_bad_frame_closes() {
        let (mut link, mut peer) = pair();
        let mut got = Vec::new();
        let read = |link: &mut Link, got: &mut Vec<i64>| {
            // The peer's bytes are on loopback: a few tries until they are readable.
            for _ in 0..1000 {
                let r = link.read(|f| {
                    if let Frame::Integer(n) = f {
                        got.push(n)
                    }
                });
                if r != Got::Drained {
                    return r;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Got::Drained
        };
        peer.write_all(b":1\r\n:2").unwrap();
        assert_eq!(read(&mut link, &mut got), Got::Bytes { drained: true });
        assert_eq!(got, [1]);
        peer.write_all(b"5\r\n").unwrap();
        assert_eq!(read(&mut link, &mut got), Got::Bytes { drained: true });
        assert_eq!(got, [1, 25]);
        peer.write_all(b"?\r\n").unwrap();
        assert_eq!(read(&mut link, &mut got), Got::Closed);
        assert!(link.closed && !link.publish(b"ch", b"x"));
        drop(peer);
    }
}
