// Compiles proto/smalltext.proto with protox (pure Rust), so no system `protoc` is needed;
// under the `cuda` feature also the LSTM cell kernels to PTX with nvcc (gpu/env.sh sets
// NVCC and CUDA_COMPUTE_CAP; the driver compiles the PTX for the GPU it finds).
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    let file = "../proto/smalltext.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], [proto_dir])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cell_kernels()?;
    }
    Ok(())
}

fn cell_kernels() -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/model/lstm_cell.cu";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("lstm_cell.ptx");
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch=compute_{cap}"),
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .map_err(|e| format!("running {nvcc} (source gpu/env.sh first): {e}"))?;
    if !status.success() {
        return Err(format!("{nvcc} failed on {src}: {status}").into());
    }
    Ok(())
}
