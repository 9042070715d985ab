//! Generates the gRPC code for `proto/` with a vendored `protoc` (no system protoc needed) and a
//! file-descriptor set for server reflection.
use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // authgate's contract, and the vendored (trimmed) Envoy external-authorization API.
    let protos =
        ["proto/authgate/v1/auth.proto", "proto/envoy/service/auth/v3/external_auth.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("authgate_descriptor.bin"))
        // Messages that carry secrets (codes, bindings, tokens) get a hand-written, redacting
        // `Debug` in `src/grpc/redact.rs` instead of the derived one.
        .skip_debug([
            ".authgate.v1.GetLoginUrlResponse",
            ".authgate.v1.ExchangeCodeRequest",
            ".authgate.v1.ExchangeCodeResponse",
            ".authgate.v1.ValidateTokenRequest",
            ".authgate.v1.RefreshSessionRequest",
            ".authgate.v1.RefreshSessionResponse",
            ".authgate.v1.LogoutResponse",
        ])
        .compile_protos(&protos.map(PathBuf::from), &[PathBuf::from("proto"), well_known])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
