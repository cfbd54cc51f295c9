"""Build driver: setup.py only hands the compiled part to CMake (CMakeLists.txt).

Build switches (environment variables):

* ``MOLLIFY_FAST_BUILD_EXT``  1 (default) build ``mollify_fast._C``; 0 skip it (pure Python).
* ``MOLLIFY_FAST_CUDA``       auto (default: on when ``nvcc`` is found), on, off.
* ``MOLLIFY_FAST_CUDA_ARCHS`` CMake CUDA architectures, default ``80-real;90`` (SASS for
  sm_80 and sm_90, PTX for sm_90 so newer GPUs JIT it). The GPU is never probed.
* ``MOLLIFY_FAST_CPU_ARCH``   ``-march`` for the CPU kernels, default ``native``.
* ``MOLLIFY_FAST_BUILD_TYPE`` CMake build type, default Release.
* ``MOLLIFY_FAST_REQUIRE_EXT`` 1: a failed build fails the install (CI sets it). Otherwise a
  failed build is reported and the package installs without it (the ``torch`` backend still
  works, and ``python -m mollify_fast info`` says why the extension is missing).
"""
import json
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
STATUS = os.path.join(ROOT, "mollify_fast", "_build_status.json")


def _env(name, default):
    return os.environ.get(name, default).strip()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        if _env("MOLLIFY_FAST_BUILD_EXT", "1") == "0":
            self._status(False, "switched off at build time (MOLLIFY_FAST_BUILD_EXT=0)", cuda=False)
            return
        try:
            super().run()
        except Exception as e:  # noqa: BLE001
            if _env("MOLLIFY_FAST_REQUIRE_EXT", "0") == "1":
                raise
            print(f"mollify_fast: building the extension failed ({e}); installing without it", file=sys.stderr)
            self._status(False, f"the build failed: {e}", cuda=False)

    def _status(self, built, reason, cuda):
        with open(STATUS, "w") as f:
            json.dump({"built": built, "reason": reason, "cuda": cuda}, f, indent=1)

    def build_extension(self, ext):
        import pybind11

        extdir = os.path.abspath(os.path.dirname(self.get_ext_fullpath(ext.name)))
        cuda_mode = _env("MOLLIFY_FAST_CUDA", "auto").lower()
        if cuda_mode not in ("auto", "on", "off"):
            raise ValueError(f"MOLLIFY_FAST_CUDA must be auto, on or off, got {cuda_mode!r}")
        nvcc = shutil.which("nvcc") or (
            os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
        )
        with_cuda = cuda_mode == "on" or (cuda_mode == "auto" and nvcc is not None and os.path.exists(nvcc))
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={_env('MOLLIFY_FAST_BUILD_TYPE', 'Release')}",
            f"-DMOLLIFY_FAST_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DMOLLIFY_FAST_CPU_ARCH={_env('MOLLIFY_FAST_CPU_ARCH', 'native')}",
            f"-DMOLLIFY_FAST_CUDA_ARCHS={_env('MOLLIFY_FAST_CUDA_ARCHS', '80-real;90')}",
        ]
        if with_cuda and nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        build_temp = os.path.join(self.build_temp, ext.name)
        os.makedirs(build_temp, exist_ok=True)
        subprocess.run(["cmake", ROOT, *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", str(os.cpu_count() or 2)], cwd=build_temp, check=True)
        self._status(True, "built" + (" with CUDA" if with_cuda else " without CUDA (MOLLIFY_FAST_CUDA=" + cuda_mode
                                       + ("" if nvcc else ", no nvcc found") + ")"), cuda=with_cuda)


setup(ext_modules=[CMakeExtension("mollify_fast._C")], cmdclass={"build_ext": CMakeBuild})
