"""Progress bar, per-run CSV files, learning-curve PNG and optional Weights & Biases, from one object.

Files written into the run directory:
  train.csv  step, seed, then one column per training metric (chunk means)
  eval.csv   step, seed, return_mean, return_std, score (normalized score offline, return online)
  curve.png  score against step, one line per seed
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def _truncate_csv(path: Path, max_step: int) -> None:
    """Drop rows logged after `max_step` (they belong to work that a resumed run will redo)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= max_step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


class RunLogger:
    """One call site per algorithm: `log_train`, `log_eval`, `advance`, `close`."""

    def __init__(
        self,
        run_dir: str | Path,
        name: str,
        num_seeds: int,
        seeds: list[int],
        total_steps: int,
        start_step: int = 0,
        score_name: str = "score",
        config: dict | None = None,
        use_wandb: bool = False,
        wandb_project: str = "rlzoo",
        wandb_mode: str = "auto",
        quiet: bool = False,
        group: str | None = None,
    ):
        """`group`: the W&B group of this run's seeds (one W&B run each, named <group>-seed<s>); default `name`."""
        self.run_dir = Path(run_dir)
        self.name, self.num_seeds, self.seeds = name, num_seeds, seeds
        self.group = group or name
        self.score_name = score_name
        self.train_csv, self.eval_csv = self.run_dir / "train.csv", self.run_dir / "eval.csv"
        for path in (self.train_csv, self.eval_csv):
            _truncate_csv(path, start_step)
        self.last_scores: np.ndarray | None = None
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=quiet, smoothing=0.1, desc=name)
        self._t0, self._step0, self._last_step = time.perf_counter(), start_step, start_step
        self.wandb_runs = []
        if use_wandb:
            self._init_wandb(config or {}, wandb_project, wandb_mode)

    def _init_wandb(self, config: dict, project: str, mode: str) -> None:
        import wandb

        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        os.environ.setdefault("WANDB_DIR", str(self.run_dir))
        for seed in self.seeds:
            self.wandb_runs.append(
                wandb.init(project=project, group=self.group, name=f"{self.group}-seed{seed}",
                           config={**config, "seed": seed}, mode=mode, dir=str(self.run_dir),
                           reinit="create_new")
            )

    def _append(self, path: Path, header: list[str], rows: list[list]) -> None:
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            writer.writerows(rows)

    def log_train(self, step: int, metrics: dict[str, np.ndarray]) -> None:
        """`metrics[name]` has shape [num_seeds] (already averaged over the chunk)."""
        names = sorted(metrics)
        rows = [[step, seed] + [float(metrics[k][i]) for k in names] for i, seed in enumerate(self.seeds)]
        self._append(self.train_csv, ["step", "seed"] + names, rows)
        for i, run in enumerate(self.wandb_runs):
            run.log({f"train/{k}": float(metrics[k][i]) for k in names}, step=step)

    def log_eval(self, step: int, returns: np.ndarray, scores: np.ndarray) -> None:
        """`returns` is [num_seeds, episodes]; `scores` is [num_seeds] (normalized or raw)."""
        self.last_scores = np.asarray(scores)
        rows = [
            [step, seed, float(returns[i].mean()), float(returns[i].std()), float(scores[i])]
            for i, seed in enumerate(self.seeds)
        ]
        self._append(self.eval_csv, ["step", "seed", "return_mean", "return_std", "score"], rows)
        for i, run in enumerate(self.wandb_runs):
            run.log({"eval/return": float(returns[i].mean()), f"eval/{self.score_name}": float(scores[i])},
                    step=step)
        self.bar.set_postfix_str(self._postfix(step))

    def _postfix(self, step: int) -> str:
        rate = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
        text = f"{rate:,.0f} steps/s"
        if self.last_scores is not None:
            s = self.last_scores
            text += f" | {self.score_name} {s.mean():.1f}" + (f" ± {s.std():.1f}" if len(s) > 1 else "")
        return text

    def advance(self, step: int) -> None:
        self.bar.update(step - self._last_step)
        self._last_step = step
        self.bar.set_postfix_str(self._postfix(step))

    def write(self, text: str) -> None:
        self.bar.write(text)

    def steps_per_second(self) -> float:
        return (self._last_step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)

    def plot(self) -> Path | None:
        """Learning curve of the eval score, one line per seed, as curve.png."""
        if not self.eval_csv.exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = np.genfromtxt(self.eval_csv, delimiter=",", names=True)
        data = np.atleast_1d(data)
        fig, ax = plt.subplots(figsize=(6, 4))
        for seed in self.seeds:
            sel = data["seed"] == seed
            ax.plot(data["step"][sel], data["score"][sel], label=f"seed {seed}")
        ax.set_xlabel("step")
        ax.set_ylabel(self.score_name)
        ax.set_title(self.name)
        ax.grid(alpha=0.3)
        if len(self.seeds) <= 10:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = self.run_dir / "curve.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def close(self) -> None:
        self.bar.close()
        self.plot()
        for run in self.wandb_runs:
            run.finish()
