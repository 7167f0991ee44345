"""``kapsule-policy-build APP.py OUT.wasm``: builds a Python Kapsule policy into a component.

Runs on the build machine (never inside the component). It is the one documented build command:
``componentize-py -w kapsule:policy/policy componentize APP -o OUT.wasm`` (componentize-py finds the
contract through this package's ``componentize-py.toml``), with two things added for authors:

- a syntax error is found in a second by the local Python and shown as ``file:line: message``,
  instead of after half a minute of componentize-py and its Rust backtrace;
- when componentize-py fails while running the policy module, the Python error is shown first,
  with the real file paths (componentize-py maps ``-p`` directories to ``/0``, ``/1``), and no Rust
  backtrace unless ``KAPSULE_BUILD_BACKTRACE=1``.

APP.py defines ``WitWorld = kapsule_policy.export(MyPolicy)``; its directory is on the module
path, so it may import sibling modules. That directory must not hold a virtualenv or a copy of
this SDK (componentize-py would find a second ``componentize-py.toml``): keep the policy's
sources in a directory of their own, as the ``kapsule policy new`` template does (``src/``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional

WORLD = "kapsule:policy/policy"


def _say(message: str) -> None:
    print(f"kapsule python build: {message}", file=sys.stderr)


def syntax_errors(app_dir: str) -> List[str]:
    """``file:line: SyntaxError: message`` (with the line and a caret) for each ``.py`` file of
    ``app_dir`` the local Python cannot compile."""
    found = []
    for name in sorted(os.listdir(app_dir)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(app_dir, name)
        with open(path, "rb") as f:
            source = f.read()
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as e:
            text = f"{path}:{e.lineno}: {type(e).__name__}: {e.msg}"
            if e.text:
                text += "\n    " + e.text.rstrip("\n")
                if e.offset:
                    text += "\n    " + " " * (e.offset - 1) + "^"
            found.append(text)
    return found


def stray_configs(app_dir: str) -> List[str]:
    """``componentize-py.toml`` files under ``app_dir``: componentize-py searches its whole module
    path for them, and one in a virtualenv or SDK copy there breaks the build obscurely."""
    found = []
    for root, dirs, files in os.walk(app_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "componentize-py.toml" in files:
            found.append(os.path.relpath(os.path.join(root, "componentize-py.toml"), app_dir))
    return sorted(found)


def python_cause(log: str, app_dir: str, sdk_root: str) -> str:
    """The Python error in componentize-py's output (it follows the launcher's own traceback),
    with ``/0/`` and ``/1/`` mapped back to the real directories."""
    marker = "AssertionError: "
    cause = log.split(marker, 1)[1] if marker in log else log
    for end in ("\n\nCaused by:", "\nStack backtrace:"):
        cause = cause.split(end, 1)[0]
    return cause.replace('"/0/', f'"{app_dir}/').replace('"/1/', f'"{sdk_root}/').strip("\n")


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        _say("usage: kapsule-policy-build APP.py OUT.wasm")
        return 2
    app, out = args
    if not os.path.isfile(app):
        _say(f"{app} not found")
        return 1
    if not app.endswith(".py"):
        _say(f"{app}: expected a .py file")
        return 1
    app_dir = os.path.dirname(os.path.abspath(app))
    module = os.path.basename(app)[: -len(".py")]
    stray = stray_configs(app_dir)
    if stray:
        _say(f"{app_dir} contains {', '.join(stray)}: componentize-py would read it as a second SDK "
             "(a virtualenv or a copy of the SDK in the policy's directory?). Keep the policy's "
             ".py files in a directory of their own, e.g. src/.")
        return 1
    errors = syntax_errors(app_dir)
    if errors:
        for e in errors:
            _say(e)
        return 1
    # The directory holding this package: componentize-py finds componentize-py.toml (and through
    # it wit/policy.wit) there, wherever pip installed it.
    sdk_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    command = [sys.executable, "-c", "import componentize_py, sys; sys.argv[0] = 'componentize-py';"
               " componentize_py.script()",
               "-w", WORLD, "componentize", "-p", app_dir, "-p", sdk_root, module, "-o", out]
    backtrace = os.environ.get("KAPSULE_BUILD_BACKTRACE") == "1"
    env = dict(os.environ, RUST_BACKTRACE="1" if backtrace else "0")
    try:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
    except OSError as e:
        _say(f"cannot run componentize-py: {e}")
        return 1
    if done.returncode != 0:
        if "No module named 'componentize_py'" in done.stdout:
            _say("componentize-py not found in this Python (pip install componentize-py==0.25.1)")
        elif backtrace:
            sys.stderr.write(done.stdout)
        else:
            _say(f"{app} failed:")
            print(python_cause(done.stdout, app_dir, sdk_root), file=sys.stderr)
            print("(set KAPSULE_BUILD_BACKTRACE=1 for componentize-py's full output)",
                  file=sys.stderr)
        return 1
    sys.stdout.write(done.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
