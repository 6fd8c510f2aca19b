//! Counts kept per client IP address, for the per-IP limits (rooms created, members,
//! connections).
//!
//! One type for the three counters, so that "count up, count down, forget the address at
//! zero, compare with a cap where 0 means no limit" is written once. Entries at zero are
//! removed, so memory follows the addresses in use, not every address ever seen.

use std::collections::HashMap;
use std::net::IpAddr;

/// A count per IP address; addresses at zero are not stored.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: HashMap<IpAddr, u32>,
}

impl PerIp {
    /// The count for `ip` (0 when absent).
    pub fn get(&self, ip: IpAddr) -> u32 {
        self.counts.get(&ip).copied().unwrap_or(0)
    }

    /// Whether `ip` has reached `cap` (a cap of 0 means no limit).
    pub fn at_cap(&self, ip: IpAddr, cap: u32) -> bool {
        cap != 0 && self.get(ip) >= cap
    }

    /// Counts one more for `ip`.
    pub fn add(&mut self, ip: IpAddr) {
        *self.counts.entry(ip).or_default() += 1;
    }

    /// Counts one less for `ip`, forgetting the address at zero. A release without a
    /// matching [`PerIp::add`] is ignored rather than wrapped.
    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    /// The sum over every address (walks them all: for invariant checks, not hot paths).
    pub fn total(&self) -> usize {
        self.counts.values().map(|&n| n as usize).sum()
    }

    /// Addresses with a non-zero count.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no address has a count.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_forgets_at_zero() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let mut p = PerIp::default();
        assert!(!p.at_cap(a, 0), "0 is no limit");
        p.add(a);
        p.add(a);
        p.add(b);
        assert_eq!((p.get(a), p.get(b), p.total(), p.len()), (2, 1, 3, 2));
        assert!(p.at_cap(a, 2) && !p.at_cap(a, 3) && !p.at_cap(a, 0));
        p.remove(a);
        p.remove(a);
        p.remove(a); // unmatched: ignored
        assert_eq!((p.get(a), p.len()), (0, 1));
        p.remove(b);
        assert!(p.is_empty());
    }
}
