//! Who may open a connection: the connection limits, per IP and in total, and the bounded
//! set of refusals still being answered. Sans-IO: the loop asks, then tells when a
//! connection goes.

use std::net::IpAddr;

use crate::server::per_ip::PerIp;

/// Metrics connections open at once; they do not count against the chat limits, so a
/// scrape never costs a chat client its slot.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Refused connections held at once while their SERVER_FULL answer drains; past this they
/// are closed unanswered, so refusing costs bounded memory.
pub const MAX_REFUSED: usize = 1024;

/// Connection limits enforced by the loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections over all peers.
    pub max_connections: usize,
    /// Open connections from one IP (0: no limit).
    pub max_connections_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 64,
        }
    }
}

/// What a connection speaks (which listener it came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCRP, on the main listener.
    Tcrp,
    /// One HTTP request for metrics, on the metrics listener.
    Http,
    /// HTTP and WebSocket sessions, on the web listener; counted like TCRP (PROTOCOL.md
    /// §6: every web connection counts for the connection limits from accept).
    Web,
}

/// The verdict on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Served; it counts against the limits until released.
    Counted,
    /// Over a limit: told so (SERVER_FULL, 503) and closed; held as a refusal.
    Refused,
    /// Over a limit with too many refusals pending: closed unanswered.
    Dropped,
}

/// Open connections, as the limits count them.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    /// Open TCRP and web connections.
    tcrp: usize,
    /// Open TCRP and web connections per client IP.
    per_ip: PerIp,
    /// Open metrics connections.
    metrics: usize,
    /// Refused connections still answering.
    refused: usize,
}

impl Admission {
    /// Counts under `limits`.
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            ..Admission::default()
        }
    }

    /// Decides on a `kind` connection from `ip`, and counts it unless dropped.
    pub fn admit(&mut self, kind: Kind, ip: IpAddr) -> Admit {
        let ip = ip.to_canonical();
        let full = match kind {
            Kind::Tcrp | Kind::Web => {
                self.tcrp >= self.limits.max_connections
                    || self.per_ip.at_cap(ip, self.limits.max_connections_per_ip)
            }
            Kind::Http => self.metrics >= MAX_METRICS_CONNECTIONS,
        };
        if full && self.refused >= MAX_REFUSED {
            return Admit::Dropped;
        }
        if full {
            self.refused += 1;
            return Admit::Refused;
        }
        match kind {
            Kind::Tcrp | Kind::Web => {
                self.tcrp += 1;
                self.per_ip.add(ip);
            }
            Kind::Http => self.metrics += 1,
        }
        Admit::Counted
    }

    /// A connection admitted as `admit` (not [`Admit::Dropped`]) has gone.
    pub fn release(&mut self, kind: Kind, admit: Admit, ip: IpAddr) {
        match (admit, kind) {
            (Admit::Dropped, _) => {}
            (Admit::Refused, _) => self.refused -= 1,
            (Admit::Counted, Kind::Http) => self.metrics -= 1,
            (Admit::Counted, Kind::Tcrp | Kind::Web) => {
                self.tcrp -= 1;
                self.per_ip.remove(ip.to_canonical());
            }
        }
    }

    /// Open TCRP and web connections (those that count against the limits).
    pub fn connections(&self) -> usize {
        self.tcrp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_in_total_and_on_refusals() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let mut adm = Admission::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
        });
        assert_eq!(adm.admit(Kind::Tcrp, a), Admit::Counted);
        assert_eq!(adm.admit(Kind::Tcrp, a), Admit::Counted);
        assert_eq!(adm.admit(Kind::Tcrp, a), Admit::Refused, "per-IP cap");
        assert_eq!(adm.admit(Kind::Tcrp, b), Admit::Counted);
        assert_eq!(adm.admit(Kind::Tcrp, b), Admit::Refused, "total cap");
        assert_eq!(adm.connections(), 3);
        adm.release(Kind::Tcrp, Admit::Counted, a);
        assert_eq!(
            adm.admit(Kind::Web, a),
            Admit::Counted,
            "web counts like TCRP"
        );
        assert_eq!(
            adm.admit(Kind::Tcrp, a),
            Admit::Refused,
            "per-IP cap, web included"
        );
        adm.release(Kind::Tcrp, Admit::Refused, a);
        adm.release(Kind::Web, Admit::Counted, a);
        assert_eq!(
            adm.admit(Kind::Tcrp, "127.0.0.2".parse().unwrap()),
            Admit::Counted
        );
        for _ in 0..MAX_METRICS_CONNECTIONS {
            assert_eq!(adm.admit(Kind::Http, a), Admit::Counted);
        }
        assert_eq!(adm.admit(Kind::Http, a), Admit::Refused);
        for _ in 3..MAX_REFUSED {
            assert_eq!(adm.admit(Kind::Http, a), Admit::Refused);
        }
        assert_eq!(
            adm.admit(Kind::Tcrp, a),
            Admit::Dropped,
            "refusals are bounded"
        );
        adm.release(Kind::Http, Admit::Refused, a);
        assert_eq!(adm.admit(Kind::Tcrp, a), Admit::Refused);
    }
}
