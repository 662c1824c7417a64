"""The GPU machine's Python environment: wheels carried from here, installed there without a network.

    .venv/bin/python -m benchmarks.gpu_env download          # here: fills .whl/ (ignored by git)
    python3 -m benchmarks.gpu_env install --target /tmp/site # there: prints what it used and installed

The GPU machine (the `run` tool's nvidia-h200) has Python 3.12 with jax
0.11.2 for CUDA 13, flax, optax, orbax-checkpoint, einops and many more, and
no network. `download` fetches, for Python 3.12 on manylinux x86_64, the
wheel of every requirement in setup.py that the image lacks (ml-collections
and tensorboardX today), at the version installed in this environment (the
tested one), plus those wheels' own requirements the image lacks, and
fallback wheels of flax, optax and orbax-checkpoint at the tested versions
(a few MB, pure Python). `install` runs there: it keeps each image package
whose version satisfies setup.py's range and installs, with
`pip --no-index --no-deps --target`, the carried wheel of every requirement
the image lacks or holds out of range (and its carried dependencies the
image lacks). Only the standard library and `packaging` are used, so it runs
before the project can be imported.
"""
from __future__ import annotations

import argparse
import ast
import glob
import importlib.metadata as md
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(ROOT, ".whl")
# The image's packages, names normalized (the device tool's KINDS.md, as read there on 2026-11-17). Not carried:
IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless opt-einsum opt-einsum-fx optax optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil py-cpuinfo pyarrow
pybind11 pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentence-transformers sentencepiece setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torch-geometric torchaudio torchdiffeq
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
# Carried even though the image has them: the tested versions, used there only if the image's are out of range.
FALLBACK = ("flax", "optax", "orbax-checkpoint")
# Never carried: the image's own builds are the point (jax for CUDA 13) or too large to carry.
NEVER = {"jax", "jaxlib", "numpy", "scipy", "matplotlib", "pillow"}
TARGET = dict(python="3.12", platforms=("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                        "manylinux2014_x86_64", "manylinux1_x86_64"))
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """setup.py's install_requires, read without running it."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise SystemExit("error: setup.py has no install_requires")


def wheel_requires(path: str) -> list[str]:
    """A wheel's unconditional requirements (and those whose marker holds on the GPU machine)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    out = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(TARGET_ENV):
                out.append(r.name)
    return out


def download(dest: str = WHEELS) -> list[str]:
    from packaging.requirements import Requirement

    os.makedirs(dest, exist_ok=True)
    todo = [norm(Requirement(r).name) for r in requirements()]
    todo = [n for n in todo if n not in IMAGE] + list(FALLBACK)
    done: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in done or name in NEVER:
            continue
        done.add(name)
        version = md.version(name)  # the version tested here
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", TARGET["python"], "--implementation", "cp", "-d", dest, f"{name}=={version}"]
        for p in TARGET["platforms"]:
            cmd += ["--platform", p]
        subprocess.run(cmd, check=True)
        whl = [w for w in glob.glob(os.path.join(dest, "*.whl"))
               if norm(os.path.basename(w).split("-")[0]) == name]
        print(f"{name}=={version}: {', '.join(os.path.basename(w) for w in whl)}")
        for w in whl:
            todo += [n for n in map(norm, wheel_requires(w)) if n not in IMAGE and n not in done]
    total = sum(os.path.getsize(w) for w in glob.glob(os.path.join(dest, "*.whl")))
    print(f"{dest}: {total / 2**20:.1f} MiB")
    return sorted(done)


def install(target: str, wheels: str = WHEELS) -> dict:
    """Installs the carried wheels the image needs into `target`; returns {name: 'image X' | 'carried X'}."""
    from packaging.requirements import Requirement

    carried = {norm(os.path.basename(w).split("-")[0]): w for w in glob.glob(os.path.join(wheels, "*.whl"))}
    chosen, picks = {}, []
    for spec in requirements():
        r = Requirement(spec)
        name = norm(r.name)
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is not None and r.specifier.contains(have, prereleases=True):
            chosen[name] = f"image {have}"
        elif name in carried:
            picks.append(carried[name])
            chosen[name] = f"carried {os.path.basename(carried[name]).split('-')[1]} (image: {have})"
        else:
            chosen[name] = f"image {have} OUTSIDE {r.specifier} (nothing carried)"
    # The picked wheels' own requirements that the image lacks, if carried.
    for w in list(picks):
        for dep in map(norm, wheel_requires(w)):
            try:
                md.version(dep)
            except md.PackageNotFoundError:
                if dep in carried and carried[dep] not in picks:
                    picks.append(carried[dep])
                    chosen[dep] = f"carried {os.path.basename(carried[dep]).split('-')[1]} (dependency)"
    if picks:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", target, *picks], check=True)
    for name, how in chosen.items():
        print(f"  {name:<18} {how}")
    return chosen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_env", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("--dest", default=WHEELS)
    i = sub.add_parser("install")
    i.add_argument("--target", default="/tmp/site")
    i.add_argument("--wheels", default=WHEELS)
    a = p.parse_args(argv)
    if a.cmd == "download":
        download(a.dest)
    else:
        install(a.target, a.wheels)


if __name__ == "__main__":
    main()
