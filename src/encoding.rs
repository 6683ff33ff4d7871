//! Digests as spfs writes them: SHA-256, shown as RFC 4648 base32 with
//! padding; partial digests (prefixes of that text); a streaming hasher; the
//! big-endian / NUL-terminated primitives of the legacy binary encoding; and
//! [`EncodingError`], what goes wrong decoding any of it (no file involved:
//! `storage` names the file when it wraps one).

use std::fmt;

use data_encoding::{Encoding, BASE32};
use sha2::{Digest as _, Sha256};

/// Bytes or text that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    /// Text that should be a digest is not.
    #[error("invalid digest {text:?}: {reason}")]
    InvalidDigest { text: String, reason: String },

    /// Bytes that should be an encoded object are not.
    #[error("invalid object data: {0}")]
    InvalidObject(String),
}

impl EncodingError {
    /// What to do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            EncodingError::InvalidDigest { .. } => "give a base32 digest as spfs prints it (56 characters ending in ====), or a prefix of one",
            EncodingError::InvalidObject(_) => "the object was damaged or written by an unknown tool; write it again",
        }
    }
}

/// Length of a digest in bytes.
pub const DIGEST_SIZE: usize = 32;
/// Length of a digest as padded base32 text.
pub const DIGEST_TEXT_LEN: usize = 56;

/// A SHA-256 digest: the name of every object and payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// 32 zero bytes: "nothing" (a tag's parent at the start of a stream, a mask's object).
    pub const NULL: Digest = Digest([0; 32]);
    /// The SHA-256 of no bytes.
    pub const EMPTY: Digest = Digest([
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ]);

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Parse a full digest: 56 characters of padded base32, or the 52
    /// characters without the `====` padding.
    pub fn parse(text: &str) -> Result<Digest, EncodingError> {
        let invalid = |reason: &str| EncodingError::InvalidDigest {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let padded = match text.len() {
            DIGEST_TEXT_LEN => text.to_string(),
            52 => format!("{text}===="),
            n => return Err(invalid(&format!("it has {n} characters, a digest has 56"))),
        };
        let bytes = BASE32
            .decode(padded.as_bytes())
            .map_err(|e| invalid(&format!("not base32 ({e})")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| invalid("it does not decode to 32 bytes"))?;
        Ok(Digest(arr))
    }

    /// Padded base32 text, as spfs shows and names files.
    pub fn to_base32(&self) -> String {
        BASE32.encode(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base32())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base32())
    }
}

impl std::str::FromStr for Digest {
    type Err = EncodingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// Streaming SHA-256.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A prefix of a digest's base32 text, as a user may type it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartialDigest {
    text: String,
}

impl PartialDigest {
    /// Accept 1 to 56 base32 characters (upper or lower case; trailing `=`
    /// padding allowed). The text must decode leniently once padded to a
    /// multiple of 8 characters, as spfs requires.
    pub fn parse(text: &str) -> Result<PartialDigest, EncodingError> {
        let invalid = |reason: String| EncodingError::InvalidDigest {
            text: text.to_string(),
            reason,
        };
        let upper = text.trim_end_matches('=').to_ascii_uppercase();
        if upper.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if text.len() > DIGEST_TEXT_LEN {
            return Err(invalid(format!(
                "it has {} characters, more than a digest's 56",
                text.len()
            )));
        }
        if let Some((i, c)) = upper
            .char_indices()
            .find(|(_, c)| !matches!(c, 'A'..='Z' | '2'..='7'))
        {
            return Err(invalid(format!(
                "character {c:?} at position {i} is not base32 (A-Z, 2-7)"
            )));
        }
        // Padded to a multiple of 8, the text must decode leniently (the
        // last character may carry bits past the prefix). Lengths 1, 3 and
        // 6 (mod 8) cannot be padded validly; they are still prefixes of
        // digests, so only their full 8-character groups are decoded.
        let whole = match upper.len() % 8 {
            1 | 3 | 6 => &upper[..upper.len() - upper.len() % 8],
            _ => upper.as_str(),
        };
        if let Err(e) = lenient().decode(pad8(whole).as_bytes()) {
            return Err(invalid(format!(
                "it is not the start of a base32 digest ({e})"
            )));
        }
        Ok(PartialDigest { text: upper })
    }

    /// True if `digest`'s base32 text starts with this prefix.
    pub fn matches(&self, digest: &Digest) -> bool {
        digest.to_base32().starts_with(&self.text)
    }

    /// The prefix, upper case, without padding.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The full digest, if this prefix is one.
    pub fn to_digest(&self) -> Option<Digest> {
        Digest::parse(&self.text).ok()
    }
}

impl fmt::Display for PartialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn pad8(text: &str) -> String {
    let mut s = text.to_string();
    while !s.len().is_multiple_of(8) {
        s.push('=');
    }
    s
}

fn lenient() -> Encoding {
    let mut spec = BASE32.specification();
    spec.check_trailing_bits = false;
    // BASE32's specification is valid, and so it stays with this flag off.
    spec.encoding().unwrap_or_else(|_| BASE32.clone())
}

/// Writers for the legacy binary encoding (also what digests are computed over).
pub(crate) mod write {
    use super::Digest;

    pub fn u64_be(out: &mut Vec<u8>, value: u64) {
        out.extend_from_slice(&value.to_be_bytes());
    }
    pub fn digest(out: &mut Vec<u8>, digest: &Digest) {
        out.extend_from_slice(&digest.0);
    }
    /// The string then one NUL byte.
    pub fn cstr(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }
}

/// A bounds-checked cursor over untrusted bytes. Every read returns an
/// error instead of panicking when the input is short or malformed.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], EncodingError> {
        if self.remaining() < n {
            return Err(EncodingError::InvalidObject(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u64_be(&mut self, what: &str) -> Result<u64, EncodingError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(b))
    }

    pub fn i64_be(&mut self, what: &str) -> Result<i64, EncodingError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(i64::from_be_bytes(b))
    }

    pub fn digest(&mut self, what: &str) -> Result<Digest, EncodingError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.take(32, what)?);
        Ok(Digest(d))
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], EncodingError> {
        self.take(n, what)
    }

    /// A UTF-8 string terminated by one NUL byte.
    pub fn cstr(&mut self, what: &str) -> Result<&'a str, EncodingError> {
        let rest = &self.buf[self.pos..];
        let Some(end) = rest.iter().position(|b| *b == 0) else {
            return Err(EncodingError::InvalidObject(format!(
                "truncated: {what} at offset {} has no NUL terminator",
                self.pos
            )));
        };
        let text = std::str::from_utf8(&rest[..end]).map_err(|e| {
            EncodingError::InvalidObject(format!(
                "{what} at offset {} is not UTF-8 ({e})",
                self.pos
            ))
        })?;
        self.pos += end + 1;
        Ok(text)
    }

    /// A count that must fit in what is left, `min_item` bytes per item
    /// (so a corrupt count cannot make us allocate without bound).
    pub fn count(&mut self, min_item: usize, what: &str) -> Result<usize, EncodingError> {
        let n = self.u64_be(what)?;
        let max = (self.remaining() / min_item.max(1)) as u64;
        if n > max {
            return Err(EncodingError::InvalidObject(format!(
                "{what} says {n} items but only {} bytes are left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_null() {
        assert_eq!(Digest::of(b""), Digest::EMPTY);
        assert_eq!(Digest::NULL.0, [0; 32]);
        assert_eq!(
            Digest::EMPTY.to_base32(),
            "4OYMIQUY7QOBJGX36TEJS35ZEQT24QPEMSNZGTFESWMRW6CSXBKQ===="
        );
    }

    #[test]
    fn parse_round_trip_with_and_without_padding() {
        let text = "J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ====";
        let d = Digest::parse(text).unwrap();
        assert_eq!(d.to_base32(), text);
        assert_eq!(format!("{d}"), text);
        assert_eq!(Digest::parse(&text[..52]).unwrap(), d);
        assert!(Digest::parse("J2W5").is_err());
        assert!(Digest::parse(&text.replace('J', "1")).is_err());
    }

    #[test]
    fn hasher_streams() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        std::io::Write::write_all(&mut h, b"world").unwrap();
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn partial_digests() {
        let d = Digest::parse("J2W56GBLNURZPCYUYXPJEGDYNEZJJ4T76QBWVDKXHVAGWJXOVBCQ====").unwrap();
        for len in 1..=56 {
            let text = &d.to_base32()[..len];
            let p = PartialDigest::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(p.matches(&d), "{text}");
        }
        assert!(PartialDigest::parse("j2w5").unwrap().matches(&d));
        assert!(!PartialDigest::parse("J3").unwrap().matches(&d));
        assert!(PartialDigest::parse("").is_err());
        assert!(PartialDigest::parse("J1").is_err());
        assert!(PartialDigest::parse(&"A".repeat(57)).is_err());
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(r.u64_be("x").is_err());
        assert!(r.digest("x").is_err());
        assert!(r.cstr("x").is_err());
        let mut r = Reader::new(&[0, 0, 0, 0, 0, 0, 0, 9]);
        assert!(r.count(1, "x").is_err());
    }
}
