//! `spfs layers`: the layer names in the store that env specs can use.

use std::process::ExitCode;

use super::report;
use crate::config::Config;
use crate::fs::envspec;

pub fn layers() -> ExitCode {
    let tool = "spfs layers";
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return report(tool, &err),
    };
    let store = &config.paths.storage;
    match envspec::list_store(store) {
        Ok(names) if names.is_empty() => {
            eprintln!(
                "no layers in {} (a layer is a directory there; SPFS_STORAGE moves the store)",
                store.display()
            );
            ExitCode::SUCCESS
        }
        Ok(names) => {
            for name in names {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{tool}: error: cannot read the layer store {}: {err}; set SPFS_STORAGE to a directory of layers", store.display());
            ExitCode::FAILURE
        }
    }
}
