"""Every experiment arm once, same budget (the paper's comparison table; issue 3's arm set).

python -m launch.sweep --sweep=configs/sweep_arms.py --workdir=runs/arms \
    --extra_args=--config.sft.init_checkpoint=<the shared warm-up checkpoint>
"""
ARMS = ("static", "dynamic_sampling", "env_augment", "random_seed", "no_retire", "static_pool", "rods", "offline",
        "rods_posterior")


def get_sweep() -> dict:
  """``config``: one run per arm file; ``grid``: no further variation."""
  return {"config": [f"configs/{arm}.py" for arm in ARMS], "grid": {}}
