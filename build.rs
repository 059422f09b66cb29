//! Link fix for libtorch (see docs/architecture.md, "Build"):
//!
//! * embed an rpath to the libtorch library directory so binaries, tests and examples start
//!   without `LD_LIBRARY_PATH`;
//! * keep `libtorch_cuda.so` linked when it exists: the linker's `--as-needed` otherwise drops it,
//!   because no symbol of it is referenced directly, and CUDA is then never available at run time.
//!
//! It also compiles `src/native/shim.cpp`, the libtorch calls that tch does not bind (fused AdamW,
//! multi-tensor ops, the determinism switch, an operation counter), and `src/native/fused.cpp`
//! (fused CPU kernels for RMSNorm, the rotary embedding and attention's qkv split), against the
//! headers of the same libtorch: `<lib>/../include`, the layout of both the PyTorch wheel and the
//! libtorch archive. The C++ ABI flag follows `LIBTORCH_CXX11_ABI` (default 1, as torch-sys
//! assumes for a libtorch archive, and what every PyTorch wheel since 2.7 uses). When that
//! libtorch has CUDA (`libtorch_cuda.so`) and the CUDA runtime headers are found (`CUDA_HOME`,
//! `/usr/local/cuda`, or the `nvidia` packages next to a PyTorch wheel), `src/native/cuda.cpp`
//! (CUDA graphs, allocator statistics) is compiled too, `libc10_cuda.so` is linked, and the crate
//! is built with `--cfg altup_moe_cuda`.
//!
//! torch-sys (`links = "tch"`) exports its library directory as `DEP_TCH_LIBTORCH_LIB`.
//!
//! The script re-runs when the installed libtorch changes (a CPU wheel swapped for a CUDA wheel in
//! the same virtual environment, or the reverse), so that the link flags above follow it: it
//! watches the library directory, which cargo scans recursively (a file added, removed or changed
//! in it counts), and `libtorch_cuda.so` itself when it exists. A watched path that does not exist
//! would make cargo re-run the script, and rebuild the crate, on every build, hence the condition;
//! the directory watch already catches the file appearing.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        panic!(
            "altup-moe builds on Linux and macOS (its C++ shim is compiled with GCC/Clang flags), not on {target_os}"
        );
    }
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("DEP_TCH_LIBTORCH_LIB is not set: torch-sys did not say where libtorch is");
    };
    println!("cargo::rustc-check-cfg=cfg(altup_moe_cuda)");
    let lib = Path::new(&lib_dir);
    let include = lib.parent().map(|torch| torch.join("include")).filter(|i| i.join("ATen").is_dir());
    let Some(include) = include else {
        panic!("no libtorch headers (include/ATen) next to {lib_dir}");
    };
    let torch_cuda = lib.join("libtorch_cuda.so");
    let cuda_headers = if torch_cuda.exists() { cuda_runtime_headers(lib) } else { None };
    compile_shim(&include, cuda_headers.as_deref());
    println!("cargo:rerun-if-changed={lib_dir}");
    if torch_cuda.exists() {
        println!("cargo:rerun-if-changed={}", torch_cuda.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if target_os == "linux" && torch_cuda.exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        if cuda_headers.is_some() {
            println!("cargo:rustc-link-arg=-lc10_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The folder holding the CUDA runtime headers (`cuda_runtime_api.h` with `crt/`) for a libtorch
/// with CUDA in `lib`: `CUDA_HOME`, the toolkit's usual place, the `nvidia` Python packages that a
/// PyTorch wheel depends on, or the copy Triton (another dependency of the wheel) carries.
fn cuda_runtime_headers(lib: &Path) -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(home) = env::var("CUDA_HOME") {
        candidates.push(Path::new(&home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    // <site-packages>/torch/lib → <site-packages>/nvidia/<package>/include
    if let Some(nvidia) = lib.parent().and_then(Path::parent).map(|site| site.join("nvidia")) {
        let mut packages: Vec<_> =
            std::fs::read_dir(&nvidia).into_iter().flatten().flatten().map(|e| e.path()).collect();
        packages.sort();
        candidates.extend(packages.into_iter().map(|p| p.join("include")));
    }
    if let Some(site) = lib.parent().and_then(Path::parent) {
        candidates.push(site.join("triton/backends/nvidia/include"));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("cuda_runtime_api.h").is_file() && dir.join("crt/host_config.h").is_file())
}

/// Compiles the C++ shim against libtorch's headers in `include`, and its CUDA half when the CUDA
/// runtime headers are in `cuda`.
fn compile_shim(include: &Path, cuda: Option<&Path>) {
    const SOURCES: [&str; 2] = ["src/native/shim.cpp", "src/native/fused.cpp"];
    const CUDA_SOURCE: &str = "src/native/cuda.cpp";
    for file in SOURCES.iter().chain(&[CUDA_SOURCE, "src/native/guarded.h"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // The fused kernels (fused.cpp) round as the composite formulas do: no multiply-add
        // contraction; and they are optimised in every profile, debug builds included.
        .flag("-ffp-contract=off")
        .opt_level(3)
        .files(SOURCES);
    if let Some(cuda) = cuda {
        build.include(cuda).file(CUDA_SOURCE);
        println!("cargo:rustc-cfg=altup_moe_cuda");
    }
    build.compile("altup_moe_native");
}
