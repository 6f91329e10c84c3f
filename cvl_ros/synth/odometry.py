"""Simulated wheel/visual odometry: true relative motion with scale error, yaw drift and noise.

The odometry integrates the true per-step relative motion ``D_i = inv(T_{i-1}) T_i`` after
corrupting it the way a real odometry does:

- scale error: the translation of every step is multiplied by ``1 + drift_pct/100``, so the
  position error grows by ``drift_pct`` % of the travelled distance (straight driving);
- yaw drift: every step adds ``yaw_drift_deg_per_100m * step_length / 100`` degrees of heading
  (about the body z axis), so the heading error after ``d`` metres is ``drift * d / 100``;
- noise (optional, seeded): per-step zero-mean Gaussian translation noise with standard
  deviation ``noise_frac`` * step length (x, y, z independently) and yaw noise with standard
  deviation ``yaw_noise_deg_per_sqrt_m`` * sqrt(step length) degrees.

Signs are those of the parameters (negative ``drift_pct`` makes the odometry under-estimate).
"""

from __future__ import annotations

import math

import numpy as np


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def simulate_odometry(T_world_body, drift_pct: float = 1.5,
                      yaw_drift_deg_per_100m: float = 1.0, noise_frac: float = 0.0,
                      yaw_noise_deg_per_sqrt_m: float = 0.0, seed: int = 0,
                      origin: str = "first") -> np.ndarray:
    """Odometry poses ``T_odom_body`` (N,4,4) for true poses ``T_world_body`` (N,4,4).

    Args:
        T_world_body: true body poses (float64, rigid).
        drift_pct: translation scale error in percent of the distance travelled.
        yaw_drift_deg_per_100m: heading drift (deg per 100 m of travel; + = counter-clockwise).
        noise_frac: per-step translation noise std as a fraction of the step length.
        yaw_noise_deg_per_sqrt_m: per-step yaw noise std in deg per sqrt(metre).
        seed: seed of the noise (same seed, same output).
        origin: ``"first"``: the odometry frame is the first body pose (``T_odom_body[0] = I``,
            as a real odometry starts); ``"world"``: ``T_odom_body[0] = T_world_body[0]``.
    """
    T = np.asarray(T_world_body, dtype=np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f"T_world_body must be (N,4,4), got {T.shape}")
    if origin not in ("first", "world"):
        raise ValueError(f"origin must be 'first' or 'world', got {origin!r}")
    n = len(T)
    out = np.zeros_like(T)
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    cur = np.eye(4) if origin == "first" else T[0].copy()
    out[0] = cur
    scale = 1.0 + drift_pct / 100.0
    for i in range(1, n):
        D = np.linalg.solve(T[i - 1], T[i])
        step = float(np.linalg.norm(D[:3, 3]))
        t = D[:3, 3] * scale
        dyaw = math.radians(yaw_drift_deg_per_100m) * step / 100.0
        if noise_frac > 0.0:
            t = t + rng.normal(0.0, noise_frac * step, 3)
        if yaw_noise_deg_per_sqrt_m > 0.0:
            dyaw += math.radians(rng.normal(0.0, yaw_noise_deg_per_sqrt_m * math.sqrt(step)))
        Dn = np.eye(4)
        Dn[:3, :3] = _rz(dyaw) @ D[:3, :3]
        Dn[:3, 3] = t
        cur = cur @ Dn
        # re-orthonormalise now and then against round-off
        if i % 100 == 0:
            u, _, vt = np.linalg.svd(cur[:3, :3])
            cur[:3, :3] = u @ vt
        out[i] = cur
    return out
