//! `spfs version`, `spfs config` and `spfs init repo`: what this spfs is,
//! the spfs configuration it reads (as spfs's `spfs config` prints its
//! own), and a new, empty repository.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use super::runner::{self, Out};
use crate::storage::config::{Remote, SpfsConfig};
use crate::storage::fs::FsRepository;

/// `spfs version`: the version, alone on its line, as spfs prints its own.
pub fn version() -> ExitCode {
    runner::run("spfs version", || {
        let mut out = Out::new();
        out.line(crate::contract::VERSION)?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `spfs config`: the effective configuration, pretty JSON in spfs's
/// layout, of the keys this project reads. Credentials in a remote's
/// address are never printed.
pub fn config() -> ExitCode {
    runner::run("spfs config", || {
        let config = crate::paths::load_spfs_config()?;
        let mut out = Out::new();
        out.line(serde_json::to_string_pretty(&config_json(&config)).unwrap_or_default())?;
        out.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn config_json(config: &SpfsConfig) -> Value {
    let remotes: Map<String, Value> = config
        .remotes
        .iter()
        .map(|(name, remote)| {
            let address = match remote {
                Remote::Fs(path) => format!("file://{}", path.display()),
                Remote::Unsupported(address) => without_credentials(address),
            };
            (name.clone(), json!({ "address": address }))
        })
        .collect();
    json!({
        "storage": { "root": config.local_root.display().to_string() },
        "remote": remotes,
        "filesystem": { "secondary_repositories": config.secondary },
    })
}

/// `scheme://user:secret@host/...` as `scheme://user:***@host/...`.
fn without_credentials(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = match userinfo.contains(':') {
                true => format!("{user}:***"),
                false => user.to_owned(),
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => address.to_owned(),
    }
}

/// `spfs init repo PATH`: an empty filesystem repository at PATH (parents
/// made); an existing one is left as it is.
pub fn init_repo(path: &Path) -> ExitCode {
    runner::run("spfs init repo", || {
        let path = std::path::absolute(path)
            .map_err(|e| crate::error::Error::io(format!("cannot use {}", path.display()), e))?;
        FsRepository::create(&path)?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_addresses_are_masked() {
        assert_eq!(
            without_credentials("http2://alice:hunter2@spfs.studio:7737/repo"),
            "http2://alice:***@spfs.studio:7737/repo"
        );
        assert_eq!(
            without_credentials("grpc://spfs.studio:7737"),
            "grpc://spfs.studio:7737"
        );
        assert_eq!(
            without_credentials("http://token@host/p@q"),
            "http://token@host/p@q"
        );
    }
}
