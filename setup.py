"""Build kern_d2 and its compiled extension kern_d2._C (CPU kernels always; CUDA kernels when CUDA is available
or FORCE_CUDA=1). Install with ``pip install -e . --no-build-isolation`` (torch must already be installed)."""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def make_extension():
    csrc = os.path.join(ROOT, "csrc")
    sources = glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp"))
    cuda_sources = glob.glob(os.path.join(csrc, "cuda", "*.cu"))
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = CUDA_HOME is not None and (torch.cuda.is_available() or force_cuda)
    if force_cuda and CUDA_HOME is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME, e.g. /usr/local/cuda)")
    extra_compile_args = {"cxx": ["-O3"]}
    define_macros = []
    extension = CppExtension
    if with_cuda:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return extension(
        "kern_d2._C",
        sorted(os.path.relpath(s, ROOT) for s in sources),
        include_dirs=[csrc],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )


setup(
    name="kern_d2",
    version="0.1.0",
    description="KERN (Knowledge-Embedded Routing Network) scene graph generation as a Detectron2 project",
    packages=find_packages(exclude=("tests", "tools", "configs", "benchmarks", "scripts")),
    python_requires=">=3.9",
    install_requires=["fvcore", "iopath", "pycocotools", "h5py", "numpy", "opencv-python-headless"],
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=os.environ.get("KERN_USE_NINJA", "1") == "1")},
    zip_safe=False,
)
