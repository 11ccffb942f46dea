"""What each experiment arm *is*, as the config fields that define it.

``configs/<arm>.py`` applies these on top of ``base``; ``rods_jax.config_validation.validate`` checks that a config
named ``arm=X`` still has X's defining values (e.g. ``--config.rods.synthesis=True`` on the static arm is an error).
Fields not listed are free (thresholds, sizes, the P_max sweep, ...). docs/METHOD.md §9 describes the arms.
"""
import types

import ml_collections

# Arm -> {dotted field: required value}. A MappingProxy so nothing can change an arm's meaning at run time.
ARMS = types.MappingProxyType({
    # The method: boundary seeds -> skill-aligned synthesis -> dynamic buffer with burn-in and retirement.
    "rods": {"rods.synthesis": True, "rods.seed_selection": "boundary", "rods.retirement": True,
             "rods.dynamic": True, "rods.dynamic_sampling": False, "env.error_hints": False, "rods.detector": "step"},
    # Beyond the paper: RODS whose zones, seed priority, burn-in and retirement read a per-task Beta posterior
    # across steps (noise-aware) instead of one step's r̄ (rods_jax/rods/posterior_table.py).
    "rods_posterior": {"rods.synthesis": True, "rods.seed_selection": "boundary", "rods.retirement": True,
                       "rods.dynamic": True, "rods.dynamic_sampling": False, "env.error_hints": False,
                       "rods.detector": "posterior"},
    # Static-data GRPO on the fixed seeds (the paper's "GRPO" row).
    "static": {"rods.synthesis": False, "rods.dynamic_sampling": False, "env.error_hints": False},
    # EnvTuning-style: uniform, structure-preserving perturbation of random seeds + actionable tool-error hints.
    # The loop sends "perturb" requests (rods_jax.rods.queues) for this arm instead of skill-aligned synthesis.
    "env_augment": {"rods.synthesis": True, "rods.seed_selection": "uniform", "env.error_hints": True,
                    "rods.dynamic_sampling": False},
    # Ablation: skill-aligned synthesis from uniformly chosen seeds instead of boundary seeds.
    "random_seed": {"rods.synthesis": True, "rods.seed_selection": "uniform", "rods.retirement": True,
                    "rods.dynamic": True, "rods.dynamic_sampling": False, "env.error_hints": False},
    # Ablation: generated tasks are never retired (mastered / unsolvable / stale); P_max pruning still applies.
    "no_retire": {"rods.synthesis": True, "rods.seed_selection": "boundary", "rods.retirement": False,
                  "rods.dynamic": True, "rods.dynamic_sampling": False, "env.error_hints": False},
    # Ablation: synthesize a pool once before training from the warm-up boundary, then train on it statically.
    "static_pool": {"rods.synthesis": True, "rods.seed_selection": "boundary", "rods.dynamic": False,
                    "rods.dynamic_sampling": False, "env.error_hints": False},
    # DAPO-style: static seeds, zero-variance groups dropped and the batch refilled from more seeds.
    "dynamic_sampling": {"rods.synthesis": False, "rods.dynamic_sampling": True, "env.error_hints": False},
    # Data-efficiency reference: supervised on the 16K offline set's gold trajectories, then static GRPO on it.
    "offline": {"env.seed_split": "offline", "rods.synthesis": False, "rods.dynamic_sampling": False,
                "env.error_hints": False},
})


def apply_arm(config: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
  """Sets ``config.arm`` and the arm's defining fields in place; returns ``config``."""
  if arm not in ARMS:
    raise ValueError(f"config.arm={arm!r} is not one of {sorted(ARMS)}")
  config.arm = arm
  for dotted, value in ARMS[arm].items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config
