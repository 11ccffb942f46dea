"""Held-out evaluation: success per category and overall, mean R_P, unbiased pass@k and pass^k."""
from rods_jax.eval.evaluation import EvalResult, MODES, engine_rollout_fn, evaluate, summarize
from rods_jax.eval.passk import default_ks, mean_pass_at_k, mean_pass_hat_k, pass_at_k, pass_hat_k

__all__ = ["EvalResult", "MODES", "engine_rollout_fn", "evaluate", "summarize", "default_ks", "mean_pass_at_k",
           "mean_pass_hat_k", "pass_at_k", "pass_hat_k"]
