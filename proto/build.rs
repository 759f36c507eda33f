//! Compiles the `.proto` contract with protox (pure Rust, no `protoc`) and
//! prost. `bytes` fields of the client protocol become `bytes::Bytes`, so
//! decoding from a `Bytes` buffer slices payloads instead of copying them.
//! With the `control` feature the control API is compiled too, with tonic
//! client and server stubs and an encoded descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let client = ["arqonbus/v1/client.proto", "arqonbus/v1/token.proto"];
    let control = ["arqonbus/control/v1/control.proto"];
    for f in client.iter().chain(&control) {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }

    let fds = protox::compile(client, [&root])?;
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

    #[cfg(feature = "control")]
    {
        use prost::Message as _;
        let fds = protox::compile(control, [&root])?;
        let out = PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("control_descriptor.bin"), fds.encode_to_vec())?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)?;
    }
    #[cfg(not(feature = "control"))]
    let _ = control;
    Ok(())
}
