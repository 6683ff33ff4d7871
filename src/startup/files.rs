//! The files the shells read to enter a runtime, written into
//! `<runtime dir>/startup/<key>/` (the user's private runtime dir, so no
//! one else can change what the user's shells source), one directory per
//! version and mountpoint: their text names the mountpoint's `startup.d`.
//! Each is rewritten only when its text differs, by a rename, so a shell
//! starting meanwhile reads the old file or the new one, never half.
//!
//! | file | read by |
//! |---|---|
//! | `startup.sh` | `SHELL startup.sh` (a command, bash and sh), and sourced by `bashrc`/`shrc` |
//! | `bashrc` | `bash --init-file` (a shell): `~/.bashrc`, then `startup.sh` |
//! | `shrc` | `sh` through `$ENV` (a shell): the user's own `$ENV`, then `startup.sh` |
//! | `startup.zsh` | `zsh -f startup.zsh` (a command), and sourced by `.zshrc` |
//! | `.zshenv`, `.zshrc` | zsh through `ZDOTDIR` (a shell): the user's own, then `startup.zsh` |
//! | `.cshrc` | `csh -f .cshrc` (a command), and csh/tcsh through `HOME` (a shell) |

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const SH: &str = "startup.sh";
pub const BASHRC: &str = "bashrc";
pub const SHRC: &str = "shrc";
pub const ZSH: &str = "startup.zsh";
pub const CSHRC: &str = ".cshrc";
const ZSHENV: &str = ".zshenv";
const ZSHRC: &str = ".zshrc";

/// The command to run after the scripts, quoted for `/bin/sh`'s
/// `eval "set -- ..."`: kept out of the shell's own arguments, which a
/// script may `shift` or `set --`, and which csh cannot pass on intact.
pub const COMMAND_VAR: &str = "SPFS_STARTUP_COMMAND";

/// The directory of startup files for `mountpoint`, written if needed.
pub fn ensure(runtime_dir: &Path, mountpoint: &Path) -> io::Result<PathBuf> {
    let startup_d = super::startup_d(mountpoint);
    let startup_d = startup_d.to_str().filter(|p| !p.contains(['\'', '!', '\n'])).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the mountpoint {} cannot be named in a shell's startup file (it holds a quote, a `!`, a newline or bytes that are not UTF-8); set SPFS_MOUNTPOINT to a plainer path",
                mountpoint.display()
            ),
        )
    })?;
    let dir = dir(runtime_dir, mountpoint);
    let parent = runtime_dir.join("startup");
    for d in [&parent, &dir] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    let quoted_dir = sh_quote(&dir.to_string_lossy());
    let texts = [
        (SH, startup_sh(startup_d)),
        (BASHRC, bashrc(&quoted_dir)),
        (SHRC, shrc(&quoted_dir)),
        (ZSH, startup_zsh(startup_d)),
        (ZSHENV, zshenv()),
        (ZSHRC, zshrc(&quoted_dir)),
        (CSHRC, cshrc(startup_d)),
    ];
    for (name, text) in texts {
        write_if_changed(&dir.join(name), text.as_bytes())?;
    }
    Ok(dir)
}

/// Where the startup files for `mountpoint` are (or will be).
pub fn dir(runtime_dir: &Path, mountpoint: &Path) -> PathBuf {
    runtime_dir.join("startup").join(key(mountpoint))
}

/// One directory per version and mountpoint (hex of a hash: any path
/// makes a short, plain name).
fn key(mountpoint: &Path) -> String {
    let mut hash = Sha256::new();
    hash.update(crate::contract::VERSION.as_bytes());
    hash.update([0]);
    hash.update(mountpoint.as_os_str().as_bytes());
    data_encoding::HEXLOWER.encode(&hash.finalize()[..8])
}

fn write_if_changed(path: &Path, text: &[u8]) -> io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let temp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    file.write_all(text)?;
    drop(file);
    std::fs::rename(&temp, path)
}

/// `word` in single quotes for sh (and zsh), a quote inside as `'\''`.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn header(what: &str) -> String {
    format!(
        "# Written by spfs-fuse-macos {}: {what}\n# Rewritten when it differs; edits here are lost.\n",
        crate::contract::VERSION
    )
}

/// The POSIX loop over the `.sh` scripts, in glob order (the locale's
/// collation, as spfs's `ls`), each sourced with its failures ignored:
/// `command .` keeps a script's syntax error from ending the shell.
fn sh_loop(startup_d: &str) -> String {
    format!(
        r#"__spfs_dir={dir}
if [ -d "$__spfs_dir" ]; then
    for __spfs_file in "$__spfs_dir"/*.sh; do
        [ -f "$__spfs_file" ] || continue
        if [ -n "${{SPFS_DEBUG-}}" ]; then echo "source $__spfs_file" >&2; fi
        command . "$__spfs_file" || true
    done
fi
unset __spfs_dir __spfs_file
"#,
        dir = sh_quote(startup_d)
    )
}

/// The command (if any) replaces the shell; else a shell shows the message.
const SH_END: &str = r#"if [ -n "${SPFS_STARTUP_COMMAND+x}" ]; then
    eval "set -- $SPFS_STARTUP_COMMAND"
    unset SPFS_STARTUP_COMMAND
    exec "$@"
fi
if [ -n "${SPFS_SHELL_MESSAGE-}" ]; then echo "$SPFS_SHELL_MESSAGE" >&2; fi
"#;

fn startup_sh(startup_d: &str) -> String {
    format!(
        "{}{}{SH_END}",
        header("the runtime's startup scripts, then the command or the shell's message."),
        sh_loop(startup_d)
    )
}

fn bashrc(dir: &str) -> String {
    format!(
        "{}if [ -f ~/.bashrc ]; then . ~/.bashrc || true; fi\n. {dir}/{SH}\n",
        header("`spfs shell`'s bash: the user's ~/.bashrc, as bash reads it, then the startup.")
    )
}

fn shrc(dir: &str) -> String {
    format!(
        r#"{}if [ -n "${{SPFS_ORIGINAL_ENV+x}}" ]; then ENV=$SPFS_ORIGINAL_ENV; export ENV; else unset ENV; fi
unset SPFS_ORIGINAL_ENV
if [ -n "${{ENV-}}" ] && [ -f "$ENV" ]; then command . "$ENV" || true; fi
. {dir}/{SH}
"#,
        header("`spfs shell`'s sh, through $ENV: the user's own $ENV file, then the startup.")
    )
}

/// zsh sources the `.sh` scripts in sh emulation (what they are written
/// for); what they set stays set after it.
fn startup_zsh(startup_d: &str) -> String {
    format!(
        "{}emulate sh -c {}\n{SH_END}",
        header("the runtime's startup scripts (in sh emulation), then the command or the shell's message."),
        sh_quote(&sh_loop(startup_d))
    )
}

/// zsh reads `$ZDOTDIR/.zshenv`, then `$ZDOTDIR/.zshrc`: ours source the
/// user's own from their ZDOTDIR (or HOME), wherever their `.zshenv`
/// points ZDOTDIR, and give ZDOTDIR back before their `.zshrc` runs.
fn zshenv() -> String {
    format!(
        r#"{}__spfs_startup=$ZDOTDIR
if [[ -n ${{SPFS_ORIGINAL_ZDOTDIR+x}} ]]; then ZDOTDIR=$SPFS_ORIGINAL_ZDOTDIR; else unset ZDOTDIR; fi
unset SPFS_ORIGINAL_ZDOTDIR
if [[ -f ${{ZDOTDIR:-$HOME}}/.zshenv ]]; then . "${{ZDOTDIR:-$HOME}}/.zshenv"; fi
if [[ -n ${{ZDOTDIR+x}} ]]; then __spfs_user_zdotdir=$ZDOTDIR; fi
ZDOTDIR=$__spfs_startup
unset __spfs_startup
"#,
        header("`spfs shell`'s zsh: the user's own .zshenv.")
    )
}

fn zshrc(dir: &str) -> String {
    format!(
        r#"{}if [[ -n ${{__spfs_user_zdotdir+x}} ]]; then ZDOTDIR=$__spfs_user_zdotdir; else unset ZDOTDIR; fi
unset __spfs_user_zdotdir
if [[ -f ${{ZDOTDIR:-$HOME}}/.zshrc ]]; then . "${{ZDOTDIR:-$HOME}}/.zshrc"; fi
. {dir}/{ZSH}
"#,
        header("`spfs shell`'s zsh: the user's own .zshrc, then the startup.")
    )
}

/// For csh and tcsh. A shell (HOME pointed here) first gets HOME back and
/// reads the user's own rc file; `nonomatch` lets an empty `startup.d`
/// glob to nothing instead of failing. The command goes through /bin/sh
/// (see [`COMMAND_VAR`]); csh cannot print to stderr alone, sh does.
fn cshrc(startup_d: &str) -> String {
    format!(
        r#"{}if ( $?SPFS_ORIGINAL_HOME ) then
    set home = "$SPFS_ORIGINAL_HOME"
    setenv HOME "$SPFS_ORIGINAL_HOME"
    unsetenv SPFS_ORIGINAL_HOME
    if ( $?tcsh ) then
        if ( -f "$HOME/.tcshrc" ) then
            source "$HOME/.tcshrc"
        else if ( -f "$HOME/.cshrc" ) then
            source "$HOME/.cshrc"
        endif
    else if ( -f "$HOME/.cshrc" ) then
        source "$HOME/.cshrc"
    endif
endif
set __spfs_dir = '{startup_d}'
if ( -d "$__spfs_dir" ) then
    if ( $?nonomatch ) set __spfs_nonomatch
    set nonomatch
    foreach __spfs_file ( "$__spfs_dir"/*.csh )
        if ( -f "$__spfs_file" ) then
            if ( $?SPFS_DEBUG ) /bin/sh -c 'echo "source $1" >&2' sh "$__spfs_file"
            source "$__spfs_file"
        endif
    end
    if ( ! $?__spfs_nonomatch ) unset nonomatch
    unset __spfs_nonomatch __spfs_file
endif
unset __spfs_dir
if ( $?SPFS_STARTUP_COMMAND ) exec /bin/sh -c 'eval "set -- $SPFS_STARTUP_COMMAND"; unset SPFS_STARTUP_COMMAND; exec "$@"'
if ( $?SPFS_SHELL_MESSAGE ) /bin/sh -c '[ -z "$SPFS_SHELL_MESSAGE" ] || echo "$SPFS_SHELL_MESSAGE" >&2'
"#,
        header("the runtime's startup scripts for csh and tcsh, then the command or the shell's message.")
    )
}
