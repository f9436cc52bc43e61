//! Deterministic objects: body bytes, sizes, validators, HTTP dates and
//! entity-tag comparison.
//!
//! Everything here is a pure function of (seed, target, variant, version), so
//! a test or a cache checker can recompute what the origin sent byte for byte
//! without asking it.

use bytes::Bytes;

/// splitmix64's increment (the golden ratio); also spreads indices apart.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a fast, well-mixed 64-bit permutation.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over `parts` (each followed by a 0xff separator, which cannot occur
/// in UTF-8, so ("ab","c") and ("a","bc") differ), finalised with [`mix64`].
/// Written out rather than taken from a hasher crate so the values never
/// change under a dependency upgrade: expected bodies stay reproducible.
pub(crate) fn hash_parts(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ mix64(seed);
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01B3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    mix64(h)
}

/// The `i`-th 8-byte word of the stream seeded by `seed` (counter-based, so
/// any offset can be generated without producing what comes before it).
#[inline]
fn word(seed: u64, i: u64) -> u64 {
    mix64(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the stream
/// seeded by `body_seed`.
pub fn fill_body(body_seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut out = 0usize;
    while out < buf.len() {
        let w = word(body_seed, pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - out);
        buf[out..out + n].copy_from_slice(&w[start..start + n]);
        out += n;
        pos += n as u64;
    }
}

/// The whole body of `size_bytes` bytes seeded by `body_seed`.
pub fn body_bytes(body_seed: u64, size_bytes: u64) -> Bytes {
    let len = usize::try_from(size_bytes).unwrap_or(usize::MAX);
    let mut v = vec![0u8; len];
    fill_body(body_seed, 0, &mut v);
    Bytes::from(v)
}

/// A uniform value in `[0, 1)` from a 64-bit hash.
#[inline]
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------
// HTTP dates (RFC 9110 §5.6.7). Written here rather than pulling a crate: the
// origin only needs IMF-fixdate out and IMF-fixdate in.

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats seconds since the Unix epoch as an IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn fmt_http_date(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses an IMF-fixdate into seconds since the Unix epoch. The two obsolete
/// formats (RFC 850, asctime) are not accepted: RFC 9110 lets a recipient
/// ignore a date it cannot parse, and then the conditional is simply not
/// evaluated (a full 200, never a wrong 304).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim();
    let mut it = s.split(' ');
    let wd = it.next()?.strip_suffix(',')?;
    let d: u32 = parse_digits(it.next()?, 2)?;
    let mon = it.next()?;
    let y: i64 = i64::from(parse_digits(it.next()?, 4)?);
    let time = it.next()?;
    if it.next()? != "GMT" || it.next().is_some() {
        return None;
    }
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let mut t = time.split(':');
    let hh: u64 = parse_digits(t.next()?, 2)?.into();
    let mm: u64 = parse_digits(t.next()?, 2)?.into();
    let ss: u64 = parse_digits(t.next()?, 2)?.into();
    if t.next().is_some() || hh > 23 || mm > 59 || ss > 60 || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if days < 0 || civil_from_days(days) != (y, m, d) {
        return None; // before 1970, or a day the month does not have
    }
    if DAYS[(days % 7) as usize] != wd {
        return None;
    }
    Some(days as u64 * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn parse_digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Howard Hinnant's `civil_from_days`: (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------
// Entity tags (RFC 9110 §8.8.3).

/// One parsed entity-tag: weakness and the opaque part between the quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// Whether it carried the `W/` prefix.
    pub weak: bool,
    /// The characters between the double quotes.
    pub opaque: &'a str,
}

impl<'a> EntityTag<'a> {
    /// Parses one entity-tag (`"xyz"` or `W/"xyz"`).
    pub fn parse(s: &'a str) -> Option<Self> {
        let s = s.trim();
        let (weak, rest) = match s.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
        // etagc = %x21 / %x23-7E / obs-text: no DQUOTE, no spaces, no controls.
        if opaque.bytes().any(|b| b == b'"' || b <= 0x20 || b == 0x7f) {
            return None;
        }
        Some(EntityTag { weak, opaque })
    }

    /// Strong comparison: both strong and the opaque parts equal (If-Match).
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the opaque parts equal, weakness ignored (If-None-Match).
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// A parsed `If-Match` / `If-None-Match` field value.
#[derive(Debug, PartialEq, Eq)]
pub enum EtagCondition<'a> {
    /// `*`: any current representation.
    Any,
    /// A list of entity-tags.
    Tags(Vec<EntityTag<'a>>),
}

impl<'a> EtagCondition<'a> {
    /// Parses the combined field values (several header lines are one
    /// comma-separated list). `None` when any member is malformed: the
    /// condition is then ignored, which errs toward a full response.
    pub fn parse<I: IntoIterator<Item = &'a str>>(values: I) -> Option<Self> {
        let mut tags = Vec::new();
        let mut any = false;
        for v in values {
            for member in split_etag_list(v) {
                let member = member.trim();
                if member.is_empty() {
                    continue; // RFC 9110 §5.6.1: empty list elements are ignored
                }
                if member == "*" {
                    any = true;
                } else {
                    tags.push(EntityTag::parse(member)?);
                }
            }
        }
        match (any, tags.is_empty()) {
            (true, true) => Some(EtagCondition::Any),
            (false, false) => Some(EtagCondition::Tags(tags)),
            _ => None, // "*" mixed with tags, or nothing at all
        }
    }

    /// Whether `current` (the representation's tag, if it has one) matches,
    /// with the weak (`strong == false`) or strong comparison.
    pub fn matches(&self, current: Option<&EntityTag<'_>>, strong: bool) -> bool {
        match (self, current) {
            (EtagCondition::Any, c) => c.is_some(),
            (EtagCondition::Tags(_), None) => false,
            (EtagCondition::Tags(tags), Some(c)) => tags
                .iter()
                .any(|t| if strong { t.strong_eq(c) } else { t.weak_eq(c) }),
        }
    }
}

/// Splits on commas outside double quotes (an opaque tag may contain commas).
fn split_etag_list(v: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut in_quotes = false;
    let mut parts = Vec::new();
    for (i, b) in v.bytes().enumerate() {
        match b {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_offset_independent() {
        let whole = body_bytes(42, 1000);
        for (off, len) in [(0, 1000), (3, 10), (7, 1), (8, 16), (995, 5), (500, 0)] {
            let mut part = vec![0u8; len];
            fill_body(42, off as u64, &mut part);
            assert_eq!(&part[..], &whole[off..off + len], "offset {off}");
        }
        assert_ne!(body_bytes(43, 64), body_bytes(42, 64));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(fmt_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        for t in [0, 951_782_400, 1_700_000_000, 4_102_444_800 + 86_399] {
            assert_eq!(parse_http_date(&fmt_http_date(t)), Some(t), "{t}");
        }
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn etag_comparison() {
        let strong = EntityTag::parse("\"a\"").unwrap();
        let weak = EntityTag::parse("W/\"a\"").unwrap();
        assert!(weak.weak_eq(&strong) && !weak.strong_eq(&strong) && strong.strong_eq(&strong));
        let c = EtagCondition::parse(["\"x\", W/\"a\"", "\"b,c\""]).unwrap();
        assert!(c.matches(Some(&strong), false));
        assert!(!c.matches(Some(&strong), true));
        assert!(c.matches(Some(&EntityTag::parse("\"b,c\"").unwrap()), true));
        assert!(
            EtagCondition::parse(["*"])
                .unwrap()
                .matches(Some(&weak), true)
        );
        assert!(!EtagCondition::parse(["*"]).unwrap().matches(None, false));
        assert_eq!(EtagCondition::parse(["a"]), None);
        assert_eq!(EtagCondition::parse(["*, \"a\""]), None);
    }
}
