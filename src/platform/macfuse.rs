//! macFUSE on macOS (its kernel-extension backend only): detecting it and
//! its kernel extension, its mount options and FUSE_INIT facts (which
//! `vfs::mount` passes as fuser's types), the `allow_other` permission, the
//! mount table (`getfsstat`), forced unmount, and what to tell the user.
//!
//! Type-checked and linted in CI for aarch64- and x86_64-apple-darwin
//! (`.ci/macos-check`); never run on a Mac. Written against the documented
//! libc, nix and macFUSE interfaces; `docs/macos.md` says what each choice is for.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where macFUSE installs itself.
const MACFUSE_BUNDLE: &str = "/Library/Filesystems/macfuse.fs";
/// macFUSE's loader for its kernel extension (setuid root).
const MACFUSE_LOADER: &str = "/Library/Filesystems/macfuse.fs/Contents/Resources/load_macfuse";
/// Exists only while macFUSE's kernel extension is loaded.
const MACFUSE_VERSION_SYSCTL: &str = "vfs.generic.macfuse.version.number";
/// The group whose members may use `allow_other` (default: admin, gid 80).
const MACFUSE_ADMIN_GROUP_SYSCTL: &str = "vfs.generic.macfuse.tunables.admin_group";

/// How to install macFUSE.
const INSTALL_STEP: &str = "install macFUSE (`brew install --cask macfuse`, or the installer from https://macfuse.github.io), then";
/// How to get macFUSE's kernel extension approved and loaded.
const KEXT_STEPS: &str = "on Apple Silicon first allow kernel extensions: shut down, hold the power button to enter Recovery, Utilities > Startup Security Utility, choose Reduced Security and allow user management of kernel extensions from identified developers; then open System Settings > Privacy & Security, click Allow for the developer \"Benjamin Fleischer\", and restart. See docs/macos.md";

/// Whether macFUSE is installed and its kernel extension is (or can be)
/// loaded, with the steps when not. Only the kernel-extension backend gives
/// the caller's pid that per-process views need: macFUSE's FSKit backend and
/// FUSE-T do not (docs/macos.md), so neither is accepted as "available".
pub fn check_fuse_available() -> std::result::Result<(), super::Unusable> {
    if !Path::new(MACFUSE_BUNDLE).exists() {
        return Err(super::Unusable::new(
            format!(
                "FUSE is not available: macFUSE is not installed ({MACFUSE_BUNDLE} is missing)"
            ),
            format!("{INSTALL_STEP} {KEXT_STEPS}"),
        ));
    }
    if kext_loaded() {
        return Ok(());
    }
    // What a mount would do first; it fails until the extension is approved.
    let loaded = std::process::Command::new(MACFUSE_LOADER)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if loaded && kext_loaded() {
        Ok(())
    } else {
        Err(super::Unusable::new(
            format!("FUSE is not available: macFUSE is installed but its kernel extension cannot be loaded ({MACFUSE_LOADER} failed; not approved yet?)"),
            KEXT_STEPS,
        ))
    }
}

/// What to add to a mount failure: the kernel extension is the usual cause.
pub fn mount_failure_hint() -> String {
    if kext_loaded() {
        String::new()
    } else {
        format!("; macFUSE's kernel extension is not loaded: {KEXT_STEPS}")
    }
}

fn kext_loaded() -> bool {
    sysctl_bytes(MACFUSE_VERSION_SYSCTL).is_some()
}

/// The raw value of a sysctl by name, or None when it does not exist.
fn sysctl_bytes(name: &str) -> Option<Vec<u8>> {
    let name = CString::new(name).ok()?;
    let mut size = 0usize;
    // SAFETY: a null buffer asks only for the size.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut buffer = vec![0u8; size];
    // SAFETY: the buffer holds `size` bytes and sysctl writes at most that.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buffer.truncate(size);
    Some(buffer)
}

/// Unmounts even when the FUSE server is gone or the mount is busy. macOS has
/// no lazy (detach) unmount: `MNT_FORCE` unmounts at once, and processes that
/// still use files there get errors (ENXIO/EBADF) from then on.
pub fn force_unmount(path: &Path) -> io::Result<()> {
    nix::mount::unmount(path, nix::mount::MntFlags::MNT_FORCE).map_err(io::Error::from)
}

/// A dead macFUSE mount answers with ENOTCONN or ENXIO ("Device not configured").
pub fn is_stale_mount_error(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ENXIO))
}

/// Every mounted filesystem as (mount point, type name), from
/// `getfsstat(MNT_NOWAIT)`: the kernel's table, without asking any filesystem
/// (so a hung FUSE server cannot block it).
fn mounts() -> io::Result<Vec<(PathBuf, String)>> {
    // SAFETY: a null buffer asks only for the count.
    let count = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    // Room for mounts added between the two calls.
    let capacity = count as usize + 8;
    let mut table: Vec<libc::statfs> = Vec::with_capacity(capacity);
    let bytes = (capacity * std::mem::size_of::<libc::statfs>()) as libc::c_int;
    // SAFETY: the buffer has room for `capacity` entries, `bytes` long.
    let filled = unsafe { libc::getfsstat(table.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
    if filled < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getfsstat initialised the first `filled` entries.
    unsafe { table.set_len(filled as usize) };
    Ok(table
        .iter()
        .map(|entry| {
            // SAFETY: both are NUL-terminated char arrays filled by the kernel.
            let on = unsafe { CStr::from_ptr(entry.f_mntonname.as_ptr()) };
            let kind = unsafe { CStr::from_ptr(entry.f_fstypename.as_ptr()) };
            (
                PathBuf::from(OsStr::from_bytes(on.to_bytes())),
                kind.to_string_lossy().into_owned(),
            )
        })
        .collect())
}

/// Whether some filesystem is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = path.canonicalize()?;
    Ok(mounts()?.iter().any(|(on, _)| *on == path))
}

/// Whether a macFUSE filesystem is mounted at `canonical` (an already
/// resolved path). macFUSE mounts asynchronously: the mount call returns
/// before the kernel has finished, so the service waits for this.
pub fn is_fuse_mounted_at(canonical: &Path) -> io::Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|(on, kind)| on == canonical && (kind == "macfuse" || kind == "osxfuse")))
}

/// Requests from other users are served only when asked for
/// (`SPFS_ALLOW_OTHER=1`): macFUSE grants `allow_other` only to root.
pub const ALLOW_OTHER_BY_DEFAULT: bool = false;

/// `allow_other` needs root or membership of macFUSE's admin group
/// (`vfs.generic.macfuse.tunables.admin_group`, default `admin`, gid 80).
pub fn allow_other_permitted() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let Some(bytes) = sysctl_bytes(MACFUSE_ADMIN_GROUP_SYSCTL) else {
        return false;
    };
    let Ok(raw) = <[u8; 4]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let admin = u32::from_ne_bytes(raw);
    if nix::unistd::getegid().as_raw() == admin {
        return true;
    }
    // nix has no getgroups for Apple targets (it can exceed NGROUPS there).
    let mut groups = vec![0 as libc::gid_t; 64];
    // SAFETY: the buffer holds groups.len() gids.
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    count > 0 && groups[..count as usize].contains(&admin)
}

/// macFUSE's own mount options, beside the common ones (`vfs::mount`
/// passes them; docs/macos.md explains each).
pub const MACFUSE_MOUNT_OPTIONS: &[&str] = &[
    // macFUSE ignores entry TTLs: without this the kernel's name cache
    // would show one runtime's /spfs entries to every process.
    "novncache",
    // A local volume, not a network one, for Finder and Spotlight.
    "local",
    // Not shown in Finder's sidebar or on the desktop.
    "nobrowse",
    // No `._` AppleDouble files: answered in the kernel, never asked for.
    "noappledouble",
    // No com.apple.* extended attributes (Finder info, quarantine).
    "noapplexattr",
    "volname=spfs",
];

/// macFUSE's FUSE_INIT flag for `renamex_np(2)`'s RENAME_EXCL (macFUSE's
/// `fuse_kernel.h`; fuser 0.18 does not name it). `vfs::mount::fuse_init`
/// says why it is asked for.
pub const FUSE_RENAME_EXCL: u64 = 1 << 26;

/// The major version of the loaded macFUSE (`vfs.generic.macfuse.version.number`).
pub fn macfuse_major_version() -> Option<u32> {
    sysctl_bytes(MACFUSE_VERSION_SYSCTL).and_then(|raw| {
        let text = String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .to_owned();
        text.split('.').next()?.trim().parse::<u32>().ok()
    })
}

/// The open flags a `create` request means. macFUSE always sends
/// `O_CREAT | O_RDWR` (the caller's O_EXCL stays in the kernel), and calls
/// `create` only after a lookup found nothing; macOS's `vn_open_auth` then
/// retries as a plain open on EEXIST unless the caller asked for O_EXCL.
/// So a name created meanwhile must get EEXIST, or two racing
/// `open(O_CREAT|O_EXCL)` (lock files) would both succeed.
pub fn create_flags(flags: i32) -> i32 {
    flags | libc::O_EXCL
}

/// How to make `path` usable as the mountpoint when it is missing or is not
/// the user's: `/` is read-only, so `/spfs` must come from /etc/synthetic.conf
/// as a symlink to a directory the user owns (a non-root user may mount only
/// on a directory they own).
pub fn mountpoint_fix(path: &Path) -> String {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/Users/YOU"));
    let target = home.join(".spfs-mount");
    match path
        .strip_prefix("/")
        .ok()
        .filter(|rest| rest.components().count() == 1)
    {
        Some(name) => format!(
            "run `mkdir -p {target}`, add the line `{name}<TAB>{target}` (a real tab) to /etc/synthetic.conf (`printf '{name}\\t{target}\\n' | sudo tee -a /etc/synthetic.conf`), then run `sudo /System/Library/Filesystems/apfs.fs/Contents/Resources/apfs.util -t` or restart, so that {path} is a symlink to a directory you own; or set SPFS_MOUNTPOINT to a directory you own",
            name = name.display(),
            target = target.display(),
            path = path.display(),
        ),
        None => format!(
            "create it as yourself (`mkdir -p {0}`), or set SPFS_MOUNTPOINT to a directory you own",
            path.display()
        ),
    }
}

/// The service binary links macFUSE's libfuse.2.dylib and dies in dyld
/// without it: the launcher checks for macFUSE first, with the steps.
pub fn check_before_service_spawn() -> std::result::Result<(), super::Unusable> {
    check_fuse_available()
}
