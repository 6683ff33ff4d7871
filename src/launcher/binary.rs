//! Where the service binary is: `SPFS_FUSE_SERVICE_BIN`, else beside the
//! running program, else on PATH (`spfs doctor` reports the same).

use std::path::PathBuf;

use crate::contract::SERVICE_BIN_NAME;
use crate::error::{Error, Result};
use crate::settings::Settings;

/// Finds the service binary: `SPFS_FUSE_SERVICE_BIN`, else beside the running
/// program, else on PATH.
pub fn find_service_binary(settings: &Settings) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(explicit) = &settings.service_bin {
        if explicit.is_file() {
            return Ok(explicit.clone());
        }
        looked.push(explicit.clone());
        return Err(Error::ServiceBinaryNotFound { looked });
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.to_owned()))
    {
        looked.push(dir.join(SERVICE_BIN_NAME));
    }
    if let Some(path) = std::env::var_os("PATH") {
        looked.extend(std::env::split_paths(&path).map(|d| d.join(SERVICE_BIN_NAME)));
    }
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(Error::ServiceBinaryNotFound { looked }),
    }
}
