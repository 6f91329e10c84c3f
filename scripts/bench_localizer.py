"""Latency of ``Localizer.add_frame`` with the default CVLNet size (random weights) on this CPU.

    PYTHONPATH=. .venv/bin/python scripts/bench_localizer.py --threads 1

Builds the default model (MobileNetV2, 128x512 ground input, 32x32 descriptors), a tile database
of random descriptors on a 10 m grid (``TileDatabase.from_arrays``, 231 tiles over 200 x 100 m),
feeds ``--frames`` KITTI-size frames 1.5 m apart (window 4) and prints the median latency of
global-search updates and of tracking updates (tiles within 40 m).
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from cvl_ros.camera import PinholeCamera, invert_pose, make_body_from_camera, pose_enu
from cvl_ros.database import TileDatabase
from cvl_ros.geo import GeoDatum
from cvl_ros.localizer import Frame, Localizer, LocalizerConfig
from cvl_ros.model.cvlnet import CVLNet, CVLNetConfig


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CVLNet(CVLNetConfig(pretrained=False), load_pretrained=False).eval()
    datum = GeoDatum(49.015, 8.43, 110.0)
    E, N = np.meshgrid(np.arange(-100, 101, 10.0), np.arange(-50, 51, 10.0))
    lat, lon, _ = datum.to_geodetic(E.ravel(), N.ravel(), 0.0)
    n_tiles = E.size
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        db = TileDatabase.from_arrays(
            f"{tmp}/db", model.model_hash(),
            rng.standard_normal((n_tiles, 4, 32, 32)).astype(np.float32),
            np.ones((n_tiles, 1, 32, 32), np.float32), np.stack([lat, lon], 1), datum)
        cam = PinholeCamera(721.5, 721.5, 609.6, 172.9, 1242, 375)
        T_body_cam = make_body_from_camera(1.0, 0.0, 1.6)
        loc = Localizer(model, db, LocalizerConfig())
        img = rng.integers(0, 255, (375, 1242, 3), dtype=np.uint8)
        lat_s = {True: [], False: []}
        for i in range(args.frames):
            T = pose_enu(1.5 * i, 0.0, 0.0, 0.0)
            t = time.perf_counter()
            est = loc.add_frame(Frame(i * 100_000_000, img, cam, invert_pose(pose_enu(0, 0, 0, 0))
                                      @ T, 0.0, T_body_cam))
            lat_s[est.global_search].append(time.perf_counter() - t)
            if i == 0:
                loc.set_initial_pose(1.5, 0.0, 0.0, 5.0)  # tracking from the next frame on
        for glob, v in lat_s.items():
            if v:
                what = f"global search over {n_tiles} tiles" if glob else "tracking (40 m radius)"
                med = np.median(v[1:] if len(v) > 1 else v) * 1e3
                print(f"threads={args.threads} {what}: {len(v)} updates, median {med:.1f} ms")


if __name__ == "__main__":
    main()
