//! Generates the gRPC code for `proto/raft.proto` with a pure-Rust toolchain: protox
//! parses the file (no system `protoc`), tonic-prost-build emits client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/raft.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().bytes(".solrouter.raft").compile_fds(descriptors)?;
    Ok(())
}
