//! Compiles cbsweep/v1/cbsweep.proto into the gRPC types and services (tonic-prost-build),
//! with a vendored protoc: no system protobuf compiler is needed to build cbsweep.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &["cbsweep/v1/cbsweep.proto"], &["."])?;
    println!("cargo:rerun-if-changed=cbsweep/v1/cbsweep.proto");
    Ok(())
}
