//! Generates Rust from `minion/v1/*.proto`. The controller service only with the `grpc` feature,
//! so the static in-guest agent does not carry tonic.
use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=minion");

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&["minion/v1/guest.proto"], &["."])?;

    if env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .file_descriptor_set_path(out_dir.join("minion_descriptor.bin"))
            .compile_protos(&["minion/v1/controller.proto"], &["."])?;
    }
    Ok(())
}
