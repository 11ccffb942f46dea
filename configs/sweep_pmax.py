"""P_max sweep of the RODS arm: how large may the generated part of the pool grow? (paper: 400; 0 = seeds only).

python -m launch.sweep --sweep=configs/sweep_pmax.py --workdir=runs/sweep_pmax               # one run after another
python -m launch.sweep --sweep=configs/sweep_pmax.py --workdir=gs://bucket/sweep --print_only  # launch commands
"""


def get_sweep() -> dict:
  """``config``: the config file every run starts from; ``grid``: dotted field -> values (runs = the product)."""
  return {
      "config": "configs/rods.py",
      "grid": {"rods.p_max": [0, 50, 200, 400]},
  }
