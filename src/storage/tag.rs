//! Tags: the spec a user types (`[org/]name[~N]`) and the records of a tag
//! stream file (`tags/<org>/<name>.tag`), as spfs 0.44 writes them.
//!
//! A stream file is a sequence of `[i64 big-endian length][record]`, oldest
//! first. A record is: org NUL (empty if none), name NUL, target digest,
//! user NUL, time (RFC 3339, UTC, as chrono's `to_rfc3339` prints it) NUL,
//! parent digest. A tag's parent is the digest of the previous newest
//! record (NULL for the first); a record's digest is the SHA-256 of its bytes.

use std::fmt;

use time::OffsetDateTime;

use super::error::StorageError;
use crate::encoding::{write, Digest, Reader};

/// `[org/]name[~N]`: a tag stream and a version in it (0 = newest).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagSpec {
    org: Option<String>,
    name: String,
    version: u64,
}

impl TagSpec {
    /// Parse `[org/]name[~N]`. Names hold `A-Z a-z 0-9 - _ .`; the org may
    /// also hold `/` between non-empty parts. `.` and `..` are refused as a
    /// name or org part, since they would leave the tags folder.
    pub fn parse(text: &str) -> Result<TagSpec, StorageError> {
        let invalid = |reason: String| StorageError::InvalidTagSpec {
            spec: text.to_string(),
            reason,
        };
        let (org, rest) = match text.rsplit_once('/') {
            Some((org, rest)) => (Some(org), rest),
            None => (None, text),
        };
        let (name, version) = match rest.split_once('~') {
            Some((name, version)) => (name, Some(version)),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid("the tag name is empty".into()));
        }
        if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(invalid(format!("the name {name:?} holds {c:?}")));
        }
        if name == "." || name == ".." {
            return Err(invalid(format!("{name:?} cannot be a tag name")));
        }
        let org = match org {
            None => None,
            Some(org) => {
                for part in org.split('/') {
                    if part.is_empty() {
                        return Err(invalid(format!("the org {org:?} has an empty part")));
                    }
                    if part == "." || part == ".." {
                        return Err(invalid(format!("the org {org:?} holds {part:?}")));
                    }
                    if let Some(c) = part.chars().find(|c| !is_name_char(*c)) {
                        return Err(invalid(format!("the org {org:?} holds {c:?}")));
                    }
                }
                Some(org.to_string())
            }
        };
        let version = match version {
            None => 0,
            Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
                v.parse::<u64>()
                    .map_err(|_| invalid(format!("the version ~{v} is too large")))?
            }
            Some(v) => {
                return Err(invalid(format!(
                    "the version after '~' must be a number of steps back, not {v:?}"
                )))
            }
        };
        Ok(TagSpec {
            org,
            name: name.to_string(),
            version,
        })
    }

    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// `org/name` (or `name`), without `~N`.
    pub fn path(&self) -> String {
        match &self.org {
            Some(org) => format!("{org}/{}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn with_version(&self, version: u64) -> TagSpec {
        TagSpec {
            version,
            ..self.clone()
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl fmt::Display for TagSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())?;
        if self.version != 0 {
            write!(f, "~{}", self.version)?;
        }
        Ok(())
    }
}

impl fmt::Debug for TagSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagSpec({self})")
    }
}

impl std::str::FromStr for TagSpec {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TagSpec::parse(s)
    }
}

/// One version of a tag: what it pointed at, who set it, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub org: Option<String>,
    pub name: String,
    pub target: Digest,
    /// Digest of the record that was newest when this one was pushed.
    pub parent: Digest,
    /// `user@host`.
    pub user: String,
    /// UTC, microsecond precision.
    pub time: OffsetDateTime,
}

impl Tag {
    /// `org/name` (or `name`).
    pub fn path(&self) -> String {
        match &self.org {
            Some(org) => format!("{org}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The spec of this tag's stream at `version`.
    pub fn spec(&self, version: u64) -> TagSpec {
        TagSpec {
            org: self.org.clone(),
            name: self.name.clone(),
            version,
        }
    }

    /// The record's bytes, as stored in a stream file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write::cstr(&mut out, self.org.as_deref().unwrap_or(""));
        write::cstr(&mut out, &self.name);
        write::digest(&mut out, &self.target);
        write::cstr(&mut out, &self.user);
        write::cstr(&mut out, &format_time(self.time));
        write::digest(&mut out, &self.parent);
        out
    }

    /// The digest of the record (what the next tag's `parent` holds, and
    /// what `spfs info` shows as the tag's digest).
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }

    /// Decode one record (without its length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Tag, StorageError> {
        let mut r = Reader::new(bytes);
        let org = r.cstr("tag org")?;
        let org = (!org.is_empty()).then(|| org.to_string());
        let name = r.cstr("tag name")?.to_string();
        let target = r.digest("tag target")?;
        let user = r.cstr("tag user")?.to_string();
        let time_text = r.cstr("tag time")?;
        let time = parse_time(time_text)?;
        let parent = r.digest("tag parent")?;
        if !r.is_empty() {
            return Err(StorageError::invalid_object(format!(
                "{} unexpected bytes after a tag record",
                r.remaining()
            )));
        }
        Ok(Tag {
            org,
            name,
            target,
            parent,
            user,
            time,
        })
    }

    /// Order inside a stream: by time, then target, parent and user (as spfs).
    pub(crate) fn stream_order(&self, other: &Tag) -> std::cmp::Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| self.target.cmp(&other.target))
            .then_with(|| self.parent.cmp(&other.parent))
            .then_with(|| self.user.cmp(&other.user))
    }
}

/// The fields `spfs info` prints for a tag, one per line.
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tag: {}", self.path())?;
        writeln!(f, "digest: {}", self.digest())?;
        writeln!(f, "target: {}", self.target)?;
        writeln!(f, "parent: {}", self.parent)?;
        writeln!(f, "user: {}", self.user)?;
        write!(f, "time: {}", format_time(self.time))
    }
}

/// A tag's time as chrono's `DateTime<Utc>::to_rfc3339` prints it: the
/// fraction has 0, 3, 6 or 9 digits, whichever is the shortest exact one,
/// and the offset is `+00:00`.
pub fn format_time(time: OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    let nanos = t.nanosecond();
    let frac = if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A record's time: RFC 3339 with any offset, kept in UTC. The UTC time
/// must fall in the years 0000 to 9999, so that [`format_time`] prints it
/// back as RFC 3339 (`9999-12-31T23:59:59-01:00` is a valid RFC 3339 text
/// whose UTC year is 10000).
fn parse_time(text: &str) -> Result<OffsetDateTime, StorageError> {
    let invalid = |reason: String| {
        StorageError::invalid_object(format!("tag time {text:?} is not usable ({reason})"))
    };
    let time = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| invalid(format!("not RFC 3339: {e}")))?;
    time.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
        .ok_or_else(|| invalid("in UTC it falls outside the years 0000 to 9999".into()))
}

/// Now, in UTC, truncated to microseconds (spfs keeps no more).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    let micros = t.nanosecond() / 1_000 * 1_000;
    t.replace_nanosecond(micros).unwrap_or(t)
}

/// Decode a whole stream file, oldest first.
pub fn decode_stream(bytes: &[u8]) -> Result<Vec<Tag>, StorageError> {
    let mut r = Reader::new(bytes);
    let mut tags = Vec::new();
    while !r.is_empty() {
        let len = r.i64_be("tag record length")?;
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= r.remaining())
            .ok_or_else(|| {
                StorageError::invalid_object(format!(
                    "tag record length {len} at offset {} does not fit the {} bytes left",
                    r.position() - 8,
                    r.remaining()
                ))
            })?;
        tags.push(Tag::decode(r.bytes(len, "tag record")?)?);
    }
    Ok(tags)
}

/// Encode a whole stream file from tags oldest first.
pub fn encode_stream(tags: &[Tag]) -> Vec<u8> {
    let mut out = Vec::new();
    for tag in tags {
        let record = tag.encode();
        out.extend_from_slice(&(record.len() as i64).to_be_bytes());
        out.extend_from_slice(&record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let s = TagSpec::parse("my-package/1.0.0").unwrap();
        assert_eq!(
            (s.org(), s.name(), s.version()),
            (Some("my-package"), "1.0.0", 0)
        );
        assert_eq!(s.to_string(), "my-package/1.0.0");
        let s = TagSpec::parse("a/b/c~3").unwrap();
        assert_eq!((s.org(), s.name(), s.version()), (Some("a/b"), "c", 3));
        assert_eq!(s.to_string(), "a/b/c~3");
        assert_eq!(s.path(), "a/b/c");
        assert_eq!(s.with_version(0).to_string(), "a/b/c");
        let s = TagSpec::parse("plain~0").unwrap();
        assert_eq!((s.org(), s.version()), (None, 0));
        assert_eq!(s.to_string(), "plain");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for (bad, says) in [
            ("", "empty"),
            ("org/", "empty"),
            ("~1", "empty"),
            ("te st", "' '"),
            ("a/b c", "' '"),
            ("name~x", "number"),
            ("name~", "number"),
            ("name~-1", "number"),
            ("../up", ".."),
            ("a//b", "empty part"),
            ("/abs", "empty part"),
            ("..", "cannot be a tag name"),
        ] {
            let err = TagSpec::parse(bad).expect_err(bad).with_fix();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains("fix:"), "{err}");
        }
    }

    #[test]
    fn time_formats_like_chrono() {
        use time::macros::datetime;
        assert_eq!(
            format_time(datetime!(2026-11-26 15:26:03.031088 UTC)),
            "2026-11-26T15:26:03.031088+00:00"
        );
        assert_eq!(
            format_time(datetime!(2026-01-02 03:04:05 UTC)),
            "2026-01-02T03:04:05+00:00"
        );
        assert_eq!(
            format_time(datetime!(2026-01-02 03:04:05.5 UTC)),
            "2026-01-02T03:04:05.500+00:00"
        );
    }

    #[test]
    fn corrupt_streams_are_errors() {
        assert!(decode_stream(&[0, 0, 0, 0, 0, 0, 0, 50, 1]).is_err());
        assert!(decode_stream(&[0xff; 8]).is_err());
        assert!(decode_stream(&[0, 0]).is_err());
        assert_eq!(decode_stream(&[]).unwrap(), vec![]);
    }

    fn record(time: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write::cstr(&mut out, "test");
        write::cstr(&mut out, "base");
        write::digest(&mut out, &Digest::EMPTY);
        write::cstr(&mut out, "root@vm");
        write::cstr(&mut out, time);
        write::digest(&mut out, &Digest::NULL);
        out
    }

    /// Found by the decoder fuzzer: a valid RFC 3339 time whose UTC year is
    /// out of range panicked in `to_offset`; one whose UTC year is negative
    /// decoded but printed back as text that does not parse.
    #[test]
    fn times_outside_years_0_to_9999_in_utc_are_errors_not_panics() {
        for time in [
            "9999-12-31T23:59:59.999999-23:59",
            "9999-12-31T23:59:59-00:01",
            "0000-01-01T00:00:00+00:01",
            "0000-01-01T00:00:00.000001+23:59",
        ] {
            let err = Tag::decode(&record(time)).expect_err(time).to_string();
            assert!(
                err.contains("outside the years 0000 to 9999"),
                "{time}: {err}"
            );
        }
        // the edges themselves are fine, and print back as they were
        for time in [
            "9999-12-31T23:59:59.999999+00:00",
            "0000-01-01T00:00:00+00:00",
        ] {
            let tag = Tag::decode(&record(time)).expect(time);
            assert_eq!(format_time(tag.time), time);
            assert_eq!(Tag::decode(&tag.encode()).unwrap(), tag);
        }
        // an offset is kept as the same instant in UTC
        let tag = Tag::decode(&record("2026-01-01T00:30:00+01:00")).unwrap();
        assert_eq!(format_time(tag.time), "2025-12-31T23:30:00+00:00");
    }
}
