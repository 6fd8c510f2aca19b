//! The time of day printed in front of each line: local time from the C library's
//! `localtime_r` (libc is already a dependency, so no date crate is needed), or UTC if
//! the C library cannot say.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::Clock;

/// The current local time of day.
pub fn now() -> Clock {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    local(secs).unwrap_or_else(|| utc(secs))
}

/// The UTC time of day `secs` after the epoch.
pub fn utc(secs: u64) -> Clock {
    let day = secs % 86_400;
    Clock {
        h: (day / 3600) as u8,
        m: (day / 60 % 60) as u8,
        s: (day % 60) as u8,
    }
}

fn local(secs: u64) -> Option<Clock> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain data that `localtime_r` fills in; both pointers are valid for
    // the call, and `localtime_r` (unlike `localtime`) uses no shared static buffer. This
    // program never changes TZ while running.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm
    };
    let field = |v: libc::c_int, max: u8| u8::try_from(v).ok().filter(|&x| x <= max);
    Some(Clock {
        h: field(tm.tm_hour, 23)?,
        m: field(tm.tm_min, 59)?,
        s: field(tm.tm_sec, 60)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_of_day() {
        assert_eq!(utc(0).to_string(), "00:00:00");
        assert_eq!(utc(86_399).to_string(), "23:59:59");
        assert_eq!(utc(1_700_000_000).to_string(), "22:13:20");
    }

    #[test]
    fn local_time_is_a_valid_time_of_day() {
        let c = now();
        assert!(c.h < 24 && c.m < 60 && c.s <= 60);
    }
}
