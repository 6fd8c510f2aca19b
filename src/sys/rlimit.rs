//! The process's open-file limit.
//!
//! This file holds `unsafe`: `getrlimit`/`setrlimit`, which std does not offer.

use std::io;

/// Raises the soft open-file limit to the hard one (every TCP connection and every bench
/// socket is a descriptor). Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// Where Linux says how high the hard open-file limit may go.
const NR_OPEN_PATH: &str = "/proc/sys/fs/nr_open";

/// Raises the open-file limit towards `want` descriptors: the soft limit up to the hard
/// one, and where that is not enough the hard one too, up to the kernel's cap
/// (`/proc/sys/fs/nr_open`), which only a privileged process (root, CAP_SYS_RESOURCE) may
/// do; elsewhere the hard limit stays. Returns the soft limit now in force, which is below
/// `want` when it could not be raised that far (the caller says what to do).
pub fn raise_nofile_limit_to(want: u64) -> io::Result<u64> {
    let now = raise_nofile_limit()?;
    if now >= want {
        return Ok(now);
    }
    let cap = std::fs::read_to_string(NR_OPEN_PATH)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(now);
    let target = want.min(cap);
    if target <= now {
        return Ok(now);
    }
    let lim = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: target as libc::rlim_t,
    };
    // SAFETY: setrlimit only reads the struct, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        // Not privileged: the limit stays where it was, which is no error of the caller's.
        return Ok(now);
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_what_is_already_there_changes_nothing() {
        let now = raise_nofile_limit().unwrap();
        assert_eq!(raise_nofile_limit_to(16).unwrap(), now);
        // Asking for more never lowers it.
        assert!(raise_nofile_limit_to(now + 1).unwrap() >= now);
    }

    #[test]
    fn nofile_limit_is_at_least_what_it_was() {
        assert!(raise_nofile_limit().unwrap() >= 256);
    }
}
