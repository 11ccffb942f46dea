"""Evaluation: unbiased pass@k / pass^k vs brute-force enumeration; evaluate() on a scripted policy; JSON output."""
import itertools
import json
import types
from fractions import Fraction

import jax
import numpy as np
import pytest

from configs import base
from rods_jax.eval import evaluation as evaluate_lib
from rods_jax.eval import passk


def brute_force(n: int, c: int, k: int) -> tuple[Fraction, Fraction]:
  """Enumerate every k-subset of n samples (the first c successes): P(any success), P(all successes)."""
  outcomes = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  anyp = sum(any(outcomes[i] for i in s) for s in subsets)
  allp = sum(all(outcomes[i] for i in s) for s in subsets)
  return Fraction(anyp, len(subsets)), Fraction(allp, len(subsets))


def test_pass_at_k_and_pass_hat_k_equal_brute_force_enumeration():
  rng = np.random.default_rng(0)
  cases = [(n, int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))) for n in rng.integers(1, 11, 60)]
  cases += [(8, 0, 3), (8, 8, 8), (5, 1, 5), (10, 3, 8)]  # edges: none / all succeed, k = n, k > n − c
  for n, c, k in cases:
    want_any, want_all = brute_force(int(n), c, k)
    assert passk.pass_at_k(int(n), c, k) == pytest.approx(float(want_any), abs=1e-12), (n, c, k)
    assert passk.pass_hat_k(int(n), c, k) == pytest.approx(float(want_all), abs=1e-12), (n, c, k)


def test_pass_k_rejects_bad_arguments():
  with pytest.raises(ValueError, match="k=5"):
    passk.pass_at_k(4, 1, 5)
  with pytest.raises(ValueError, match="c=6"):
    passk.pass_hat_k(4, 6, 1)
  assert passk.default_ks(8) == [1, 2, 4, 8] and passk.default_ks(6) == [1, 2, 4, 6] and passk.default_ks(1) == [1]


Task = types.SimpleNamespace


def scripted_rollout(table, calls):
  """Rollout fn of a fixed policy: task i's k samples come from table[id] (cycled); records its arguments."""

  def fn(tasks, k, rng, greedy):
    calls.append((tuple(t.id for t in tasks), k, greedy))
    rows = [[table[t.id][j % len(table[t.id])] for j in range(k)] for t in tasks]
    rewards = np.asarray(rows, np.float32)
    return types.SimpleNamespace(rewards=rewards, success=rewards == 1.0)

  return fn


def make_tasks():
  cats = ["base", "base", "miss_func", "miss_param", "long_context", "base", "miss_func"]
  return [Task(id=f"t{i}", category=c) for i, c in enumerate(cats)]


def test_sampled_evaluation_metrics_per_category_and_json(tmp_path):
  tasks = make_tasks()
  rng = np.random.default_rng(1)
  table = {t.id: rng.choice([0.0, 0.5, 1.0], 4).tolist() for t in tasks}
  table["t0"] = [1.0, 1.0, 1.0, 1.0]
  table["t3"] = [0.0, 0.5, 0.0, 0.5]
  calls = []
  res = evaluate_lib.evaluate(scripted_rollout(table, calls), tasks, mode="sampled", k=4, rng=jax.random.key(0),
                              chunk=3, out_dir=str(tmp_path), tag="step_000100", extra={"step": 100})
  assert [c[0] for c in calls] == [("t0", "t1", "t2"), ("t3", "t4", "t5"), ("t6",)]
  assert all(k == 4 and not greedy for _, k, greedy in calls)
  s = np.array([[x == 1.0 for x in table[t.id]] for t in tasks])
  p = np.array([table[t.id] for t in tasks])
  m = res.metrics
  assert m["success"] == pytest.approx(s.mean()) and m["progress"] == pytest.approx(p.mean())
  for j in (1, 2, 4):
    assert m[f"pass@{j}"] == pytest.approx(np.mean([float(brute_force(4, int(c), j)[0]) for c in s.sum(1)]))
    assert m[f"pass^{j}"] == pytest.approx(np.mean([float(brute_force(4, int(c), j)[1]) for c in s.sum(1)]))
  assert m["pass@4"] == pytest.approx(s.any(1).mean()) and m["pass^4"] == pytest.approx(s.all(1).mean())
  assert m["pass@1"] == pytest.approx(m["success"])  # pass@1 is the per-sample success rate
  base_rows = [0, 1, 5]
  assert m["base/success"] == pytest.approx(s[base_rows].mean()) and m["base/n_tasks"] == 3
  assert m["miss_param/progress"] == pytest.approx(0.25) and m["miss_param/pass@4"] == 0.0
  rec = json.load(open(res.path))
  assert res.path.endswith("step_000100_sampled_k4.json")
  assert rec["step"] == 100 and rec["mode"] == "sampled" and rec["n_tasks"] == 7
  assert rec["metrics"] == pytest.approx(m)
  assert rec["per_task"][0] == {"id": "t0", "category": "base", "n": 4, "successes": 4, "progress": 1.0}


def test_greedy_evaluation_is_one_rollout_per_task():
  tasks = make_tasks()
  table = {t.id: [1.0 if i % 2 == 0 else 0.5] for i, t in enumerate(tasks)}
  calls = []
  res = evaluate_lib.evaluate(scripted_rollout(table, calls), tasks, mode="greedy", k=1, rng=jax.random.key(0))
  assert all(greedy and k == 1 for _, k, greedy in calls) and res.path is None
  assert res.metrics["success"] == pytest.approx(4 / 7) and res.metrics["progress"] == pytest.approx(5.5 / 7)
  assert "pass@1" not in res.metrics
  assert res.metrics["miss_func/success"] == 1.0 and res.metrics["miss_param/success"] == 0.0  # t2, t6 even; t3 odd
  with pytest.raises(ValueError, match="greedy needs k = 1"):
    evaluate_lib.evaluate(scripted_rollout(table, []), tasks, mode="greedy", k=4, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="mode 'best'"):
    evaluate_lib.evaluate(scripted_rollout(table, []), tasks, mode="best", k=1, rng=jax.random.key(0))
  bad = lambda tasks, k, rng, greedy: types.SimpleNamespace(rewards=np.zeros((1, 1)), success=np.zeros((1, 1)))
  with pytest.raises(ValueError, match="expected"):
    evaluate_lib.evaluate(bad, tasks, mode="greedy", k=1, rng=jax.random.key(0))


def test_engine_rollout_fn_passes_greedy_and_sampling_params():
  seen = []
  engine = types.SimpleNamespace(rollout=lambda params, env, tasks, k, rng, sampling: seen.append(sampling))
  cfg = base.get_config().rollout
  cfg.temperature, cfg.top_p, cfg.top_k = 0.7, 0.9, 5
  fn = evaluate_lib.engine_rollout_fn(engine, "params", "env", cfg)
  fn([], 1, None, True)
  fn([], 4, None, False)
  assert seen[0].temperature == 0.0
  assert (seen[1].temperature, seen[1].top_p, seen[1].top_k) == (0.7, 0.9, 5)
