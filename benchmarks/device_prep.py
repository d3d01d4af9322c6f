"""Prepare `benchmarks.gpu` for a lent GPU machine (the device tool): wheels, data, one command.

    python -m benchmarks.device_prep [--images-per-class 256] [--dry-run]

Why: the lent GPU machine (H100/H200, x86-64, Python 3.12) has torch, timm, opencv, pandas,
scikit-learn... but not albumentations, pydicom, papermill, nbconvert, ipykernel,
efficientnet-pytorch or grad-cam, has no network, and receives only the working tree
(64 MiB, carried folders included). Without those packages `benchmarks.gpu` skips its
real run (part 5) and its albumentations pipeline (part 3). This script, run here:

1. lists what `benchmarks.gpu` and `run_all.py` import at run time: requirements.txt's
   runtime packages (`NOT_NEEDED` left out) and, through the installed metadata
   (`Requires-Dist`, markers evaluated for CPython 3.12 on Linux x86-64), everything they
   need, stopping at what the device image has (`DEVICE_HAS`) and torch/triton/nvidia-*;
   each at the version installed here (`NAME==VERSION`);
2. downloads their cp312 manylinux wheels into `.whl/` (skips those already there, removes
   any other wheel: two versions of one package stop the install on the device);
3. copies N images per class per split of `../shared/data/kermany224` into
   `.bench_data/kermany224` (same layout, evenly spaced over the sorted names);
4. checks that the working tree + `.whl` + `.bench_data` is under 64 MiB, and prints the
   device `run` call: its `carry` and its command (at most 2,000 characters).

`--dry-run` prints the list and the call and downloads and copies nothing.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
BENCH_DATA = ROOT / ".bench_data"
KERMANY = ROOT.parent / "shared" / "data" / "kermany224"
CARRY = [".whl", ".bench_data"]
LIMIT_BYTES = 64 * 2**20          # what one device call may carry, tree included
MAX_COMMAND = 2000                # characters of the device command line
TIMEOUT_S = 540                   # the run's timeout_s; the command must end well inside it
BUDGET_S = 420                    # benchmarks.gpu --budget: its real run (part 5) stops there
IMAGES_PER_CLASS = 256            # 2 classes x 256 = 512 = benchmarks.gpu --pipeline-files
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}

# Interpreter and platform of the device image, for the dependency markers.
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix"}

# requirements.txt entries that neither benchmarks.gpu nor run_all.py imports on Kermany data
NOT_NEEDED = {
    "pytest": "tests only", "playwright": "tests only",
    "kaggle": "utils.data.download only", "ipywidgets": "imported nowhere",
    "tensorboard": "only with tensorboard=true; the device has it",
    "pylibjpeg": "DICOM codec (RSNA .dcm only)", "pylibjpeg-libjpeg": "DICOM codec",
    "pylibjpeg-openjpeg": "DICOM codec", "python-gdcm": "DICOM codec", "pyjpegls": "DICOM codec",
}

# The device image's Python packages: /work/.library/device/KINDS.md, section "Python
# packages already there" (image 'cuda' of nvidia-h100-x1 and nvidia-h200, read 2026-11-17).
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())

PIP_DOWNLOAD = ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]
# pip matches manylinux_2_N exactly: the retry offers every other N up to 39
MORE_PLATFORMS = [a for n in range(5, 40) if n not in (17, 27, 28)
                  for a in ("--platform", f"manylinux_2_{n}_x86_64")]
NETWORK_HINTS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name",
                 "Network is unreachable", "ProxyError", "ConnectTimeout", "SSLError")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def on_device(name: str, device_has: frozenset[str] = DEVICE_HAS) -> bool:
    """Already on the device image, or never to be carried (torch's CUDA stack)."""
    return name in device_has or name in ("torch", "triton") or name.startswith("nvidia-")


def runtime_roots(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """requirements.txt's package names, normalised, less `NOT_NEEDED`."""
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(normalise(Requirement(line).name))
    return [n for n in names if n not in NOT_NEEDED]


def requires(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """`dist`'s requirements that apply on the device, with the `extras` asked of it."""
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**TARGET_ENV, "extra": e})
                                     for e in extras | {""}):
            out.append(req)
    return out


def wheel_set(roots: list[str], device_has: frozenset[str] = DEVICE_HAS
              ) -> tuple[dict[str, str], list[str]]:
    """{name: installed version} of every package to carry, walking `Requires-Dist` from
    `roots` and stopping at what the device has; and notes on requirements not installed
    here (not carried: this venv runs without them)."""
    pins: dict[str, str] = {}
    notes: list[str] = []
    todo: list[tuple[str, set[str], str]] = [(r, set(), "requirements.txt") for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras, by = todo.pop()
        if on_device(name, device_has) or (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            notes.append(f"{name} (required by {by}) is not installed here: not carried")
            continue
        pins[name] = dist.version
        todo += [(normalise(r.name), set(r.extras), name) for r in requires(dist, extras)]
    return dict(sorted(pins.items())), sorted(set(notes))


def has_wheel(folder: Path, name: str, version: str) -> bool:
    """A wheel of name==version is already in `folder`."""
    for whl in folder.glob("*.whl"):
        parts = whl.name.split("-")
        if normalise(parts[0]) == name and parts[1] == version:
            return True
    return False


def prune(folder: Path, pins: dict[str, str]) -> list[str]:
    """Remove wheels that are not in `pins` (another version, or no longer needed): two
    versions of one package stop the whole install on the device."""
    stale = [w for w in folder.glob("*.whl")
             if pins.get(normalise(w.name.split("-")[0])) != w.name.split("-")[1]]
    for whl in stale:
        whl.unlink()
    return sorted(w.name for w in stale)


def pip(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode and any(h in done.stderr for h in NETWORK_HINTS):
        sys.exit("device_prep: pip could not reach the package registry (no network?); "
                 "nothing more was downloaded. Last lines:\n" + done.stderr.strip()[-600:])
    return done


def build_pure_wheel(spec: str, dest: Path) -> bool:
    """Last resort for a release published as source only: build it here, keep the wheel
    only if it is pure Python (`-none-any`, so it installs on 3.12 too)."""
    with tempfile.TemporaryDirectory() as tmp:
        if pip(["wheel", "--no-deps", "-q", "-w", tmp, spec]).returncode:
            return False
        built = list(Path(tmp).glob("*-none-any.whl"))
        for whl in built:
            shutil.move(str(whl), dest / whl.name)
        return bool(built)


def download(pins: dict[str, str], dest: Path = WHEELS) -> list[str]:
    """Fetch the missing wheels into `dest`; return the specs that could not be fetched."""
    dest.mkdir(exist_ok=True)
    for name in prune(dest, pins):
        print(f"  removed {name}: not in the list (another version, or not needed)")
    specs = [f"{n}=={v}" for n, v in pins.items() if not has_wheel(dest, n, v)]
    print(f"{len(pins) - len(specs)} wheels already in {dest.name}/, fetching {len(specs)}")
    if not specs or pip([*PIP_DOWNLOAD, "-q", "-d", str(dest), *specs]).returncode == 0:
        return []
    failed = []
    for spec in specs:  # one at a time, so one missing wheel does not stop the others
        for extra in ([], MORE_PLATFORMS):
            if pip([*PIP_DOWNLOAD, *extra, "-q", "-d", str(dest), spec]).returncode == 0:
                break
        else:
            if not build_pure_wheel(spec, dest):
                failed.append(spec)
            else:
                print(f"  {spec}: no binary wheel published; built a pure-Python one here")
    return failed


def copy_subset(src: Path, dst: Path, per_class: int) -> int:
    """Copy `per_class` images of every folder of images under `src` (split/class) to the
    same place under `dst` (emptied first), evenly spaced over the sorted names; return the
    number copied."""
    if dst.exists():
        shutil.rmtree(dst)
    copied = 0
    for folder in sorted(p for p in src.rglob("*") if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        n = min(per_class, len(files))
        for f in (files[i * len(files) // n] for i in range(n)):
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
            copied += 1
    return copied


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def tree_bytes(root: Path = ROOT) -> int:
    """What the device call sends besides carry: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.split("\0")
    return sum((root / p).stat().st_size for p in set(listed) if p and (root / p).is_file())


def check_sizes(sizes: dict[str, int], limit: int = LIMIT_BYTES) -> int:
    """Print each size and the total; exit with a message when the total is over `limit`."""
    for what, n in sizes.items():
        print(f"  {what:<28} {n / 2**20:8.2f} MiB")
    total = sum(sizes.values())
    print(f"  {'total carried':<28} {total / 2**20:8.2f} MiB (limit {limit / 2**20:.0f} MiB)")
    if total >= limit:
        sys.exit(f"device_prep: {total / 2**20:.1f} MiB is over the device call's "
                 f"{limit / 2**20:.0f} MiB: pass a smaller --images-per-class")
    return total


def device_command(budget: int = BUDGET_S) -> str:
    """The device `run` command: install the wheels, check they import, run the benchmark."""
    command = (
        "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile "
        "--no-cache-dir --upgrade --target /tmp/site .whl/*.whl && "
        "export PYTHONPATH=/tmp/site:$PYTHONPATH || exit; export NO_ALBUMENTATIONS_UPDATE=1; "
        "python3 -c \"import albumentations, pydicom, papermill, pytorch_grad_cam, "
        "efficientnet_pytorch, nbconvert, ipykernel; print('carried wheels import')\"; "
        "PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu --data .bench_data/kermany224 "
        f"--out $OUT/gpu_benchmark.json --budget {budget} 2>&1 | tee $OUT/gpu.log")
    assert len(command) <= MAX_COMMAND, f"device command is {len(command)} characters"
    return command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images-per-class", type=int, default=IMAGES_PER_CLASS,
                   help="images per class per split copied to .bench_data")
    p.add_argument("--dry-run", action="store_true", help="print only: no download, no copy")
    args = p.parse_args(argv)
    pins, notes = wheel_set(runtime_roots())
    print(f"{len(pins)} packages to carry (installed versions, not on the device image):")
    print("  " + " ".join(f"{n}=={v}" for n, v in pins.items()))
    for note in notes:
        print(f"  note: {note}")
    failed: list[str] = []
    if not args.dry_run:
        failed = download(pins)
        if KERMANY.is_dir():
            n = copy_subset(KERMANY, BENCH_DATA / "kermany224", args.images_per_class)
            print(f"copied {n} images of {KERMANY} to {BENCH_DATA.name}/kermany224")
        else:
            print(f"no data copied: {KERMANY} is absent (benchmarks.gpu then skips parts 3 "
                  f"and 5); place the shared data folder beside the project root")
    print("sizes" + (" (as they are now: --dry-run fetched and copied nothing)"
                     if args.dry_run else "") + ":")
    check_sizes({"working tree (git ls-files)": tree_bytes(), ".whl": folder_bytes(WHEELS),
                 ".bench_data": folder_bytes(BENCH_DATA)})
    print(f"\ndevice run: carry={CARRY!r}, timeout_s={TIMEOUT_S}, command:\n{device_command()}")
    if failed:
        print(f"\nCOULD NOT FETCH {len(failed)} wheel(s) for cp312 manylinux x86-64: "
              f"{' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
