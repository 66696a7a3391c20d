//! Generates the gRPC code and the reflection descriptor set from `proto/`,
//! with protox so that no `protoc` binary is needed.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "agent",
        "admin",
        "master_data",
        "records",
        "report",
        "store",
        "sync",
    ]
    .map(|f| root.join(format!("storesync/v1/{f}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("storesync_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
