//! RESP3, the Redis protocol, as far as the bench needs it: a command encoder and a parser.
//!
//! [`parse`] is a pure function from bytes to one frame: `Ok(Some((frame, used)))`,
//! `Ok(None)` when the bytes end before the frame does (a TCP stream may stop anywhere), or
//! a typed [`ParseError`]. It never panics and never allocates: a frame borrows from the
//! input, and an aggregate (array, map, set, push) is checked whole but handed back as its
//! encoded elements, walked with [`Aggregate::iter`]. Every delivery the bench receives is
//! one push frame, so the hot path costs no allocation.
//!
//! Sizes are checked against the limits before anything is read past them, so a hostile
//! or broken server cannot make the bench wait for, or buffer, more than [`MAX_FRAME`]
//! bytes for one frame, nor recurse deeper than [`MAX_DEPTH`].

use std::fmt;

/// Largest frame accepted, in bytes: a delivery is its channel name (at most a few dozen
/// bytes) and a message of at most 3 800, and `HELLO`'s answer is a few hundred; a larger
/// frame is nothing the bench asked for.
pub const MAX_FRAME: usize = 16 * 1024;

/// Deepest nesting accepted: the bench's frames nest two deep (`HELLO`'s map holds an
/// array of modules); the limit bounds the parser's recursion whatever the input.
pub const MAX_DEPTH: usize = 8;

/// Longest decimal length or integer line, digits and sign: an `i64` has at most 20.
const MAX_NUMBER: usize = 20;

/// One RESP3 frame, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `+`: a simple string.
    Simple(&'a [u8]),
    /// `-` (simple) or `!` (blob): an error, its text.
    Error(&'a [u8]),
    /// `:`: a signed 64-bit integer.
    Integer(i64),
    /// `$`: a bulk string.
    Blob(&'a [u8]),
    /// `=`: a verbatim string, its 3-letter format and `:` included.
    Verbatim(&'a [u8]),
    /// `_`, and RESP2's null bulk string and null array (`$-1`, `*-1`).
    Null,
    /// `#t` or `#f`.
    Boolean(bool),
    /// `,`: a double, as its text.
    Double(&'a [u8]),
    /// `(`: a big number, as its text.
    BigNumber(&'a [u8]),
    /// `*`: an array.
    Array(Aggregate<'a>),
    /// `~`: a set.
    Set(Aggregate<'a>),
    /// `%`: a map; its elements alternate key, value.
    Map(Aggregate<'a>),
    /// `|`: attributes of the frame that follows (a map, alternating key, value).
    Attribute(Aggregate<'a>),
    /// `>`: out-of-band data, such as a message on a subscribed channel.
    Push(Aggregate<'a>),
}

/// The elements of an aggregate frame, already checked, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate<'a> {
    len: usize,
    bytes: &'a [u8],
}

impl<'a> Aggregate<'a> {
    /// How many elements (a map's keys and values both count).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its elements in order.
    pub fn iter(&self) -> Elements<'a> {
        Elements {
            rest: self.bytes,
            left: self.len,
        }
    }
}

/// The elements of an [`Aggregate`], parsed one at a time.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.left == 0 {
            return None;
        }
        // The aggregate was checked whole, so this parses; were it not to, the walk ends.
        let (frame, used) = parse(self.rest).ok().flatten()?;
        self.rest = &self.rest[used..];
        self.left -= 1;
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Why bytes are not RESP3 the bench accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The first byte of a frame is no RESP3 type.
    UnknownType(u8),
    /// A length or an integer that is not a decimal number in range.
    BadNumber,
    /// A line holds a CR or LF of its own, or a bulk string does not end with CRLF.
    BadTerminator,
    /// `#` followed by neither `t` nor `f`, or `_` followed by something.
    BadValue,
    /// A streamed string or aggregate (`$?`, `*?`): Redis sends none, so neither do we read them.
    Streamed,
    /// The frame would be longer than [`MAX_FRAME`].
    TooLarge,
    /// Aggregates nest deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownType(b) => write!(f, "unknown RESP3 type byte 0x{b:02x}"),
            ParseError::BadNumber => {
                f.write_str("a length or integer that is not a number in range")
            }
            ParseError::BadTerminator => f.write_str("a line or bulk string not ended by CRLF"),
            ParseError::BadValue => f.write_str("a boolean or null with a bad value"),
            ParseError::Streamed => f.write_str("a streamed string or aggregate"),
            ParseError::TooLarge => write!(f, "a frame longer than {MAX_FRAME} bytes"),
            ParseError::TooDeep => write!(f, "aggregates nested deeper than {MAX_DEPTH}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// One frame at the start of `input`, and how many bytes it took; `Ok(None)` when `input`
/// ends before the frame does.
pub fn parse(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ParseError> {
    parse_at(input, 0, 0)
}

/// Parses the frame at `input[at..]`, `depth` aggregates deep; returns the frame and the
/// offset just past it.
fn parse_at(
    input: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(Frame<'_>, usize)>, ParseError> {
    let Some(&kind) = input.get(at) else {
        return Ok(None);
    };
    // A byte that starts no frame is refused before its line is waited for.
    if !b"+-:,(#_$=!*~%|>".contains(&kind) {
        return Err(ParseError::UnknownType(kind));
    }
    let Some((line, next)) = line(input, at + 1)? else {
        return Ok(None);
    };
    let frame = match kind {
        b'+' => Frame::Simple(line),
        b'-' => Frame::Error(line),
        b':' => Frame::Integer(integer(line)?),
        b',' => Frame::Double(line),
        b'(' => Frame::BigNumber(line),
        b'#' => match line {
            b"t" => Frame::Boolean(true),
            b"f" => Frame::Boolean(false),
            _ => return Err(ParseError::BadValue),
        },
        b'_' if line.is_empty() => Frame::Null,
        b'_' => return Err(ParseError::BadValue),
        b'$' | b'=' | b'!' => {
            if line == b"-1" && kind == b'$' {
                return Ok(Some((Frame::Null, next)));
            }
            let Some((body, end)) = blob(input, next, length(line)?)? else {
                return Ok(None);
            };
            let frame = match kind {
                b'$' => Frame::Blob(body),
                b'=' => Frame::Verbatim(body),
                _ => Frame::Error(body),
            };
            return Ok(Some((frame, end)));
        }
        b'*' | b'~' | b'%' | b'|' | b'>' => {
            if line == b"-1" && kind == b'*' {
                return Ok(Some((Frame::Null, next)));
            }
            let count = length(line)?;
            // A map or attribute of n pairs is 2n elements.
            let len = if matches!(kind, b'%' | b'|') {
                count.checked_mul(2).ok_or(ParseError::TooLarge)?
            } else {
                count
            };
            let Some(end) = elements(input, next, len, depth + 1)? else {
                return Ok(None);
            };
            let agg = Aggregate {
                len,
                bytes: &input[next..end],
            };
            let frame = match kind {
                b'*' => Frame::Array(agg),
                b'~' => Frame::Set(agg),
                b'%' => Frame::Map(agg),
                b'|' => Frame::Attribute(agg),
                _ => Frame::Push(agg),
            };
            return Ok(Some((frame, end)));
        }
        other => return Err(ParseError::UnknownType(other)),
    };
    Ok(Some((frame, next)))
}

/// The line starting at `at`, up to its CRLF, and the offset past the CRLF.
fn line(input: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ParseError> {
    let rest = input.get(at..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if at + rest.len() > MAX_FRAME {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let end = at + cr + 2;
    if end > MAX_FRAME {
        return Err(ParseError::TooLarge);
    }
    match rest.get(cr..cr + 2) {
        Some(b"\r\n") => Ok(Some((&rest[..cr], end))),
        // A CR that may yet be followed by its LF.
        None if rest[cr] == b'\r' => Ok(None),
        _ => Err(ParseError::BadTerminator),
    }
}

/// A bulk string's `len` bytes at `at` and their CRLF; the body and the offset past it.
fn blob(input: &[u8], at: usize, len: usize) -> Result<Option<(&[u8], usize)>, ParseError> {
    let end = at
        .checked_add(len)
        .and_then(|n| n.checked_add(2))
        .filter(|&n| n <= MAX_FRAME)
        .ok_or(ParseError::TooLarge)?;
    let Some(whole) = input.get(at..end) else {
        return Ok(None);
    };
    let (body, crlf) = whole.split_at(len);
    if crlf != b"\r\n" {
        return Err(ParseError::BadTerminator);
    }
    Ok(Some((body, end)))
}

/// Checks `len` frames from `at` on, `depth` deep; the offset past the last.
fn elements(
    input: &[u8],
    mut at: usize,
    len: usize,
    depth: usize,
) -> Result<Option<usize>, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError::TooDeep);
    }
    // Every element takes at least 3 bytes: a count that cannot fit is refused at once.
    if len.saturating_mul(3) > MAX_FRAME {
        return Err(ParseError::TooLarge);
    }
    for _ in 0..len {
        match parse_at(input, at, depth)? {
            Some((_, next)) => at = next,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

/// A length: a non-negative decimal number.
fn length(line: &[u8]) -> Result<usize, ParseError> {
    if line == b"?" {
        return Err(ParseError::Streamed);
    }
    if line.is_empty() || line.len() > MAX_NUMBER {
        return Err(ParseError::BadNumber);
    }
    let mut n = 0usize;
    for &d in line {
        if !d.is_ascii_digit() {
            return Err(ParseError::BadNumber);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(ParseError::BadNumber)?;
    }
    Ok(n)
}

/// An integer: an optional sign and decimal digits, in `i64`'s range.
fn integer(line: &[u8]) -> Result<i64, ParseError> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > MAX_NUMBER {
        return Err(ParseError::BadNumber);
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ParseError::BadNumber);
        }
        let d = i64::from(d - b'0');
        // Accumulated negatively when negative, so i64::MIN fits.
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if negative {
                    n.checked_sub(d)
                } else {
                    n.checked_add(d)
                }
            })
            .ok_or(ParseError::BadNumber)?;
    }
    Ok(n)
}

/// Appends a command, an array of bulk strings, to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        bulk(out, a);
    }
}

/// Appends `PUBLISH channel message` to `out` (the hot path's one command).
pub fn publish(out: &mut Vec<u8>, channel: &[u8], message: &[u8]) {
    command(out, &[b"PUBLISH", channel, message]);
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `kind`, `n` in decimal, CRLF.
fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    let mut digits = [0u8; MAX_NUMBER];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
