//! A small mutation engine for the decoder fuzzer (std only, deterministic).
//!
//! Shared by `examples/fuzz_decoders` (the long runs) and the storage unit
//! tests (a short replay), which include this file with `#[path]`.

/// xorshift64*: fast, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Values that make length and count fields interesting.
const INTERESTING_64: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    31,
    32,
    33,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Mutate `data` in place with 1 to 4 stacked mutations. `others` are
/// splice partners (the seeds); `dict` holds tokens worth inserting.
pub fn mutate(
    data: &mut Vec<u8>,
    rng: &mut Rng,
    others: &[Vec<u8>],
    dict: &[&[u8]],
    max_len: usize,
) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(13) {
            // flip one bit
            0 => {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
            }
            // set a random byte
            1 => {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            // add or subtract a little
            2 => {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    let delta = 1 + rng.below(16) as u8;
                    data[i] = if rng.chance(2) {
                        data[i].wrapping_add(delta)
                    } else {
                        data[i].wrapping_sub(delta)
                    };
                }
            }
            // an interesting 8-, 4- or 2-byte value, either endianness
            3 | 4 => {
                let v = INTERESTING_64[rng.below(INTERESTING_64.len())];
                let width = [8usize, 4, 2][rng.below(3)];
                if data.len() >= width {
                    let i = rng.below(data.len() - width + 1);
                    let bytes = if rng.chance(2) {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    let src = if rng.chance(2) {
                        &bytes[8 - width..]
                    } else {
                        &bytes[..width]
                    };
                    data[i..i + width].copy_from_slice(src);
                }
            }
            // delete a range
            5 => {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    let n = 1 + rng.below((data.len() - i).min(64));
                    data.drain(i..i + n);
                }
            }
            // insert random bytes
            6 => {
                let i = rng.below(data.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            // duplicate a range (repeats records, tables, entries)
            7 => {
                if !data.is_empty() {
                    let i = rng.below(data.len());
                    let n = 1 + rng.below((data.len() - i).min(256));
                    let chunk = data[i..i + n].to_vec();
                    let at = rng.below(data.len() + 1);
                    data.splice(at..at, chunk);
                }
            }
            // truncate
            8 => {
                if !data.is_empty() {
                    let n = rng.below(data.len());
                    data.truncate(n);
                }
            }
            // splice: our head, another seed's tail
            9 => {
                if !others.is_empty() {
                    let other = &others[rng.below(others.len())];
                    let at = rng.below(data.len() + 1);
                    let from = rng.below(other.len() + 1);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
            }
            // overwrite with a chunk of another seed
            10 => {
                if !others.is_empty() && !data.is_empty() {
                    let other = &others[rng.below(others.len())];
                    if !other.is_empty() {
                        let from = rng.below(other.len());
                        let n = (1 + rng.below(64)).min(other.len() - from);
                        let at = rng.below(data.len());
                        let n = n.min(data.len() - at);
                        data[at..at + n].copy_from_slice(&other[from..from + n]);
                    }
                }
            }
            // insert or overwrite with a dictionary token
            _ => {
                if !dict.is_empty() {
                    let token = dict[rng.below(dict.len())];
                    let at = rng.below(data.len() + 1);
                    if rng.chance(2) || at + token.len() > data.len() {
                        data.splice(at..at, token.iter().copied());
                    } else {
                        data[at..at + token.len()].copy_from_slice(token);
                    }
                }
            }
        }
    }
    data.truncate(max_len);
}
