"""Test-1 / Test-2 evaluation behind ``cvl-eval`` (and the validation step of ``cvl-train``).

For a protocol (``test1``: the queries' own tiles; ``test2``: every tile of the test drives,
distractors included) and each sequence length N:

1. every tile of the protocol's tile table is encoded once by the satellite branch;
2. every query is loaded once with the longest sequence; frame k of a sequence of length N is
   frame k of the longest one (t, t-stride, ...), so shorter sequences are prefixes and each
   distinct frame goes through the backbone once (per-frame features are cached by frame);
3. for each N, the first N frames are projected and fused into the query descriptor, matched
   against all tiles (full SSM shift search, exact, no shortlist), and the top 100 tiles are
   kept with their estimated displacements;
4. :func:`cvl_ros.metrics.summarize_ranked` gives recall@1/5/10/100 at 10 m, r@1 at 25 m and the
   median/mean top-1 error, where a tile's prediction is its centre + estimated displacement.

``chance_recall`` gives the expected recall of a random ranking (predictions at tile centres),
reported next to the results so that "above chance" is measurable.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from cvl_ros import metrics

LOG = logging.getLogger("cvl_ros.evaluation")
KS = (1, 5, 10, 100)
PROTOCOLS = ("test1", "test2")


def chance_recall(tile_centers: np.ndarray, true_xy: np.ndarray, k: int,
                  radius_m: float = 10.0) -> float:
    """Expected recall@k (percent) of a uniformly random tile ranking predicting tile centres."""
    tc = np.asarray(tile_centers, dtype=np.float64)
    tr = np.asarray(true_xy, dtype=np.float64)
    if len(tr) == 0 or len(tc) == 0:
        return 0.0
    t = len(tc)
    k = min(k, t)
    vals = []
    for q in tr:
        m = int(np.sum(np.hypot(tc[:, 0] - q[0], tc[:, 1] - q[1]) <= radius_m))
        miss = 1.0
        for i in range(k):
            miss *= max(t - m - i, 0) / (t - i)
        vals.append(1.0 - miss)
    return float(100.0 * np.mean(vals))


def _subsample(n: int, max_queries: int | None) -> np.ndarray:
    if not max_queries or n <= int(max_queries):
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(max_queries)).round().astype(np.int64))


@torch.no_grad()
def encode_tiles(model, ds, batch_size: int = 32, progress: bool = False):
    """(tile ids, (T,2) ENU centres, SatelliteDescriptor) of a dataset's tile table."""
    from cvl_ros.model.matching import SatelliteDescriptor

    table = ds.tile_table()
    dev = model.device
    feats, uncs, buf = [], [], []
    it = table
    if progress:
        from tqdm import tqdm

        it = tqdm(table, desc=f"tiles {ds.split}", unit="tile", leave=False)

    def flush():
        x = torch.from_numpy(np.stack(buf)).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
        sd = model.encode_satellite(x)
        feats.append(sd.features.cpu())
        uncs.append(sd.uncertainty.cpu())
        buf.clear()

    for r in it:
        buf.append(ds.load_sat(r.path, r.lat))
        if len(buf) >= batch_size:
            flush()
    if buf:
        flush()
    centers = np.array([[r.east, r.north] for r in table], dtype=np.float64).reshape(-1, 2)
    sat = SatelliteDescriptor(torch.cat(feats), torch.cat(uncs))
    return [r.tile_id for r in table], centers, sat


@torch.no_grad()
def evaluate_protocol(model, root, protocol: str, seq_lens, max_queries: int | None = None,
                      frame_stride: int = 3, batch_size: int = 8, progress: bool = True,
                      topk: int = 100, return_details: bool = False,
                      query_cache: dict | None = None):
    """Evaluate one protocol; returns ``{"seq<N>": summary}`` (and details if asked).

    ``query_cache`` (a dict shared between protocols) reuses the fused ground descriptors of
    queries already evaluated by another protocol of the same data.
    """
    from cvl_ros.datasets import KittiCVL
    from cvl_ros.model.matching import GroundDescriptor

    cfg = model.config
    seq_lens = sorted({int(n) for n in seq_lens})
    nmax = max(seq_lens)
    ds = KittiCVL(root, split=protocol, seq_len=nmax, frame_stride=frame_stride,
                  ground_hw=tuple(cfg.ground_hw), sat_px=int(cfg.sat_px),
                  coverage_m=float(cfg.coverage_m))
    dev = model.device
    tile_ids, centers, sat = encode_tiles(model, ds, progress=progress)
    sat_dev = type(sat)(sat.features.to(dev), sat.uncertainty.to(dev))
    qidx = _subsample(len(ds), max_queries)
    feat_cache: dict = {}
    truth = np.zeros((len(qidx), 2))
    per_q: list = [None] * len(qidx)
    pending = []
    it = qidx
    if progress:
        from tqdm import tqdm

        it = tqdm(qidx, desc=f"queries {protocol}", unit="query", leave=False)

    def flush():
        for n in seq_lens:
            f = torch.stack([p["feats"][:n] for p in pending]).to(dev)
            K = torch.stack([p["K"][:n] for p in pending]).to(dev)
            T = torch.stack([p["T"][:n] for p in pending]).to(dev)
            h = torch.stack([p["h"] for p in pending]).to(dev)
            g = model.project_and_fuse(f, K, T, h)
            for r, p in enumerate(pending):
                per_q[p["j"]][n] = (g.features[r].cpu(), g.mask[r].cpu())
        pending.clear()

    for j, i in enumerate(it):
        qid = ds.entries[int(i)].query_id
        key = (qid, nmax, frame_stride)
        if query_cache is not None and key in query_cache:
            truth[j], per_q[j] = query_cache[key]
            continue
        item = ds[int(i)]
        drive = item["query_id"].rsplit("/", 1)[0]
        frames = [int(f) for f in item["frames"]]
        todo = [k for k, f in enumerate(frames) if (drive, f) not in feat_cache]
        if todo:
            x = item["images"][todo].to(dev)
            fx = model.encode_ground(x).cpu()
            for k, fk in zip(todo, fx):
                feat_cache[(drive, frames[k])] = fk
        feats = torch.stack([feat_cache[(drive, f)] for f in frames])
        truth[j] = item["position_enu"].double().numpy()
        per_q[j] = {}
        if query_cache is not None:
            query_cache[key] = (truth[j].copy(), per_q[j])
        pending.append({"j": j, "feats": feats, "K": item["K"].float(),
                        "T": item["T_grid_cams"].float(), "h": item["camera_height_m"].float()})
        if len(pending) >= batch_size:
            flush()
        # keep the cache bounded to the current drive's recent frames
        if len(feat_cache) > 4 * nmax * frame_stride + 64:
            for old in list(feat_cache)[: len(feat_cache) // 2]:
                del feat_cache[old]
    if pending:
        flush()
    ground = {n: [GroundDescriptor(torch.stack([q[n][0] for q in per_q]),
                                   torch.stack([q[n][1] for q in per_q]))] for n in seq_lens}

    out, details = {}, {}
    for n in seq_lens:
        g_all = GroundDescriptor(torch.cat([g.features for g in ground[n]]),
                                 torch.cat([g.mask for g in ground[n]]))
        k = min(topk, len(tile_ids))
        pred = np.zeros((len(qidx), k, 2))
        top = np.zeros((len(qidx), k), dtype=np.int64)
        for s in range(0, len(qidx), 16):
            gb = GroundDescriptor(g_all.features[s:s + 16].to(dev), g_all.mask[s:s + 16].to(dev))
            m = model.match(gb, sat_dev, pairwise=True)
            scores = m.score.float().cpu().numpy()
            disp = m.displacement_m.float().cpu().numpy()
            t = metrics.rank_topk(scores, k)
            top[s:s + 16] = t
            pred[s:s + 16] = metrics.gather_predictions(t, centers, disp)
        out[f"seq{n}"] = metrics.summarize_ranked(pred, truth, len(tile_ids), KS)
        details[f"seq{n}"] = {"top1_error_m": np.linalg.norm(pred[:, 0] - truth, axis=1),
                              "topk": top}
    details["chance_r@1"] = chance_recall(centers, truth, 1)
    details["chance_r@5"] = chance_recall(centers, truth, 5)
    if return_details:
        return out, details
    return out


def evaluate(model, root, protocols, seq_lens, max_queries: int | None = None,
             frame_stride: int = 3, progress: bool = True, return_details: bool = False):
    """``{"test2": {"seq4": {...}, ...}, ...}`` for the given protocols (str or list)."""
    if isinstance(protocols, str):
        protocols = [p.strip() for p in protocols.split(",") if p.strip()]
    was_training = model.training
    model.eval()
    res, det = {}, {}
    cache: dict = {}
    try:
        for p in protocols:
            if p not in PROTOCOLS:
                raise ValueError(f"protocol must be one of {PROTOCOLS}, got {p!r}")
            r = evaluate_protocol(model, root, p, seq_lens, max_queries, frame_stride,
                                  progress=progress, return_details=True, query_cache=cache)
            res[p], det[p] = r
    finally:
        model.train(was_training)
    if return_details:
        return res, det
    return res


# ---------------------------------------------------------------------- reports
def markdown_table(results: dict, details: dict | None = None, title: str | None = None) -> str:
    """Markdown table of an evaluation result (one row per protocol and sequence length)."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    head = ["protocol", "seq", "r@1", "r@5", "r@10", "r@100", "r@1 (25 m)", "median err (m)",
            "mean err (m)", "queries", "tiles"]
    if details:
        head.append("chance r@1")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for proto, per in results.items():
        for key in sorted(per, key=lambda s: int(s[3:])):
            r = per[key]
            row = [proto, key[3:], f"{r['r@1']:.2f}", f"{r['r@5']:.2f}", f"{r['r@10']:.2f}",
                   f"{r['r@100']:.2f}", f"{r['r@1_25m']:.2f}", f"{r['median_error_m']:.1f}",
                   f"{r['mean_error_m']:.1f}", str(r["queries"]), str(r["tiles"])]
            if details:
                row.append(f"{details.get(proto, {}).get('chance_r@1', float('nan')):.2f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_plots(results: dict, details: dict, out_prefix) -> list:
    """PNG plots: recall vs sequence length, and the top-1 error CDF per sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_prefix = Path(out_prefix)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for proto, per in results.items():
        ns = sorted(int(k[3:]) for k in per)
        for key, style in (("r@1", "-o"), ("r@5", "--s"), ("r@10", ":^")):
            ax.plot(ns, [per[f"seq{n}"][key] for n in ns], style, label=f"{proto} {key}")
    ax.set_xlabel("sequence length (frames)")
    ax.set_ylabel("recall (%) at 10 m")
    ax.set_xscale("log", base=2)
    all_ns = sorted({int(k[3:]) for per in results.values() for k in per})
    ax.set_xticks(all_ns)
    ax.set_xticklabels([str(n) for n in all_ns])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_prefix.with_name(out_prefix.name + "_recall_vs_seq.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    fig, ax = plt.subplots(figsize=(6, 4))
    for proto, per in details.items():
        for key in sorted((k for k in per if k.startswith("seq")), key=lambda s: int(s[3:])):
            err = np.sort(per[key]["top1_error_m"])
            if err.size:
                ax.plot(err, np.arange(1, err.size + 1) / err.size, label=f"{proto} {key}")
    ax.set_xlabel("top-1 position error (m)")
    ax.set_ylabel("fraction of queries")
    ax.set_xscale("symlog", linthresh=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_prefix.with_name(out_prefix.name + "_error_cdf.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def write_reports(results: dict, details: dict, json_path, plots: bool = True,
                  title: str | None = None) -> dict:
    """Write ``json_path`` (exact schema), ``<stem>.md`` and PNG plots beside it."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_clean(results), indent=2))
    md = json_path.with_suffix(".md")
    md.write_text(markdown_table(results, details, title))
    out = {"json": str(json_path), "markdown": str(md)}
    if plots:
        out["plots"] = [str(p) for p in write_plots(results, details,
                                                    json_path.with_suffix(""))]
    return out


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
