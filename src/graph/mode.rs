//! File type bits of an entry's `mode`, as spfs records them: the full
//! `st_mode` with POSIX's octal type values, the same on Linux and macOS
//! (where `libc::mode_t` is 16 bits, so libc's constants are not `u32`).

pub const TYPE_MASK: u32 = 0o170000;
pub const SOCKET: u32 = 0o140000;
pub const SYMLINK: u32 = 0o120000;
pub const REGULAR: u32 = 0o100000;
pub const BLOCK_DEVICE: u32 = 0o060000;
pub const DIRECTORY: u32 = 0o040000;
pub const CHAR_DEVICE: u32 = 0o020000;
pub const FIFO: u32 = 0o010000;

/// The type bits of `mode`.
pub fn file_type(mode: u32) -> u32 {
    mode & TYPE_MASK
}
