"""Runs the stream-x authors' PyTorch code (github mohmdelsayed/streaming-drl) for benchmarks/stream.py, with
the reference's own Python (torch, gymnasium, minatar; no rlzoo, no jax):

    <ref python> benchmarks/stream_reference.py --reference-dir DIR --algo ac|q --env ENV --seed S \
        --total-steps N --out OUT.csv [--stop-after M]

Their scripts are copied to a temporary folder with the two small fixes Gymnasium 1.x needs (nothing else
changes): `info['episode']['r']` is a scalar there, not an array; and MinAtar's gym ids are registered first
(`minatar.gym.register_envs()`). Their `main()` runs with their command-line defaults, torch on one thread;
each episode line they print ("Episodic Return: R, Time Step t", R the raw env return) becomes a row
step,return,wall_s of OUT.csv, and OUT.json gets env steps, wall time and env steps/s. --stop-after stops at the
first episode end at or after that step (a speed measurement; the schedules still span --total-steps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

SCRIPTS = {"ac": "stream_ac_continuous.py", "q": "stream_q_minatar.py"}
FIXES = [("info['episode']['r'][0]", "float(info['episode']['r'])")]
REGISTER = "import minatar.gym\nminatar.gym.register_envs()\n"
EPISODE = re.compile(r"Episodic Return: ([^,]+), Time Step (\d+)")
# their argparse defaults, but for the env, seed and length
DEFAULTS = {
    "ac": dict(lr=1.0, gamma=0.99, lamda=0.8, entropy_coeff=0.01, kappa_policy=3.0, kappa_value=2.0),
    "q": dict(lr=1.0, gamma=0.99, lamda=0.8, epsilon_target=0.01, epsilon_start=1.0, exploration_fraction=0.2,
              kappa_value=2.0),
}


class Stop(Exception):
    pass


class Episodes:
    """stdout stand-in: passes their prints through and writes each episode line to the CSV."""

    def __init__(self, real, out, t0: float, stop_after: int):
        self.real, self.out, self.t0, self.stop_after = real, out, t0, stop_after
        self.buffer, self.last_step, self.count = "", 0, 0

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            match = EPISODE.search(line)
            if match:
                self.last_step, self.count = int(match.group(2)), self.count + 1
                self.out.write(f"{self.last_step},{float(match.group(1))},{time.time() - self.t0:.3f}\n")
                self.out.flush()
                if self.stop_after and self.last_step >= self.stop_after:
                    raise Stop
        return len(text)

    def flush(self) -> None:
        self.real.flush()


def patched_copy(reference_dir: str, algo: str) -> str:
    """Their repository's Python files in a temporary folder, the one script fixed for Gymnasium 1.x."""
    folder = tempfile.mkdtemp(prefix="streaming-drl-")
    for name in os.listdir(reference_dir):
        if name.endswith(".py"):
            shutil.copy(os.path.join(reference_dir, name), folder)
    path = os.path.join(folder, SCRIPTS[algo])
    text = open(path).read()
    for old, new in FIXES:
        text = text.replace(old, new)
    if algo == "q" and "register_envs" not in text:
        text = REGISTER + text
    open(path, "w").write(text)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", required=True)
    parser.add_argument("--algo", choices=sorted(SCRIPTS), required=True)
    parser.add_argument("--env", required=True, help="their env id: HalfCheetah-v5, MinAtar/Breakout-v1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--total-steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-after", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.reference_dir, SCRIPTS[args.algo])):
        sys.exit(f"--reference-dir {args.reference_dir} has no {SCRIPTS[args.algo]}: point it at a clone of "
                 "github.com/mohmdelsayed/streaming-drl")
    # this file's folder (benchmarks/, which has a minatar.py of its own) must not shadow their imports
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    import torch

    torch.set_num_threads(1)
    folder = patched_copy(args.reference_dir, args.algo)
    sys.path.insert(0, folder)
    module = __import__(SCRIPTS[args.algo][:-3])
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    os.chdir(folder)  # their main() writes a pickle into the working directory
    real, t0, stopped = sys.stdout, time.time(), False
    with open(out, "w") as f:
        f.write("step,return,wall_s\n")
        episodes = Episodes(real, f, t0, args.stop_after)
        sys.stdout = episodes
        try:
            module.main(env_name=args.env, seed=args.seed, total_steps=args.total_steps, debug=True,
                        overshooting_info=False, **DEFAULTS[args.algo])
        except Stop:
            stopped = True
        finally:
            sys.stdout = real
    wall = time.time() - t0
    steps = episodes.last_step if stopped else args.total_steps
    summary = dict(algo=args.algo, env=args.env, seed=args.seed, total_steps=args.total_steps, env_steps=steps,
                   episodes=episodes.count, wall_s=round(wall, 2), steps_per_s=round(steps / wall, 1),
                   complete=not stopped, torch=torch.__version__)
    open(out[:-4] + ".json", "w").write(json.dumps(summary) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
