//! Runtime records in spfs's format, in the local repository, so that
//! spfs's own library (`spfs::active_runtime()`, which every spk command
//! that needs a runtime calls) and the real `spfs runtime info|list` and
//! `spfs info` see our runtimes (facts: spfs 0.44's
//! `runtime/storage.rs`):
//!
//! - `spfs/runtimes/meta/<name>`: a Blob whose payload is the runtime's
//!   JSON ([`Record`], compact, no trailing newline): the record proper;
//! - `spfs/runtimes/data/<name>`: a Platform of the stack, so what the
//!   runtime shows is kept by a clean.
//!
//! Saved as spfs saves them: the platform, the JSON blob, then the two
//! tags (a tag already pointing there is left as is, else a version is
//! added). Removed: data stream, then meta stream. Tag namespaces never
//! apply to runtimes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeInfo;
use crate::encoding::Digest;
use crate::graph::{Object, Platform};
use crate::storage::fs::FsRepository;
use crate::storage::tag::TagSpec;
use crate::storage::StorageError;

/// The tag folder of the records proper.
pub const META: &str = "spfs/runtimes/meta";
/// The tag folder of the stacks, as platforms.
pub const DATA: &str = "spfs/runtimes/data";

/// What `config.mount_backend` says: spfs's name for a backend that is a
/// FUSE filesystem alone (no overlayfs). spfs's readers accept only its
/// own names, so ours must be one of them.
pub const MOUNT_BACKEND: &str = "FuseOnly";

/// spfs's runtime JSON (`runtime::storage::Data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub author: Author,
    pub status: Status,
    pub config: Config,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub user_name: String,
    pub host_name: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Top-down: the first is on top.
    pub stack: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flattened_layers: Vec<String>,
    pub editable: bool,
    pub running: bool,
    pub owner: Option<u32>,
    pub monitor: Option<u32>,
    pub command: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub runtime_dir: Option<String>,
    pub tmpfs_size: Option<String>,
    pub upper_dir: String,
    pub lower_dir: String,
    pub work_dir: String,
    pub sh_startup_file: String,
    pub csh_startup_file: String,
    pub csh_expect_file: String,
    pub mount_namespace: Option<String>,
    pub mount_backend: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_repositories: Vec<String>,
    pub include_secondary_tags: bool,
    pub durable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_layers: Vec<serde_json::Value>,
}

/// Where a runtime lives, beyond what [`RuntimeInfo`] says.
#[derive(Clone, Debug)]
pub struct Place {
    /// Our runtime dir (`SPFS_RUNTIME_DIR`): also how the service knows
    /// its own records from another tool's.
    pub runtime_dir: PathBuf,
    /// The mountpoint (`lower_dir`: what the runtime's layers show at).
    pub mountpoint: PathBuf,
    /// The directory of the startup files (`crate::startup`).
    pub startup_files: PathBuf,
    /// The service's pid, spfs's `monitor`, while the runtime runs.
    pub monitor: Option<u32>,
}

impl Record {
    /// The record of `runtime`. Its directory layers (absolute paths, a
    /// development aid) are not objects and are left out of the stack.
    pub fn of(runtime: &RuntimeInfo, place: &Place) -> Record {
        let state = &runtime.state;
        let running = runtime.root_pid.is_some();
        let scratch = runtime.scratch_dir.clone().unwrap_or_default();
        let text = |path: &Path| path.display().to_string();
        Record {
            name: state.name.clone(),
            author: Author {
                user_name: user_name(),
                host_name: host_name(),
                created: rfc3339(state.created_unix),
            },
            status: Status {
                stack: digests_top_down(&state.stack),
                flattened_layers: Vec::new(),
                editable: state.editable,
                running,
                owner: runtime.root_pid.filter(|_| running).map(|p| p as u32),
                monitor: place.monitor.filter(|_| running),
                command: state.command.clone(),
            },
            config: Config {
                runtime_dir: Some(text(&place.runtime_dir)),
                tmpfs_size: None,
                upper_dir: text(&scratch.join("upper")),
                lower_dir: text(&place.mountpoint),
                work_dir: text(&scratch),
                sh_startup_file: text(&place.startup_files.join("startup.sh")),
                csh_startup_file: text(&place.startup_files.join(".cshrc")),
                csh_expect_file: "/dev/null".into(),
                mount_namespace: None,
                mount_backend: MOUNT_BACKEND.into(),
                secondary_repositories: state
                    .repositories
                    .iter()
                    .skip(1)
                    .map(|root| format!("file://{}", root.display()))
                    .collect(),
                include_secondary_tags: true,
                durable: state.durable,
                live_layers: Vec::new(),
            },
        }
    }

    /// The JSON as spfs writes it: compact, no trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The JSON as `spfs runtime info` prints it (2 spaces).
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The stack's digests, bottom-up (a platform's order).
    fn stack_bottom_up(&self) -> Vec<Digest> {
        self.status
            .stack
            .iter()
            .rev()
            .filter_map(|d| Digest::parse(d).ok())
            .collect()
    }
}

/// The digests of `stack` (bottom-up, as the state keeps it), top-down as
/// spfs's `status.stack` lists them.
fn digests_top_down(stack: &[String]) -> Vec<String> {
    stack
        .iter()
        .rev()
        .filter(|layer| Digest::parse(layer).is_ok())
        .cloned()
        .collect()
}

fn user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn tag(folder: &str, name: &str) -> Result<TagSpec, StorageError> {
    TagSpec::parse(&format!("{folder}/{name}"))
}

/// Saves `record` into `repo`, as spfs does (see the module doc).
pub fn save(repo: &FsRepository, record: &Record) -> Result<(), StorageError> {
    let platform = repo.write_object(&Object::Platform(Platform {
        layers: record.stack_bottom_up(),
    }))?;
    let blob = repo.write_blob_bytes(&record.to_json())?;
    repo.push_tag(&tag(DATA, &record.name)?, &platform)?;
    repo.push_tag(&tag(META, &record.name)?, &blob)?;
    Ok(())
}

/// Removes the records of runtime `name` from `repo`; missing ones are fine.
pub fn remove(repo: &FsRepository, name: &str) -> Result<(), StorageError> {
    for folder in [DATA, META] {
        match repo.remove_tag_stream(&tag(folder, name)?) {
            Err(StorageError::UnknownTag { .. }) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Longest record read (a real one is about a kilobyte).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Reads the newest record of runtime `name` in `repo`.
pub fn read(repo: &FsRepository, name: &str) -> Result<Record, String> {
    let head = repo
        .resolve_tag(&tag(META, name).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let file = repo.open_payload(&head.target).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_RECORD_BYTES), &mut text)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("runtime {name:?}'s record is not spfs's runtime JSON: {e}"))
}

/// The names of every runtime recorded in `repo`.
pub fn names(repo: &FsRepository) -> Vec<String> {
    repo.ls_tags(META)
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| !entry.ends_with('/'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeState;

    fn runtime(running: bool) -> RuntimeInfo {
        let a = Digest::of(b"a").to_base32();
        let b = Digest::of(b"b").to_base32();
        RuntimeInfo {
            state: RuntimeState {
                name: "rt".into(),
                env_spec: "base+app".into(),
                stack: vec![a, "/some/dir".into(), b],
                repositories: vec!["/local".into(), "/origin".into()],
                editable: false,
                durable: true,
                created_unix: 1_700_000_000,
                command: vec!["make".into(), "all".into()],
            },
            root_pid: running.then_some(42),
            since_unix: 1_700_000_000,
            scratch_dir: Some("/scratch/rt".into()),
        }
    }

    fn place() -> Place {
        Place {
            runtime_dir: "/run/spfs".into(),
            mountpoint: "/spfs".into(),
            startup_files: "/run/spfs/startup/k".into(),
            monitor: Some(7),
        }
    }

    #[test]
    fn a_record_has_spfs_keys_and_a_top_down_stack_of_digests() {
        let record = Record::of(&runtime(true), &place());
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        let b = Digest::of(b"b").to_base32();
        let a = Digest::of(b"a").to_base32();
        assert_eq!(json["status"]["stack"], serde_json::json!([b, a]));
        assert_eq!(json["status"]["owner"], 42);
        assert_eq!(json["status"]["monitor"], 7);
        assert_eq!(json["status"]["running"], true);
        assert_eq!(
            json["status"]["command"],
            serde_json::json!(["make", "all"])
        );
        assert_eq!(json["author"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(json["config"]["mount_backend"], "FuseOnly");
        assert_eq!(json["config"]["csh_expect_file"], "/dev/null");
        assert_eq!(
            json["config"]["secondary_repositories"],
            serde_json::json!(["file:///origin"])
        );
        assert!(json["status"].get("flattened_layers").is_none());
        assert!(json["config"].get("live_layers").is_none());
        assert!(!record.to_json().ends_with(b"\n"));
        // Stopped: no owner, no monitor.
        let stopped = Record::of(&runtime(false), &place());
        assert_eq!(stopped.status.owner, None);
        assert_eq!(stopped.status.monitor, None);
    }

    #[test]
    fn records_are_saved_read_updated_and_removed_in_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let record = Record::of(&runtime(true), &place());
        save(&repo, &record).unwrap();
        assert_eq!(read(&repo, "rt").unwrap(), record);
        assert_eq!(names(&repo), ["rt"]);
        let stopped = Record::of(&runtime(false), &place());
        save(&repo, &stopped).unwrap();
        assert_eq!(read(&repo, "rt").unwrap(), stopped);
        let meta = repo.tag_stream(&tag(META, "rt").unwrap()).unwrap();
        assert_eq!(meta.len(), 2, "a new version per change");
        // The platform holds the stack, bottom-up.
        let head = repo.resolve_tag(&tag(DATA, "rt").unwrap()).unwrap();
        match repo.read_object(&head.target).unwrap() {
            Object::Platform(p) => assert_eq!(p.layers, record.stack_bottom_up()),
            other => panic!("not a platform: {other:?}"),
        }
        remove(&repo, "rt").unwrap();
        assert!(read(&repo, "rt").is_err());
        assert!(names(&repo).is_empty());
        remove(&repo, "rt").unwrap();
    }
}
