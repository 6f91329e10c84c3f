"""Point the CMake exports of the ROS 2 wheels at this environment's Python and numpy headers.

The ``ros-*`` wheels are built in a manylinux container; their exported CMake targets name the
include folders of the Python they were built with (``/opt/python/cp311-cp311/...``). Configuring
an interface package against them then fails with ``Imported target ... includes non-existent
path``. This rewrites those paths in ``<prefix>/share/**/*.cmake`` to the include folders of the
interpreter running this script. Idempotent: files without such paths are left untouched.

Usage: ``<venv>/bin/python scripts/patch_cmake_paths.py <venv prefix>``
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/[\w/]*include"
)
_PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")


def patch_text(text: str, python_include: str, numpy_include: str) -> str:
    """Return ``text`` with the build container's include paths replaced by the given ones."""
    text = _NUMPY_INCLUDE.sub(numpy_include, text)
    return _PYTHON_INCLUDE.sub(python_include, text)


def patch_prefix(prefix: Path) -> int:
    """Patch every ``*.cmake`` file under ``prefix/share``; return how many files changed."""
    import numpy

    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for path in sorted((prefix / "share").rglob("*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if "/opt/python/" not in text:
            continue
        new = patch_text(text, python_include, numpy_include)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    prefix = Path(args[0] if args else sys.prefix)
    changed = patch_prefix(prefix)
    print(f"[setup] cmake include paths: patched {changed} file(s) under {prefix / 'share'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
