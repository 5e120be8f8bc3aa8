"""The house checks itself: format, lint, the extension's stub and the package's shape, each a
command that must pass (the README's test command and ``.ci/run`` run this after installing).

    python tools/check.py          # all checks; exits 1 if any failed, naming them
    python tools/check.py --fix    # let cargo fmt and ruff rewrite what they can, then check

ruff and mypy's stubtest come from the test extras in ``target/wheel-venv`` (``tools/wheel.py
install``), pinned there, so every machine lints with the same rules; the stub is checked
against the module that venv installed, i.e. against the wheel users get.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / "target" / "wheel-venv" / "bin"
PY_DIRS = ["python", "tests", "benches", "tools", "fuzz"]


def checks(fix: bool) -> list[tuple[str, list[str], dict]]:
    ruff = str(VENV_BIN / "ruff")
    venv_py = str(VENV_BIN / "python")
    # stubtest imports ferrollm._core: from the venv's site-packages, not from the checkout.
    clean = {"cwd": tempfile.gettempdir(), "env": {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}}
    out = []
    if fix:
        out += [("cargo fmt", ["cargo", "fmt"], {}), ("ruff fix", [ruff, "check", "--fix", *PY_DIRS], {}),
                ("ruff format", [ruff, "format", *PY_DIRS], {})]  # fmt: skip
    out += [
        ("cargo fmt --check", ["cargo", "fmt", "--check"], {}),
        ("cargo clippy", ["cargo", "clippy", "--all-targets", "--", "-D", "warnings"], {}),
        ("ruff check", [ruff, "check", *PY_DIRS], {}),
        ("ruff format --check", [ruff, "format", "--check", *PY_DIRS], {}),
        ("stubtest ferrollm._core", [venv_py, "-m", "mypy.stubtest", "ferrollm._core"], clean),
        ("package layout", [sys.executable, str(ROOT / "tools" / "layout.py"), "--check"], {}),
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fix", action="store_true")
    args = ap.parse_args()
    if not (VENV_BIN / "ruff").exists():
        sys.exit("check: target/wheel-venv has no ruff: run `python tools/wheel.py install` first")
    failed = []
    for name, cmd, kw in checks(args.fix):
        print(f"+ {name}", flush=True)
        kw = {"cwd": ROOT, **kw}
        if subprocess.run(cmd, check=False, **kw).returncode != 0:
            failed.append(name)
    if failed:
        print(f"check: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
