"""The dataset factory: D4RL-style offline datasets built locally in the Minari format on Gymnasium v5 MuJoCo.

Run from the repository root: `python -m envs.build_dataset NAME ...` builds datasets,
`python -m envs.pick_policies --task T --run-dir D` picks a task's behaviour policies from a SAC run.
"""
