"""The interpretability view: fused representations against image and text embeddings, in 2-D.

All points (reference image embeddings, modification-text embeddings, fused features,
generated target embeddings and the true targets) are L2-normalised vectors of the
same joint space; one PCA fitted on all of them projects them to the plane, so their
relative positions are comparable. Thin grey lines join each query's fused feature to
its target. Written as a PNG (matplotlib, Agg backend, no display needed).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

#: draw order and colours of the groups
STYLE = {"image": ("tab:blue", "o"), "text": ("tab:orange", "s"), "fused": ("tab:green", "^"),
         "generated": ("tab:red", "x"), "target": ("tab:purple", "+")}


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> ((N, 2) coordinates on the two main axes, (2,) explained variance ratios)."""
    x = x.double()
    centred = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    ratio = var[:2] / var.sum().clamp_min(1e-12)
    return (centred @ vh[:2].T).float(), ratio.float()


def plot_embeddings(path: str | os.PathLike[str], groups: Mapping[str, torch.Tensor], title: str = "",
                    links: tuple[str, str] | None = ("fused", "target")) -> Path:
    """Scatter ``groups`` (name -> (N_g, D)) after one joint PCA; write ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in groups if len(groups[n])]
    if not names:
        raise ValueError("plot_embeddings: nothing to plot")
    feats = [F.normalize(groups[n].float(), dim=-1) for n in names]
    xy, ratio = pca_2d(torch.cat(feats))
    parts = dict(zip(names, xy.split([len(f) for f in feats])))
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    if links and all(k in parts for k in links) and len(parts[links[0]]) == len(parts[links[1]]):
        a, b = parts[links[0]], parts[links[1]]
        for p, q in zip(a.tolist(), b.tolist()):
            ax.plot([p[0], q[0]], [p[1], q[1]], color="0.8", linewidth=0.5, zorder=0)
    for n in names:
        colour, marker = STYLE.get(n, ("0.3", "."))
        ax.scatter(parts[n][:, 0], parts[n][:, 1], s=14, c=colour, marker=marker, label=f"{n} ({len(parts[n])})",
                   alpha=0.75, linewidths=1)
    ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * float(ratio[1]):.1f}%)" if len(ratio) > 1 else "PC2")
    ax.set_title(title or "joint space, PCA")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


__all__ = ["STYLE", "pca_2d", "plot_embeddings"]
