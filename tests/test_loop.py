"""The RODS trainer: group selection for dynamic sampling, and short end-to-end lab runs (toolworld, tiny model)."""
import numpy as np

from rods_jax.rods import loop
from rods_jax.rollout.types import RolloutBatch


def fake_batch(b, k, t, offset, rng):
  n = b * k
  return RolloutBatch(
      tokens=rng.integers(0, 100, size=(n, t)).astype(np.int32), loss_mask=rng.uniform(size=(n, t)) < 0.5,
      valid=np.ones((n, t), bool), sampler_logps=rng.normal(size=(n, t)).astype(np.float32),
      rewards=rng.uniform(size=(b, k)).astype(np.float32), success=rng.uniform(size=(b, k)) < 0.5,
      task_ids=np.array([f"t{offset + i}" for i in range(b)]), categories=np.array(["base"] * b),
      n_calls=rng.integers(0, 5, n).astype(np.int32), n_errors=rng.integers(0, 5, n).astype(np.int32),
      n_parse_errors=rng.integers(0, 5, n).astype(np.int32), turns_closed=rng.integers(0, 5, n).astype(np.int32),
      truncated=rng.uniform(size=n) < 0.5, lengths=rng.integers(1, t, n).astype(np.int32),
      timings={"total": 1.0, "decode": 0.5}, stats={"sampled_tokens": 10},
      messages=tuple((({"role": "user", "content": f"row{offset * k + j}"},)) for j in range(n)))


def test_select_groups_keeps_rows_of_each_group_together():
  rng = np.random.default_rng(0)
  k = 3
  a, b = fake_batch(4, k, 7, 0, rng), fake_batch(4, k, 7, 10, rng)
  picks = [(1, 2), (0, 0), (1, 3), (0, 3)]
  out = loop.select_groups([a, b], picks, k)
  assert list(out.task_ids) == ["t12", "t0", "t13", "t3"]
  for g, (bi, i) in enumerate(picks):
    src = (a, b)[bi]
    np.testing.assert_array_equal(out.rewards[g], src.rewards[i])
    np.testing.assert_array_equal(out.tokens[g * k:(g + 1) * k], src.tokens[i * k:(i + 1) * k])
    np.testing.assert_array_equal(out.loss_mask[g * k:(g + 1) * k], src.loss_mask[i * k:(i + 1) * k])
    np.testing.assert_array_equal(out.lengths[g * k:(g + 1) * k], src.lengths[i * k:(i + 1) * k])
    assert out.messages[g * k] == src.messages[i * k]
  assert out.timings == {"total": 2.0, "decode": 1.0} and out.stats == {"sampled_tokens": 20}
  assert out.tokens.shape == (12, 7) and out.rewards.shape == (4, 3)
