"""Skill-aligned synthesis (docs/METHOD.md §5): Plan → Execute → Rewrite → Critique → Augment, with language backends.

    from rods_jax.rods.synthesis import Synthesizer, SynthesisResult, make_backend
    synth = Synthesizer(env, make_backend(cfg.synthesis), cfg.synthesis)
    result = synth.synthesize(seed_task, rng, step)     # .task | .failure, .stage_log
    synth.perturb(seed_task, rng, step)                 # env_augment baseline
    synth.stats.as_dict()                               # attempts / accepted / failed/<kind>
"""
from rods_jax.rods.synthesis.backends import BACKENDS, make_backend
from rods_jax.rods.synthesis.failures import FAILURES, PAPER_TAXONOMY, StageEvent, SynthesisFailure, SynthesisStats
from rods_jax.rods.synthesis.pipeline import SynthesisResult, Synthesizer

__all__ = ["BACKENDS", "FAILURES", "PAPER_TAXONOMY", "StageEvent", "SynthesisFailure", "SynthesisResult",
           "SynthesisStats", "Synthesizer", "make_backend"]
