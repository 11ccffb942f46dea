"""Beyond the paper: RODS with the noise-aware boundary detector, a Beta posterior per task across steps.

Zones by the posterior mean, seed priority E[4p(1-p)], burn-in and retirement by posterior probability
(config.rods.posterior_*; rods_jax/rods/posterior_table.py). Everything else is the rods arm.

python -m launch.train --config=configs/rods_posterior.py --workdir=runs/rods_posterior        # CPU lab
python -m launch.train --config=configs/rods_posterior.py:paper --workdir=...         # paper scale (configs/scales.py)
"""
import ml_collections

from configs import arms, base, scales


def get_config(scale: str = "lab") -> ml_collections.ConfigDict:
  config = scales.apply_scale(base.get_config(), scale)
  return arms.apply_arm(config, "rods_posterior")
