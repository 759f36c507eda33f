//! Compiles the store's private records (`proto/store.proto`) with protox
//! (pure Rust, no `protoc`) and prost. The control API messages they embed
//! are not generated again: they are `arqonbus_proto::control`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let own = PathBuf::from("proto");
    let api = PathBuf::from("../proto/proto");
    let file = "store.proto";
    println!("cargo:rerun-if-changed={}", own.join(file).display());
    println!(
        "cargo:rerun-if-changed={}",
        api.join("arqonbus/control/v1/control.proto").display()
    );
    let fds = protox::compile([file], [&own, &api])?;
    prost_build::Config::new()
        .extern_path(".arqonbus.control.v1", "::arqonbus_proto::control")
        // Hand-written Debug (src/store/records.rs): the signing key is secret.
        .skip_debug(["arqonbus.store.v1.StoredTenant"])
        .compile_fds(fds)?;
    Ok(())
}
