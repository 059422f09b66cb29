//! Link fix for libtorch (see docs/architecture.md, "Build"):
//!
//! * embed an rpath to the libtorch library directory so binaries, tests and examples start
//!   without `LD_LIBRARY_PATH`;
//! * keep `libtorch_cuda.so` linked when it exists: the linker's `--as-needed` otherwise drops it,
//!   because no symbol of it is referenced directly, and CUDA is then never available at run time.
//!
//! torch-sys (`links = "tch"`) exports its library directory as `DEP_TCH_LIBTORCH_LIB`.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        return;
    }
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; binaries will need LD_LIBRARY_PATH to find libtorch");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if target_os == "linux" && Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
