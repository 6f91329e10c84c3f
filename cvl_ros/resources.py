"""Where relative resource paths (models, databases, params files) are looked up.

One rule for the node, the offline runner and the tools: a path as given when it exists, else
relative to the package roots (the source checkout, the ament share folder, ``<prefix>/share/
cvl_ros``), so a shipped default such as ``models/cvlnet_demo`` resolves from any working
directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL_HINT = ("the demo model ships in models/cvlnet_demo/ (restore it with git, or train one "
              "with `cvl-train`); set checkpoint_path / --checkpoint")
BUILD_DB_HINT = ("build it with `make demo` (writes demo_out/db from the synthetic town) or "
                 "`cvl-build-db --checkpoint <ckpt> --tiles <KITTI-CVL root or mosaic.png> --out "
                 "<dir>` for your own tiles, then set database_path / --db")


def package_roots() -> list[Path]:
    """Folders a relative resource path is tried against, in order."""
    roots = [Path(__file__).resolve().parents[1]]  # source checkout (editable install)
    try:
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory("cvl_ros")))
    except Exception:  # not installed through ament (or ament_index absent)
        pass
    roots.append(Path(sys.prefix) / "share" / "cvl_ros")
    return roots


def resolve_path(p: str | os.PathLike | None) -> Path | None:
    """A path as given if it exists, else the first package root holding it; None if nowhere."""
    if p is None or str(p) == "":
        return None
    cand = Path(os.path.expanduser(str(p)))
    if cand.exists():
        return cand
    if cand.is_absolute():
        return None
    for root in package_roots():
        if (root / cand).exists():
            return root / cand
    return None
