"""Retrieval metrics for cross-view localisation (pure numpy functions).

The evaluation follows the paper: for each query the tiles are ranked by matching score; each
tile gives a predicted camera position = tile centre + estimated displacement. Recall@k at a
radius is the fraction of queries for which at least one of the top-k tiles' predicted positions
lies within that radius of the true position. The top-1 error is the distance between the best
tile's predicted position and the truth.

Every function here is small and vectorised; ``test/test_metrics.py`` checks each against a slow,
obvious Python loop.
"""

from __future__ import annotations

import numpy as np


def rank_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first.

    Ties are broken by the lower tile index (a stable, deterministic order).

    Args:
        scores: (Q, T) matching scores, higher is better.
        k: how many to keep (clipped to T).

    Returns:
        (Q, min(k, T)) int64 indices into the tile axis.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, T), got shape {scores.shape}")
    num_tiles = scores.shape[1]
    k = int(min(k, num_tiles))
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    # A stable argsort on -scores keeps the lower index first among equal scores.
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k].astype(np.int64)


def gather_predictions(
    topk: np.ndarray, tile_centers: np.ndarray, displacement_m: np.ndarray | None
) -> np.ndarray:
    """Predicted positions (east, north) of the ranked tiles.

    Args:
        topk: (Q, K) tile indices (from :func:`rank_topk`).
        tile_centers: (T, 2) tile centres, metres east/north.
        displacement_m: (Q, T, 2) estimated camera displacement from each tile centre, or
            ``None`` to predict the tile centre itself.

    Returns:
        (Q, K, 2) predicted positions.
    """
    topk = np.asarray(topk, dtype=np.int64)
    centers = np.asarray(tile_centers, dtype=np.float64)[topk]
    if displacement_m is None:
        return centers
    disp = np.asarray(displacement_m, dtype=np.float64)
    rows = np.arange(topk.shape[0])[:, None]
    return centers + disp[rows, topk]


def hits_within(pred_topk_xy: np.ndarray, true_xy: np.ndarray, radius_m: float) -> np.ndarray:
    """Boolean (Q, K): is the i-th ranked prediction within ``radius_m`` of the truth."""
    pred = np.asarray(pred_topk_xy, dtype=np.float64)
    true = np.asarray(true_xy, dtype=np.float64)
    dist = np.linalg.norm(pred - true[:, None, :], axis=-1)
    return dist <= radius_m


def recall_at_k(
    pred_topk_xy: np.ndarray, true_xy: np.ndarray, ks, radius_m: float = 10.0
) -> dict[int, float]:
    """Recall@k in percent for each k in ``ks``.

    Args:
        pred_topk_xy: (Q, K, 2) predicted positions of the ranked tiles, best first.
        true_xy: (Q, 2) true positions.
        ks: iterable of k values; k larger than K uses all K.
        radius_m: success radius in metres (10 m in the paper; 25 m also reported).

    Returns:
        ``{k: recall_percent}``; 0.0 for every k when there are no queries.
    """
    hits = hits_within(pred_topk_xy, true_xy, radius_m)
    if hits.shape[0] == 0:
        return {int(k): 0.0 for k in ks}
    # First successful rank per query (K when none).
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), hits.shape[1])
    return {int(k): float(100.0 * np.mean(first < k)) for k in ks}


def top1_errors(pred_topk_xy: np.ndarray, true_xy: np.ndarray) -> np.ndarray:
    """Distance in metres between the top-1 predicted position and the truth, per query."""
    pred = np.asarray(pred_topk_xy, dtype=np.float64)
    true = np.asarray(true_xy, dtype=np.float64)
    if pred.shape[0] == 0:
        return np.zeros(0)
    return np.linalg.norm(pred[:, 0, :] - true, axis=-1)


def summarize(
    scores: np.ndarray,
    tile_centers: np.ndarray,
    displacement_m: np.ndarray | None,
    true_xy: np.ndarray,
    ks=(1, 5, 10, 100),
    radius_m: float = 10.0,
    radius2_m: float = 25.0,
) -> dict:
    """The evaluation record of one protocol and sequence length.

    Returns a dict with keys ``r@1``, ``r@5``, ``r@10``, ``r@100`` (percent, at ``radius_m``),
    ``r@1_25m`` (percent at ``radius2_m``), ``median_error_m``, ``mean_error_m``, ``queries``,
    ``tiles``.
    """
    scores = np.asarray(scores)
    topk = rank_topk(scores, max(ks))
    pred = gather_predictions(topk, tile_centers, displacement_m)
    return summarize_ranked(pred, true_xy, scores.shape[1], ks, radius_m, radius2_m)


def summarize_ranked(
    pred_topk_xy: np.ndarray,
    true_xy: np.ndarray,
    num_tiles: int,
    ks=(1, 5, 10, 100),
    radius_m: float = 10.0,
    radius2_m: float = 25.0,
) -> dict:
    """Like :func:`summarize` but from already ranked predictions (Q, K, 2)."""
    rec = recall_at_k(pred_topk_xy, true_xy, ks, radius_m)
    rec2 = recall_at_k(pred_topk_xy, true_xy, (1,), radius2_m)
    err = top1_errors(pred_topk_xy, true_xy)
    out = {f"r@{k}": rec[k] for k in ks}
    out["r@1_25m"] = rec2[1]
    out["median_error_m"] = float(np.median(err)) if err.size else float("nan")
    out["mean_error_m"] = float(np.mean(err)) if err.size else float("nan")
    out["queries"] = int(np.asarray(true_xy).shape[0])
    out["tiles"] = int(num_tiles)
    return out
