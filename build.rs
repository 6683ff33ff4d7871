//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so that a
//! machine with only the Rust toolchain (no system `protoc`) can build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/spfs/vfs/v1/vfs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
