//! Compiles `proto/**/*.proto` with protox (pure Rust, no `protoc` needed) and prost.
//! `bytes` fields become `bytes::Bytes` so decoding from a `Bytes` buffer slices
//! payloads instead of copying them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let files = ["arqonbus/v1/client.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    prost_build::Config::new()
        .bytes(["."])
        // Hand-written Debug (src/redact.rs): credentials, payloads and header
        // values must never reach a log through `{:?}`.
        .skip_debug([
            "arqonbus.v1.Connect",
            "arqonbus.v1.Publish",
            "arqonbus.v1.Message",
            "arqonbus.v1.Header",
        ])
        .compile_fds(fds)?;
    Ok(())
}
