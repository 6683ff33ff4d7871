//! The service hosted in the test's own process, as tokio's mini-redis tests
//! host its server: `spfs::service::run` with paths and a `Shutdown` of the
//! test's own, real `spfs` commands run against it through its socket and
//! its FUSE mount, and a shutdown the test triggers itself.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spfs::paths::Paths;
use spfs::service::{Options, Shutdown};

/// The service running in this process; dropping it (also when the test
/// fails) triggers its shutdown and waits until it has stopped, so the
/// harness never mistakes this process for a service to kill.
struct Hosted {
    runtime: tokio::runtime::Runtime,
    shutdown: Shutdown,
    service: Option<tokio::task::JoinHandle<std::process::ExitCode>>,
}

impl Hosted {
    fn start(env: &TestEnv) -> Hosted {
        let paths = Paths {
            runtime_dir: env.runtime_dir.clone(),
            log_dir: env.log_dir.clone(),
            mountpoint: env.mountpoint.clone(),
            scratch_dir: env.scratch.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = Shutdown::default();
        let service = runtime.spawn(spfs::service::run(
            paths,
            Options::default(),
            shutdown.clone(),
            None,
        ));
        Hosted {
            runtime,
            shutdown,
            service: Some(service),
        }
    }

    /// Triggers the shutdown and waits for `run` to return.
    fn stop(&mut self) -> Option<std::process::ExitCode> {
        self.shutdown.trigger("test");
        let service = self.service.take()?;
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), service).await })
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether signal `signal` still has its default disposition in this process.
fn default_disposition(signal: libc::c_int) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL
    }
}

#[test]
fn a_service_hosted_in_process_serves_real_runs_and_stops_on_the_hosts_shutdown() {
    let env = TestEnv::new();
    let mut hosted = Hosted::start(&env);
    let me = std::process::id() as i64;
    let serving = env.wait_for(Duration::from_secs(10), || {
        let output = env.spfs(&["service", "status", "--json"]).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .is_ok_and(|status| status["pid"] == me && status["serving"] == true)
    });
    assert!(serving, "the in-process service never served");
    assert!(env.is_mounted());

    // A real runtime on the in-process FUSE mount: written and read back.
    let script = "echo made-here > \"$SPFS_MOUNTPOINT/file\" && cat \"$SPFS_MOUNTPOINT/file\"";
    let output = run_ok(&mut env.spfs(&["run", "-", "--", "sh", "-c", script]));
    assert_eq!(stdout(&output), "made-here\n");

    // The service installed no signal handler of its own: the host's
    // signals are the host's.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        assert!(
            default_disposition(signal),
            "signal {signal} was taken over"
        );
    }

    let started = Instant::now();
    let code = hosted.stop().expect("run returned after the shutdown");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!env.is_mounted(), "the FUSE mount went with the service");
    assert!(!env.socket().exists(), "the socket went with the service");
    assert_eq!(env.service_pid(), None, "the pidfile is free");
}
