//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so that a
//! machine with only the Rust toolchain (no system `protoc`) can build; and
//! on macOS keeps the user-facing `spfs` binary free of macFUSE's library.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/spfs/vfs/v1/vfs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    // fuser's build script links `-lfuse` (macFUSE's libfuse.2.dylib) into
    // every binary of a crate that depends on it, so `spfs` would fail to
    // start on a Mac without macFUSE, even for `--help` or `doctor`. Nothing
    // reachable from src/bin/spfs.rs calls fuser (the Linux build's `spfs`
    // has no fuser symbol: tests/platform_rules.rs), and ld64's
    // -dead_strip_dylibs drops a dylib none of whose symbols is used. Only the
    // service binary then loads libfuse. (Not yet linked on a real Mac:
    // docs/macos.md.)
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-link-arg-bin=spfs=-Wl,-dead_strip_dylibs");
    }
    Ok(())
}
