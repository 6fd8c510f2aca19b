//! `--loss P`: the bench's own lossy receive path. Each datagram a socket delivers is
//! dropped with probability P before it is read, as if the network had lost it, so the
//! v1.1 recovery (NACK, history) can be measured on a loopback that loses nothing.
//!
//! One [`LossFilter`] per worker, seeded from `--seed` and the worker's index: a run with
//! the same seed, threads and arrival order drops the same datagrams. The generator is
//! xorshift64* (Marsaglia, Vigna): one multiply and three shifts per datagram, no
//! allocation, and statistically far better than a loss test needs.

/// Default `--seed`: fixed, so two runs with the same flags lose alike.
pub const DEFAULT_SEED: u64 = 0x0c_a7_5e_ed;

/// Golden-ratio increment of SplitMix64: spreads nearby seeds (seed, seed + 1, ... for the
/// workers) over unrelated generator states.
const SPLITMIX_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: turns a seed into a well-mixed, non-zero-in-practice state.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(SPLITMIX_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Drops datagrams at random with a fixed probability.
#[derive(Debug, Clone)]
pub struct LossFilter {
    /// xorshift64* state; never 0.
    state: u64,
    /// A datagram is dropped when the next 64-bit draw is below this: P × 2^64, so the
    /// test is one integer compare (P = 0 never drops; P = 1 is refused by the CLI).
    threshold: u64,
}

impl LossFilter {
    /// A filter dropping with probability `p` (clamped to [0, 1)), for worker `index` of a
    /// run seeded with `seed`.
    pub fn new(p: f64, seed: u64, index: usize) -> LossFilter {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // 2^64 as f64; the cast saturates at u64::MAX for p close to 1.
        let threshold = (p * 18_446_744_073_709_551_616.0) as u64;
        let state = splitmix64(seed ^ splitmix64(index as u64));
        LossFilter {
            state: if state == 0 { SPLITMIX_GAMMA } else { state },
            threshold,
        }
    }

    /// Whether the filter ever drops.
    pub fn active(&self) -> bool {
        self.threshold > 0
    }

    /// The next 64 random bits (xorshift64*).
    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Whether to drop the next datagram.
    #[inline]
    pub fn drop_next(&mut self) -> bool {
        self.threshold > 0 && self.next_u64() < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(f: &mut LossFilter, n: u32) -> u32 {
        (0..n).map(|_| u32::from(f.drop_next())).sum()
    }

    #[test]
    fn zero_never_drops() {
        let mut f = LossFilter::new(0.0, DEFAULT_SEED, 0);
        assert!(!f.active());
        assert_eq!(drops(&mut f, 100_000), 0);
        let mut nan = LossFilter::new(f64::NAN, 1, 0);
        assert_eq!(drops(&mut nan, 1_000), 0);
    }

    #[test]
    fn rate_is_within_bounds() {
        // 200 000 draws at p: the count has standard deviation sqrt(n p (1-p)); allow five
        // of them, which a correct generator misses about once in 3.5 million runs.
        let n = 200_000u32;
        for (p, seed, index) in [(0.01, 1, 0), (0.05, DEFAULT_SEED, 3), (0.20, 42, 1)] {
            let mut f = LossFilter::new(p, seed, index);
            assert!(f.active());
            let got = f64::from(drops(&mut f, n));
            let mean = f64::from(n) * p;
            let sd = (mean * (1.0 - p)).sqrt();
            assert!(
                (got - mean).abs() < 5.0 * sd,
                "p {p}: {got} drops of {n}, expected {mean} ± {}",
                5.0 * sd
            );
        }
    }

    #[test]
    fn seeded_and_reproducible() {
        let run = |seed, index| {
            let mut f = LossFilter::new(0.05, seed, index);
            (0..10_000).map(|_| f.drop_next()).collect::<Vec<_>>()
        };
        assert_eq!(run(7, 0), run(7, 0), "same seed and worker, same drops");
        assert_ne!(run(7, 0), run(8, 0), "another seed, other drops");
        assert_ne!(run(7, 0), run(7, 1), "another worker, other drops");
    }

    #[test]
    fn drops_are_not_bunched() {
        // No long runs of drops at 5%: the longest run in 100 000 draws stays short (a
        // run of 6 has probability about 1.6e-8 per position).
        let mut f = LossFilter::new(0.05, DEFAULT_SEED, 0);
        let (mut run, mut longest) = (0u32, 0u32);
        for _ in 0..100_000 {
            if f.drop_next() {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        assert!((1..6).contains(&longest), "longest run of drops {longest}");
    }
}
