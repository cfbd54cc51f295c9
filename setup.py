"""Build driver: setup.py only hands the compiled part to CMake (CMakeLists.txt).

Build switches (environment variables):

* ``MOLLIFY_FAST_BUILD_EXT``  1 (default) build ``mollify_fast._C``; 0 skip it (pure Python).
* ``MOLLIFY_FAST_CUDA``       auto (default: on when ``nvcc`` is found), on, off.
* ``MOLLIFY_FAST_CUDA_ARCHS`` CMake CUDA architectures, default ``80-real;90`` (SASS for
  sm_80 and sm_90, PTX for sm_90 so newer GPUs JIT it). The GPU is never probed at build time;
  the ``cuda`` backend checks at run time that the GPU and driver can run what was built.
* ``MOLLIFY_FAST_CPU_ARCH``   empty (default): a portable build, baseline x86-64-v2 with AVX2 and
  AVX-512 copies of the CPU kernels chosen at run time; ``native`` (or any ``-march`` value):
  one copy for that target only, for local builds.
* ``MOLLIFY_FAST_BUILD_TYPE`` CMake build type, default Release.
* ``MOLLIFY_FAST_REQUIRE_EXT`` 1: a failed build fails the install (CI sets it). Otherwise a
  failed build is reported on stderr (pip shows it with ``-v``) and the package installs without
  it: the ``torch`` backend still works, the first call that needs the extension warns, and
  ``python -m mollify_fast info`` names the cause and the fix, from ``_build_status.json``,
  which ships in the wheel.
"""
import json
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
STATUS_NAME = "_build_status.json"
FIX = """\
  To get it: install a C++17 compiler (g++ or clang++) with OpenMP and CMake >= 3.18, then
  reinstall without pip's wheel cache (pip caches the wheel built without the extension and
  would reinstall it):
      pip install --no-cache-dir --force-reinstall mollify_fast
  or, from a source checkout:  pip install --no-cache-dir --force-reinstall .
  Until then `backend="auto"` runs the slower pure-PyTorch backend; the first call warns.
  `python -m mollify_fast info` shows the cause."""


def _env(name, default):
    return os.environ.get(name, default).strip()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        required = _env("MOLLIFY_FAST_REQUIRE_EXT", "0") == "1"
        if _env("MOLLIFY_FAST_BUILD_EXT", "1") == "0":
            if required:
                raise RuntimeError("mollify_fast: MOLLIFY_FAST_REQUIRE_EXT=1 and MOLLIFY_FAST_BUILD_EXT=0 contradict "
                                   "each other; unset one")
            self._not_built("switched off at build time (MOLLIFY_FAST_BUILD_EXT=0)")
            return
        try:
            super().run()
        except Exception as e:  # noqa: BLE001
            if required:
                raise
            self._not_built(f"the build failed: {type(e).__name__}: {e}")

    def _not_built(self, reason):
        bar = "=" * 78
        print(f"\n{bar}\nWARNING: mollify_fast is being installed WITHOUT its compiled extension "
              f"(mollify_fast._C).\n  Why: {reason}\n  The cpu and cuda backends will be unavailable.\n{FIX}\n{bar}\n",
              file=sys.stderr, flush=True)
        self._status(False, reason, cuda=False)

    def _status(self, built, reason, cuda):
        """Write the build's record next to the extension: in build/lib for a wheel (so it ships),
        in the source tree for an in-place or editable build."""
        pkg_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath("mollify_fast._C")))
        os.makedirs(pkg_dir, exist_ok=True)
        with open(os.path.join(pkg_dir, STATUS_NAME), "w") as f:
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
            f"-DMOLLIFY_FAST_CPU_ARCH={_env('MOLLIFY_FAST_CPU_ARCH', '')}",
            f"-DMOLLIFY_FAST_CUDA_ARCHS={_env('MOLLIFY_FAST_CUDA_ARCHS', '80-real;90')}",
        ]
        if with_cuda and nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        build_temp = os.path.join(self.build_temp, ext.name)
        os.makedirs(build_temp, exist_ok=True)
        cxx = os.environ.get("CXX", "").split()[:1] or ["c++"]
        if not any(shutil.which(c) for c in (cxx[0], "c++", "g++", "clang++")):
            raise RuntimeError("no C++ compiler was found (c++, g++ or clang++ on PATH, or CXX)")
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake was not found (pip installs it into an isolated build; without build "
                               "isolation, `pip install cmake`)")
        subprocess.run([cmake, ROOT, *args], cwd=build_temp, check=True)
        subprocess.run([cmake, "--build", ".", "-j", str(os.cpu_count() or 2)], cwd=build_temp, check=True)
        self._status(True, "built" + (" with CUDA" if with_cuda else " without CUDA (MOLLIFY_FAST_CUDA=" + cuda_mode
                                       + ("" if nvcc else ", no nvcc found") + ")"), cuda=with_cuda)


setup(ext_modules=[CMakeExtension("mollify_fast._C")], cmdclass={"build_ext": CMakeBuild})
