"""Builds the ``idip`` package and its C++/CUDA extension ``idip._C``.

Environment variables:
    FORCE_CUDA=1           compile the CUDA kernels even when no GPU is visible (needs nvcc).
    TORCH_CUDA_ARCH_LIST   GPU architectures, e.g. "9.0" for H100/H200, "8.0;8.6;9.0".
    MAX_JOBS               parallel compile jobs (ninja).
    DEBUG=1                build with -O0 -g and device debug info.
    CUDA_HOME              CUDA toolkit; when unset or without headers, /usr/local/cuda is tried.
    IDIP_CUDA_EMULATION=1  also build idip._C_cuda_emu: the kernels of csrc/cuda compiled by the
                           host compiler against the CPU runtime in csrc/emulation, registered
                           as torch.ops.idip_cuda_emu for CPU tensors (for tests without a GPU;
                           no CUDA toolkit needed).
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _has_cuda_headers(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def _pick_cuda_home() -> None:
    """Points CUDA_HOME at a toolkit with headers before torch.utils.cpp_extension reads it.

    torch derives CUDA_HOME from the location of ``nvcc``; a symlink in /usr/local/bin makes that
    /usr/local, which has no CUDA headers.
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if _has_cuda_headers(home):
        return
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append(os.path.dirname(os.path.dirname(nvcc)))
    candidates.append("/usr/local/cuda")
    for cand in candidates:
        if _has_cuda_headers(cand):
            if home:
                print(f"[idip] CUDA_HOME={home} has no include/cuda_runtime.h; using {cand}")
            os.environ["CUDA_HOME"] = cand
            return


_pick_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _nvidia_pip_includes() -> list[str]:
    """Header folders of pip-installed CUDA libraries (cublas/cusparse headers live there)."""
    found = []
    try:
        import nvidia  # type: ignore
    except ImportError:
        return found
    for base in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return sorted({p for p in found if os.path.isdir(p)})


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if cpp_extension.CUDA_HOME is None:
            sys.exit("[idip] FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
        return True
    return torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


def get_extensions():
    debug = os.environ.get("DEBUG", "0") == "1"
    with_cuda = _want_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))

    define_macros = [("IDIP_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp"]  # torch picks the C++ standard it was built with
    extra_link_args = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    extension = cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx}

    if with_cuda:
        extension = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
        nvcc += ["--expt-relaxed-constexpr"]
        extra_compile_args["nvcc"] = nvcc
        include_dirs += _nvidia_pip_includes()

    print(
        "[idip] building idip._C: "
        f"{'CPU + CUDA' if with_cuda else 'CPU only'} kernels, torch {torch.__version__}, "
        f"{'debug' if debug else 'release'}"
    )
    if with_cuda:
        print(
            f"[idip]   CUDA_HOME={cpp_extension.CUDA_HOME} "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: visible GPUs)')}"
        )
    else:
        print("[idip]   no CUDA kernels (no GPU visible and FORCE_CUDA != 1)")
    print(
        f"[idip]   {len(sources)} sources; MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}"
    )
    for src in sources:
        print(f"[idip]     {src}")

    extensions = [
        extension(
            "idip._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
    if os.environ.get("IDIP_CUDA_EMULATION", "0") == "1":
        extensions.append(_cuda_emulation_extension(cuda_sources, debug))
    return extensions


def _write_if_changed(path: str, text: str) -> None:
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def _cuda_emulation_extension(cuda_sources: list[str], debug: bool):
    """idip._C_cuda_emu: every csrc/cuda/*.cu, unchanged, built by the host compiler.

    Each .cu gets a generated one-line .cpp that includes it (the build routes .cu files to
    nvcc), so a new kernel file is part of the emulation without anyone listing it.
    """
    if os.environ.get("IDIP_HIP_CPU_ROOT"):
        print("[idip]   IDIP_HIP_CPU_ROOT is not used: the emulation runtime is csrc/emulation")
    wrapper_dir = os.path.join(ROOT, "build", "cuda_emu")
    os.makedirs(wrapper_dir, exist_ok=True)
    sources = sorted(glob.glob(os.path.join("csrc", "emulation", "*.cpp")))
    for cu in cuda_sources:
        name = os.path.splitext(os.path.basename(cu))[0]
        wrapper = os.path.join(wrapper_dir, f"{name}_cu.cpp")
        _write_if_changed(
            wrapper,
            f"// Generated by setup.py: {cu} compiled for the CPU emulation.\n"
            f'#include "cuda/{name}.cu"\n',
        )
        sources.append(os.path.relpath(wrapper, ROOT))
    print(f"[idip] building idip._C_cuda_emu: {len(cuda_sources)} CUDA sources on the CPU runtime")
    for src in sources:
        print(f"[idip]     {src}")
    cxx = ["-O0", "-g"] if debug else ["-O2"]
    cxx += ["-Wno-unknown-pragmas"]
    if platform.machine() in ("x86_64", "AMD64"):
        # TLS descriptors: threadIdx & co. are thread_local, and the default dialect calls
        # __tls_get_addr on every read (a tenth of the emulation's time).
        cxx += ["-mtls-dialect=gnu2"]
    return cpp_extension.CppExtension(
        "idip._C_cuda_emu",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[
            ("IDIP_TORCH_VERSION", f'"{torch.__version__}"'),
            ("IDIP_CUDA_EMULATION", None),
        ],
        extra_compile_args={"cxx": cxx},
    )


setup(
    name="idip",
    version="0.1.0",
    description="IDIP and CondInst instance segmentation on plain PyTorch with C++/CUDA kernels",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "configs")),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pycocotools",
        "pyyaml",
        "pillow",
        "tensorboard",
        "tqdm",
    ],
    ext_modules=get_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
