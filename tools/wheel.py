"""Build the release wheel, check it, install it where no Rust toolchain can be found, and run
the test suite against the installed package (the README's test command; ``.ci/run``).

    python tools/wheel.py build [--zig]     # target/wheels/ferrollm-*.whl, checked
    python tools/wheel.py install [--zig]   # build, then a fresh venv (target/wheel-venv) + wheel[test]
    python tools/wheel.py test [ARGS]       # python -m pytest ARGS in that venv, from the checkout

The wheel is one abi3 file for CPython >= 3.9: the release profile, no ``target-cpu=native``
(the kernels are chosen at run time), the embedded demo model inside. maturin builds it for
the ``MANYLINUX`` policy and refuses a library that needs newer glibc symbols or any shared
library outside the policy; the checks here then read the finished file: its tags, one
extension module, no bundled libraries, the demo model, the size.

The virtual environment is made and used with a whitelisted environment (as ``env -i``): a
``PATH`` without any directory holding ``cargo`` or ``rustc``, no ``CARGO_*``/``RUSTUP_*``,
``PYTHONPATH`` or ``VIRTUAL_ENV``. pip therefore cannot build anything that needs Rust, and the
tests import ferrollm from the venv's site-packages (the checkout's ``python/`` is never on the
path; ``FERROLLM_TEST_INSTALLED`` makes ``tests/conftest.py`` check it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "target" / "wheels"
VENV = ROOT / "target" / "wheel-venv"
# The build machine's glibc (Debian 12: 2.36) makes Rust's std use the pthread symbols of
# glibc 2.34, so 2.34 is the oldest policy a plain build meets (Ubuntu 22.04, Debian 12, RHEL 9
# and later). --zig links with zig against glibc 2.17 instead (manylinux2014: CentOS 7, Ubuntu
# 18.04, RHEL 8 and later); it needs the ziglang package (about 400 MB installed).
MANYLINUX = "manylinux_2_34"
ZIG_MANYLINUX = "manylinux2014"
ZIGLANG = "ziglang>=0.13,<0.18"  # 0.17 tested with maturin 1.16
MAX_BYTES = 25 * 2**20
MATURIN = "maturin>=1.5,<2"  # pyproject.toml's build-system
# Passed through to pip: its configuration, certificates and proxies; nothing about Rust.
KEEP_ENV = re.compile(r"HOME|LANG|LC_.*|TERM|TMPDIR|USER|PIP_.*|.*_CA_BUNDLE|SSL_CERT_.*|(?i:.*_proxy)")
WHEEL_NAME = re.compile(
    r"(?P<name>\w+)-(?P<version>[^-]+)-(?P<python>\w+)-(?P<abi>\w+)-(?P<platform>[\w.]+)\.whl"
)


def _run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def build(zig: bool = False) -> Path:
    flags = os.environ.get("RUSTFLAGS", "") + os.environ.get("CARGO_ENCODED_RUSTFLAGS", "")
    if "target-cpu=native" in flags:
        sys.exit("wheel: RUSTFLAGS has target-cpu=native: the wheel would crash on other CPUs; unset it")
    if shutil.which("maturin") is None:
        _run([sys.executable, "-m", "pip", "install", MATURIN])
    policy = ["--compatibility", MANYLINUX]
    env = dict(os.environ)
    if zig:
        if importlib.util.find_spec("ziglang") is None:
            _run([sys.executable, "-m", "pip", "install", ZIGLANG])
        policy = ["--zig", "--compatibility", ZIG_MANYLINUX]
        # maturin runs `python3 -m ziglang`: this interpreter's, which has it.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for old in WHEELS.glob("ferrollm-*.whl"):
        old.unlink()
    _run(
        ["maturin", "build", "--release", *policy, "-i", sys.executable, "-o", str(WHEELS)], cwd=ROOT, env=env
    )
    (wheel,) = WHEELS.glob("ferrollm-*.whl")
    check(wheel)
    return wheel


def check(wheel: Path) -> None:
    """The finished file, as pip will see it; raises SystemExit naming what is wrong."""
    problems = []
    m = WHEEL_NAME.fullmatch(wheel.name)
    if not m:
        sys.exit(f"wheel: {wheel.name} is not a wheel file name")
    tag = f"{m['python']}-{m['abi']}-{m['platform']}"
    platforms = m["platform"].split(".")  # a compressed set: manylinux2014_x86_64.manylinux_2_17_x86_64
    if (m["python"], m["abi"]) != ("cp39", "abi3"):
        problems.append(f"tag {tag}: not the abi3 wheel for CPython >= 3.9")
    for platform in platforms:
        if not re.fullmatch(r"manylinux_2_\d+_\w+|manylinux(1|2010|2014)_\w+", platform):
            problems.append(f"platform {platform} is not a manylinux tag")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        wheel_meta = z.read(f"ferrollm-{m['version']}.dist-info/WHEEL").decode()
    tags = [f"{m['python']}-{m['abi']}-{p}" for p in platforms]
    if any(f"Tag: {t}\n" not in wheel_meta for t in tags) or "Root-Is-Purelib: false" not in wheel_meta:
        problems.append(f"the WHEEL file does not say Tag: {', '.join(tags)} and Root-Is-Purelib: false")
    modules = [n for n in names if re.fullmatch(r"ferrollm/_core\..*(so|pyd)", n)]
    if len(modules) != 1:
        problems.append(f"extension modules {modules}: want exactly one ferrollm/_core.*.so")
    bundled = [n for n in names if ".libs/" in n]
    if bundled:
        problems.append(f"shared libraries bundled by the audit (the policy should need none): {bundled}")
    if "ferrollm/data/demo-moe-q8_0.gguf" not in names:
        problems.append("the embedded demo model ferrollm/data/demo-moe-q8_0.gguf is missing")
    junk = [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    if junk:
        problems.append(f"compiled bytecode in the wheel: {junk[:3]}")
    size = wheel.stat().st_size
    if size >= MAX_BYTES:
        problems.append(f"{size / 2**20:.1f} MiB is not under {MAX_BYTES / 2**20:.0f} MiB")
    print(
        f"wheel: {wheel.name}\n  tag  {tag}\n  size {size / 2**20:.2f} MiB ({size:,} bytes), {len(names)} files"
    )
    if problems:
        sys.exit("wheel: " + "; ".join(problems))


def clean_env() -> dict[str, str]:
    """The whitelisted environment: the venv first on PATH, then the system directories that
    hold no Rust toolchain."""
    system = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not _has_rust(d)]
    env = {k: v for k, v in os.environ.items() if KEEP_ENV.fullmatch(k)}
    env["PATH"] = os.pathsep.join([str(VENV / "bin"), *dict.fromkeys(system)])
    env["FERROLLM_TEST_INSTALLED"] = str(VENV)
    for tool in ("cargo", "rustc", "rustup"):
        found = shutil.which(tool, path=env["PATH"])
        if found:
            sys.exit(f"wheel: {tool} is still found at {found} in the clean environment")
    return env


def _has_rust(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, t)) for t in ("cargo", "rustc", "rustup"))


def install(zig: bool = False) -> None:
    wheel = build(zig)
    env = clean_env()
    shutil.rmtree(VENV, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(VENV)], env=env)
    python = str(VENV / "bin" / "python")
    probe = subprocess.run(
        ["sh", "-c", "command -v cargo rustc"], env=env, capture_output=True, text=True, check=False
    )
    if probe.returncode == 0 or probe.stdout:
        sys.exit(f"wheel: the clean environment still finds {probe.stdout.split()}")
    print(f"clean environment: cargo and rustc not found on PATH={env['PATH']}")
    # --only-binary: ferrollm from this wheel, never from source.
    _run([python, "-m", "pip", "install", "--only-binary", "ferrollm", f"{wheel}[test]"], env=env)
    where = subprocess.run([python, "-c", "import ferrollm._core, ferrollm; print(ferrollm.__file__)"], env=env,
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(VENV.resolve()):
        sys.exit(f"wheel: from the checkout, `import ferrollm` finds {where}, not the venv's copy")
    print(f"installed: ferrollm imports from {where}")


def test(pytest_args: list[str]) -> int:
    if not (VENV / "bin" / "python").exists():
        sys.exit(f"wheel: no venv at {VENV}: run `python tools/wheel.py install` first")
    cmd = [str(VENV / "bin" / "python"), "-m", "pytest", *pytest_args]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=clean_env(), cwd=ROOT, check=False).returncode


def main() -> int:
    if sys.argv[1:2] == ["test"]:  # everything after it is pytest's, options included
        return test(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = p.add_subparsers(dest="step", required=True)
    for name in ("build", "install"):
        steps.add_parser(name).add_argument(
            "--zig", action="store_true", help=f"link for {ZIG_MANYLINUX} with zig"
        )
    steps.add_parser("check").add_argument("wheel", nargs="?", help="default: the one in target/wheels")
    steps.add_parser("test", help="python -m pytest ARGS in the venv")
    a = p.parse_args()
    if a.step == "build":
        build(a.zig)
    elif a.step == "install":
        install(a.zig)
    elif a.step == "check":
        check(Path(a.wheel) if a.wheel else next(WHEELS.glob("ferrollm-*.whl")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
