"""Builds lazyinit, with its extension lazyinit._C, from the CMake project.

    python3 setup.py build_ext --inplace      # or: pip install --no-build-isolation .

The extension is compiled from the same sources as `make build` (CMake
target lazyinit_python, plus the core library it links), against the torch
that runs this script.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    """Runs CMake for the Python extension and copies what it built."""

    def build_extension(self, ext: Extension) -> None:
        import torch.utils

        build_dir = os.path.join(ROOT, "build", "setup")
        prefix = torch.utils.cmake_prefix_path
        args = [
            "cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}", "-DLAZYINIT_BUILD_TESTS=OFF",
        ]
        if os.path.isdir(os.path.join(prefix, "Torch")):
            args.append(f"-DCMAKE_PREFIX_PATH={prefix}")
        subprocess.check_call(args)
        subprocess.check_call(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)])
        target_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        os.makedirs(target_dir, exist_ok=True)
        built = os.path.join(ROOT, "python", "lazyinit")
        for path in glob.glob(os.path.join(built, "_C*.so")) + glob.glob(
                os.path.join(built, "liblazyinit_core.so")):
            if os.path.dirname(os.path.abspath(path)) != target_dir:
                shutil.copy2(path, target_dir)


setup(
    name="lazyinit",
    version="0.1.0",
    description="A lazy device for PyTorch: record model construction, "
                "materialize it exactly where it belongs",
    package_dir={"": "python"},
    packages=["lazyinit"],
    ext_modules=[Extension("lazyinit._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.8",
)
