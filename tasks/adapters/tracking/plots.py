"""Pictures users look at: PNGs for MLflow and Prefect artifacts."""
from __future__ import annotations

from pathlib import Path


def loss_curve(history: list[dict], out_path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (assistant tokens)")
    if evals:
        ax.scatter(*zip(*evals, strict=True), color="tab:red", label="eval loss", zorder=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def comparison_chart(challenger: dict[str, float], champion: dict[str, float] | None, metrics: dict[str, str],
                     out_path: Path, title: str, labels: tuple[str, str] = ("champion", "challenger")) -> Path:
    """One small panel per metric (their scales differ), champion and challenger side by side;
    each panel says which direction is better."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in metrics if math.isfinite(challenger.get(m, math.nan))]
    cols = min(4, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), dpi=90, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):  # the grid may have a spare cell
        old = (champion or {}).get(name, math.nan)
        values = [old if math.isfinite(old) else 0.0, challenger[name]]
        bars = ax.bar([0, 1], values, color=["tab:gray", "tab:blue"])
        if not math.isfinite(old):
            bars[0].set_alpha(0.15)
        ax.set_xticks([0, 1], labels, rotation=30, fontsize=7)
        ax.set_title(f"{name}\n({metrics[name]} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        for x, value in enumerate(values):
            # no champion yet (a first run): say so, rather than a 0 that reads as a measured one
            text = f"{value:.3g}" if x or math.isfinite(old) else "none"
            ax.annotate(text, (x, value), ha="center", va="bottom", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def grouped_bars(series: dict[str, dict[str, float]], out_path: Path, title: str, ylabel: str) -> Path:
    """One group of bars per category, one bar per series in it (e.g. base / SFT / SFT+DPO for each
    rejection kind), the value written above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(categories) + 2), 3.5), dpi=100)
    for i, (label, values) in enumerate(series.items()):
        xs = [c + i * width for c in range(len(categories))]
        heights = [values.get(c, 0.0) for c in categories]
        ax.bar(xs, heights, width, label=label)
        for x, value in zip(xs, heights, strict=True):
            ax.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=6)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))], categories, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
