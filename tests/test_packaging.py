"""Packaging: declared dependencies, the sdist's contents, the build's loud fallback, the CPU
kernels' run-time instruction-set choice, and the cuda backend's GPU/driver check.

The full sequence (clean clone, ``python -m build``, the wheel in a fresh venv holding only a
CPU torch) is tests/packaging_smoke.sh: it takes minutes, so it is not a pytest test."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import types
import zipfile

import pytest
import torch

import mollify_fast as mf
from mollify_fast import backends
from mollify_fast.__main__ import version_note
from mollify_fast.backends import _native, mollify_cuda
from conftest import SUBPROCESS_LIMIT_S  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _ext():
    ext, why = _native.extension()
    assert ext is not None, why
    return ext


# ---- 1. dependencies ----------------------------------------------------------------------


def test_every_third_party_import_is_declared():
    """numpy is imported by mollify_fast.schedules and torch wheels do not pull it in; triton is
    optional (the package imports without it: tests/test_mollify_op.py)."""
    proj = _pyproject()["project"]
    declared = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in proj["dependencies"]}
    optional = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in proj["optional-dependencies"]["triton"]}
    imported = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "mollify_fast")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "mollify_fast"}
    assert third_party - declared - optional == set()
    assert {"torch", "numpy"} <= declared and optional == {"triton"}


def test_metadata_license_typed_and_version_bounds():
    proj = _pyproject()["project"]
    assert proj["license"] == "MIT" and proj["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert "The mollify_fast authors" in f.read()
    assert os.path.exists(os.path.join(ROOT, "mollify_fast", "py.typed"))
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["mollify_fast"]
    assert proj["optional-dependencies"]["triton"] == ["triton>=3.6,<3.9"]


@pytest.mark.parametrize("package,version,untested", [
    ("torch", "2.11.0", False), ("torch", "2.14.1+cu130", False), ("torch", "2.13.0+cpu", False),
    ("torch", "2.10.0", True), ("torch", "2.15.0.dev20260101", True), ("triton", "3.8.0", False),
    ("triton", "3.5.1", True), ("triton", "3.9.0", True), ("torch", "weird", True),
])
def test_info_marks_versions_outside_the_tested_range(package, version, untested):
    assert ("untested" in version_note(package, version)) == untested


# ---- 2. the sdist -------------------------------------------------------------------------


_NOT_SOURCES = ("benchmarks/", "tests/")  # not part of the package's build


def _copy_checkout(dst):
    """This checkout's package sources (the files git tracks, and new ones it does not ignore),
    so that a build writes nothing (egg-info, status) into the checkout. Only those: a copy of
    the whole folder would take the virtual environment along (gigabytes per test)."""
    r = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True)
    for rel in r.stdout.decode().split("\0"):
        if not rel or rel.startswith(_NOT_SOURCES) or not os.path.isfile(os.path.join(ROOT, rel)):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))
    return dst


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """An sdist of this checkout (no compiling: a few seconds)."""
    pytest.importorskip("build", reason="the `build` package (requirements-dev.txt)")
    tmp = tmp_path_factory.mktemp("sdist")
    src = _copy_checkout(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
                        "--outdir", str(tmp / "out"), str(src)], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = (tmp / "out").glob("*.tar.gz")
    return path


def test_sdist_holds_everything_the_build_needs(sdist):
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    expected = {"CMakeLists.txt", "setup.py", "pyproject.toml", "LICENSE", "README.md", "mollify_fast/py.typed",
                "mollify_fast/backends/auto_table.json"}
    expected |= {f"csrc/{n}" for n in os.listdir(os.path.join(ROOT, "csrc"))}
    expected |= {f"kernels/{n}" for n in os.listdir(os.path.join(ROOT, "kernels"))}
    assert expected - names == set()
    assert not [n for n in names if n.endswith((".so", ".o")) or n.endswith("_build_status.json")]


# ---- 4. the loud fallback -----------------------------------------------------------------


def _wheel_without_extension(tmp_path, env_extra):
    """Build a wheel of this checkout with the extension switched off or broken (fast: no
    compiling)."""
    src = _copy_checkout(tmp_path / "src")
    env = {**os.environ, **env_extra}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v",
                        "--wheel-dir", str(tmp_path / "wheels"), str(src)],
                       capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S, env=env)
    return r, list((tmp_path / "wheels").glob("*.whl"))


@pytest.mark.parametrize("env_extra,reason", [
    ({"MOLLIFY_FAST_BUILD_EXT": "0"}, "MOLLIFY_FAST_BUILD_EXT=0"),
    ({"MOLLIFY_FAST_CUDA": "bogus"}, "the build failed: ValueError: MOLLIFY_FAST_CUDA must be auto, on or off"),
    # No compiler: PATH holds only the interpreter's folder (python, pip, cmake from PyPI).
    ({"PATH": os.path.dirname(sys.executable), "CXX": ""}, "the build failed: RuntimeError: no C++ compiler was found"),
])
def test_wheel_without_extension_says_why_and_ships_its_status(tmp_path, env_extra, reason):
    r, wheels = _wheel_without_extension(tmp_path, env_extra)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "WITHOUT its compiled extension" in out and reason in out
    assert "--no-cache-dir --force-reinstall" in out
    (whl,) = wheels
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        assert not [n for n in names if n.startswith("mollify_fast/_C")]
        status = json.loads(z.read("mollify_fast/_build_status.json"))
        assert "mollify_fast/py.typed" in names
    assert status["built"] is False and reason in status["reason"]


def test_required_extension_fails_the_build(tmp_path):
    r, wheels = _wheel_without_extension(tmp_path, {"MOLLIFY_FAST_CUDA": "bogus", "MOLLIFY_FAST_REQUIRE_EXT": "1"})
    assert r.returncode != 0 and wheels == []
    assert "MOLLIFY_FAST_CUDA must be auto, on or off" in r.stdout + r.stderr


_MISSING = """
import sys
# An editable install of another checkout in this environment would map mollify_fast._C to its
# build: drop its finder, so this copy is what an install without the extension looks like.
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
import warnings, torch
warnings.simplefilter("default")
import mollify_fast as mf
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    y1 = mf.mollify(torch.randn(2, 3, 8, 8), 0.5)
    y2 = mf.mollify(torch.randn(2, 3, 8, 8), 0.5)
    y3 = mf.mollify(torch.randn(5, 7), 0.5, alpha=0.9)
print(mf.last_backend())
print(len(w), w[0].category.__name__ if w else None, w[0].filename if w else None)
print(str(w[0].message) if w else "")
from mollify_fast.__main__ import info
print(info())
"""


def _installed_copy(tmp_path, status):
    """The package as an install without the extension leaves it: the Python files, and the
    build's status file when given (no _C)."""
    dst = tmp_path / "site" / "mollify_fast"
    shutil.copytree(os.path.join(ROOT, "mollify_fast"), dst,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_status.json"))
    if status is not None:
        (dst / "_build_status.json").write_text(json.dumps(status))
    script = tmp_path / "user_script.py"
    script.write_text(_MISSING)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOLLIFY_FAST_CPU_ISA")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S,
                       env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    return str(script), r.stdout.splitlines()


def test_missing_extension_warns_once_and_info_names_cause_and_fix(tmp_path):
    status = {"built": False, "reason": "the build failed: RuntimeError: no C++ compiler was found", "cuda": False}
    script, lines = _installed_copy(tmp_path, status)
    assert lines[0] == "torch"
    count, category, filename = lines[1].split()
    assert (count, category, filename) == ("1", "ExtensionMissingWarning", script)  # points at the user's call
    assert "no C++ compiler was found" in lines[2] and "--no-cache-dir --force-reinstall" in lines[2]
    info = "\n".join(lines[3:])
    assert "no C++ compiler was found" in info and "pip install --no-cache-dir --force-reinstall mollify_fast" in info
    assert "cache" in info and "pip install -e ." not in info
    assert issubclass(mf.ExtensionMissingWarning, UserWarning)


def test_missing_extension_without_status_points_a_checkout_at_pip_install_e(tmp_path):
    _, lines = _installed_copy(tmp_path, None)
    assert lines[0] == "torch" and lines[1].split()[:2] == ["1", "ExtensionMissingWarning"]
    assert "pip install -e ." in "\n".join(lines[3:])


# ---- 3. the CPU kernels' instruction sets -------------------------------------------------


def _cpu_calls():
    """Noise and blur + noise in every dtype, strided and per-sample, through the cpu backend."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 19, 37, generator=g)
    sig = torch.tensor([0.3, 0.9, 1.7])
    out = []
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        xd = x.to(dt)
        out.append(mf.mollify(xd, 0.7, alpha=0.8, generator=mf.Generator(11), backend="cpu"))
        out.append(mf.mollify(xd.transpose(-1, -2), sig, alpha=0.6, generator=mf.Generator(12, 5), backend="cpu"))
        out.append(mf.mollify(xd, 0.5, alpha=0.9, blur_sigma=1.3, generator=mf.Generator(13), backend="cpu"))
        out.append(mf.mollify(xd, sig, alpha=sig, blur_sigma=sig, blur_radius=4, generator=mf.Generator(14),
                              backend="cpu"))
    return out


def test_every_cpu_instruction_set_gives_the_same_bits():
    ext = _ext()
    isas = ext.cpu_isas()
    assert isas[0] in ("baseline", "native") and ext.cpu_isa() == isas[-1]  # the widest runs by default
    previous = ext.set_cpu_isa(isas[0])
    try:
        expected = _cpu_calls()
        for isa in isas[1:]:
            ext.set_cpu_isa(isa)
            assert ext.cpu_isa() == isa
            for a, b in zip(expected, _cpu_calls()):
                assert torch.equal(a, b), isa
    finally:
        ext.set_cpu_isa(previous)


def test_set_cpu_isa_refuses_unknown_names():
    ext = _ext()
    before = ext.cpu_isa()
    with pytest.raises(ValueError, match="unknown CPU instruction set 'sse9'; this build has: auto, (baseline|native)"):
        ext.set_cpu_isa("sse9")
    assert ext.cpu_isa() == before


def _run(code, **env_extra):
    env = {**os.environ, **env_extra}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT_S, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_environment_variable_forces_the_path_and_info_says_which(monkeypatch):
    from mollify_fast.__main__ import info

    ext = _ext()
    previous = ext.cpu_isa()
    try:
        for isa in ext.cpu_isas():
            monkeypatch.setenv("MOLLIFY_FAST_CPU_ISA", isa)
            _native.extension.cache_clear()
            assert f"cpu kernels  {isa} (" in info()
        monkeypatch.setenv("MOLLIFY_FAST_CPU_ISA", "sse9")
        _native.extension.cache_clear()
        ext_or_none, why = _native.extension()
        assert ext_or_none is None and "MOLLIFY_FAST_CPU_ISA='sse9' cannot be used: unknown" in why
    finally:
        monkeypatch.delenv("MOLLIFY_FAST_CPU_ISA")
        _native.extension.cache_clear()
        ext.set_cpu_isa(previous)
    # At process start, as a user sets it: the narrowest copy (the widest runs by default).
    narrowest = ext.cpu_isas()[0]
    out = _run("import mollify_fast as mf, torch; mf.mollify(torch.ones(8), 0.5, backend='cpu'); "
               "from mollify_fast.backends._native import extension; print(extension()[0].cpu_isa())",
               MOLLIFY_FAST_CPU_ISA=narrowest)
    assert out.split() == [narrowest]


def test_wide_registers_only_in_their_own_copies():
    """AVX (ymm) and AVX-512 (zmm) instructions occur only in the avx2 / avx512 copies of the CPU
    kernels, so a baseline CPU never reaches one (the module keeps its symbol table)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("needs objdump (binutils)")
    ext = _ext()
    if ext.cpu_isas_compiled() != ["baseline", "avx2", "avx512"]:
        pytest.skip(f"a single-copy build ({ext.cpu_isas_compiled()})")
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", ext.__file__], capture_output=True, text=True,
                         check=True, timeout=SUBPROCESS_LIMIT_S).stdout
    func, seen, outside = None, set(), {}
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            func = m.group(1)
        elif func and ("%zmm" in line or "%ymm" in line):
            wide = "zmm" if "%zmm" in line else "ymm"
            seen.add(wide)
            if not ("isa_avx512" in func or (wide == "ymm" and "isa_avx2" in func)):
                outside.setdefault(func, wide)
    assert seen == {"ymm", "zmm"} and outside == {}


# ---- 5. the cuda backend's GPU and driver check -------------------------------------------


@pytest.mark.parametrize("cc,driver,ok,why", [
    ((8, 0), (13, 0), True, "SASS for sm_80"),
    ((8, 6), (13, 0), True, "SASS for sm_80"),      # same major, newer minor
    ((8, 9), (13, 1), True, "SASS for sm_80"),
    ((9, 0), (13, 0), True, "SASS for sm_90"),
    ((10, 0), (13, 0), True, "PTX for sm_90"),      # JIT from PTX
    ((12, 0), (13, 2), True, "PTX for sm_90"),
    ((7, 5), (13, 0), False, "compute capability 7.5"),   # T4
    ((7, 0), (13, 0), False, "compute capability 7.0"),   # V100
    ((6, 1), (13, 0), False, "cannot run on this GPU"),
    ((8, 0), (12, 8), False, "driver supports CUDA 12.8 only"),
    ((9, 0), (12, 4), False, "driver supports CUDA 12.4 only"),
    ((8, 0), None, True, "SASS for sm_80"),         # libcuda version unknown: the capability decides
])
def test_cuda_code_runs_on(cc, driver, ok, why):
    got, reason = mollify_cuda.code_runs_on("80-real;90", "13.0.48", cc, driver)
    assert got == ok and why in reason
    if not ok:
        assert "MOLLIFY_FAST_CUDA_ARCHS" in reason or "driver" in reason


def test_cuda_arch_spellings():
    assert mollify_cuda.code_runs_on("75-real,80-real", "13.0", (7, 5), (13, 0))[0]
    assert not mollify_cuda.code_runs_on("90a-real", "13.0", (10, 0), (13, 0))[0]   # sm_90a: 9.0 only
    assert mollify_cuda.code_runs_on("90a-real", "13.0", (9, 0), (13, 0))[0]
    assert mollify_cuda.code_runs_on("80-virtual", "13.0", (8, 6), (13, 0))[1].startswith("PTX for sm_80")
    # PTX needs a driver at least as new as the toolkit; SASS only the same major version.
    assert not mollify_cuda.code_runs_on("90", "13.1", (10, 0), (13, 0))[0]
    assert mollify_cuda.code_runs_on("90", "13.1", (9, 0), (13, 0))[0]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA build of the extension and a visible GPU of a chosen capability: the availability
    check's inputs, faked (no GPU here); the check itself runs for real."""
    cap = {"value": (7, 5)}
    built = types.SimpleNamespace(with_cuda=True, cuda_archs="80-real,90", cuda_toolkit_version="13.0.48",
                                  cuda_runtime_info=lambda: "CUDA runtime 13.0")
    monkeypatch.setattr(mollify_cuda, "extension", lambda: (built, None))
    monkeypatch.setattr(mollify_cuda, "driver_version", lambda: (13, 0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: cap["value"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla T4")
    monkeypatch.delenv(mollify_cuda.EMULATE_ENV, raising=False)

    def clear():
        mollify_cuda._device_check.cache_clear()
        backends.availability.cache_clear()

    clear()
    yield cap
    clear()


def test_cuda_unavailable_on_a_gpu_it_was_not_built_for(fake_gpu):
    ok, why = mollify_cuda.availability()
    assert not ok and "Tesla T4" in why and "7.5" in why and "MOLLIFY_FAST_CUDA_ARCHS=\"75\"" in why
    x = torch.randn(2, 3)
    with pytest.raises(mf.BackendUnavailableError, match="Tesla T4.*MOLLIFY_FAST_CUDA_ARCHS"):
        backends.resolve("cuda", x, None)
    fake_gpu["value"] = (9, 0)
    mollify_cuda._device_check.cache_clear()
    backends.availability.cache_clear()
    ok, why = mollify_cuda.availability()
    assert ok and "SASS for sm_90" in why
