//! Link fix for libtorch (see docs/architecture.md, "Build"):
//!
//! * embed an rpath to the libtorch library directory so binaries, tests and examples start
//!   without `LD_LIBRARY_PATH`;
//! * keep `libtorch_cuda.so` linked when it exists: the linker's `--as-needed` otherwise drops it,
//!   because no symbol of it is referenced directly, and CUDA is then never available at run time.
//!
//! It also compiles `src/native/shim.cpp`, the libtorch calls that tch does not bind (fused AdamW,
//! multi-tensor ops, the determinism switch, an operation counter), against the headers of the
//! same libtorch: `<lib>/../include`, the layout of both the PyTorch wheel and the libtorch
//! archive. The C++ ABI flag follows `LIBTORCH_CXX11_ABI` (default 1, as torch-sys assumes for a
//! libtorch archive, and what every PyTorch wheel since 2.7 uses).
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
    compile_shim(Path::new(&lib_dir));
    println!("cargo:rerun-if-changed={lib_dir}");
    let torch_cuda = Path::new(&lib_dir).join("libtorch_cuda.so");
    if torch_cuda.exists() {
        println!("cargo:rerun-if-changed={}", torch_cuda.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if target_os == "linux" && torch_cuda.exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Compiles the C++ shim against the headers next to `lib_dir`.
fn compile_shim(lib_dir: &Path) {
    const SOURCE: &str = "src/native/shim.cpp";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = lib_dir.parent().map(|torch| torch.join("include")).filter(|i| i.join("ATen").is_dir());
    let Some(include) = include else {
        panic!("no libtorch headers (include/ATen) next to {}", lib_dir.display());
    };
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(SOURCE)
        .compile("altup_moe_native");
}
