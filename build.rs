//! Link fix for libtorch (see docs/architecture.md, "Build"):
//!
//! * embed an rpath to the libtorch library directory so binaries, tests and examples start
//!   without `LD_LIBRARY_PATH`;
//! * keep `libtorch_cuda.so` linked when it exists: the linker's `--as-needed` otherwise drops it,
//!   because no symbol of it is referenced directly, and CUDA is then never available at run time.
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
        return;
    }
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; binaries will need LD_LIBRARY_PATH to find libtorch");
        return;
    };
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
