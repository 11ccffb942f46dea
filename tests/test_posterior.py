"""The posterior boundary detector: float64 / mpmath references on random histories, the calibration study on
synthetic tasks of known success rate, the decay -> 0 limit (the paper's one-step rule), and exact restore."""
import json
import zlib

import mpmath
import numpy as np
import pytest

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods import posterior
from rods_jax.rods.buffer import BufferConfig, ReplayBuffer
from rods_jax.rods.detector import GroupStats
from rods_jax.rods.posterior_table import KEEP, MASTERED, UNSOLVABLE, PosteriorConfig, PosteriorTable
from rods_jax.rods.selector import SeedSelector, SelectorConfig

LO, HI, RLO, RHI, BLO = 0.2, 0.85, 0.2, 0.95, 0.2


def post_cfg(decay=0.95, strength=2.0, confidence=0.9, k=8):
  return PosteriorConfig(decay=decay, prior_strength=strength, confidence=confidence, group_size=k, alpha_low=LO,
                         alpha_high=HI, burn_in_low=BLO, retire_high=RHI, retire_low=RLO)


def mp_beta(a, b):
  """(mean, E[4p(1-p)], sd) of Beta(a, b) from its raw moments E[p^j] = B(a + j, b) / B(a, b), at 50 digits."""
  mpmath.mp.dps = 50
  a, b = mpmath.mpf(a), mpmath.mpf(b)
  m1, m2 = (mpmath.beta(a + j, b) / mpmath.beta(a, b) for j in (1, 2))
  return float(m1), float(4 * (m1 - m2)), float(mpmath.sqrt(m2 - m1 * m1))


def test_update_matches_the_closed_form_sum_over_a_random_history():
  """a_T = d^(s_T − s_0) a_0 + Σ_j d^(s_T − s_j) Σ_k R_jk (and b alike) vs the recursive update and the table."""
  rng = np.random.default_rng(7)
  for _ in range(20):
    k, d, s = int(rng.integers(2, 17)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.0, 6.0))
    steps = np.cumsum(rng.integers(0, 12, size=int(rng.integers(1, 15))))
    rbar = rng.uniform(size=len(steps))
    table = PosteriorTable(post_cfg(decay=d, strength=s, k=k), ["t"])
    a, b, last = s / 2, s / 2, 0
    for step, r in zip(steps, rbar):
      a, b = posterior.update(a, b, k * r, k, d, step - last)
      last = step
      table.observe("t", float(r), int(step), 0, generated=False)
    w = d ** (steps[-1] - steps)  # float64 reference, written as one sum
    ref_a = d ** steps[-1] * s / 2 + np.sum(w * k * rbar)
    ref_b = d ** steps[-1] * s / 2 + np.sum(w * k * (1 - rbar))
    np.testing.assert_allclose([a, b], [ref_a, ref_b], rtol=1e-12)
    ta, tb, n = table.get("t")
    np.testing.assert_allclose([ta, tb], [ref_a, ref_b], rtol=1e-12)
    assert n == len(steps)


def test_mean_expected_phi_sd_and_tails_match_mpmath():
  rng = np.random.default_rng(3)
  a = np.exp(rng.uniform(np.log(0.05), np.log(60.0), size=25))
  b = np.exp(rng.uniform(np.log(0.05), np.log(60.0), size=25))
  t = rng.uniform(0.01, 0.99, size=25)
  for ai, bi, ti in zip(a, b, t):
    m, ephi, sd = mp_beta(ai, bi)
    assert posterior.mean(ai, bi) == pytest.approx(m, rel=1e-10)
    assert posterior.expected_phi(ai, bi) == pytest.approx(ephi, rel=1e-9)
    assert posterior.sd(ai, bi) == pytest.approx(sd, rel=1e-8)
    below = float(mpmath.betainc(ai, bi, 0, ti, regularized=True))
    assert posterior.prob_below(ai, bi, ti) == pytest.approx(below, rel=1e-9, abs=1e-14)
    assert posterior.prob_above(ai, bi, ti) == pytest.approx(1 - below, rel=1e-9, abs=1e-14)
  # Degenerate posteriors of full forgetting (decay 0): all rewards 1 -> a point mass at 1, all 0 -> at 0.
  assert posterior.prob_above(8.0, 0.0, 0.95) == 1.0 and posterior.prob_below(0.0, 8.0, 0.2) == 1.0
  assert posterior.expected_phi(8.0, 0.0) == 0.0 and posterior.mean(0.0, 8.0) == 0.0


def test_shrunk_prior_keeps_the_parents_mean_at_the_given_strength():
  rng = np.random.default_rng(5)
  for _ in range(10):
    ap, bp, s = rng.uniform(0.1, 40), rng.uniform(0.1, 40), rng.uniform(0.5, 8)
    a0, b0 = posterior.shrunk_prior(ap, bp, s)
    assert a0 + b0 == pytest.approx(s, rel=1e-12) and a0 / (a0 + b0) == pytest.approx(ap / (ap + bp), rel=1e-12)
  table = PosteriorTable(post_cfg(strength=4.0), ["seed", "fresh"])
  table.observe("seed", 0.3, 5, 0, generated=False)
  table.add("v1", "seed")
  table.add("v2", "fresh")  # an unobserved parent carries no evidence: the seeds' Beta(s/2, s/2)
  sa, sb, _ = table.get("seed")
  va, vb, n = table.get("v1")
  assert n == 0 and va + vb == pytest.approx(4.0) and va / (va + vb) == pytest.approx(sa / (sa + sb))
  assert table.get("v2")[:2] == (2.0, 2.0)


def test_decisions_match_an_mpmath_reference_on_random_posteriors():
  """zone, priority, burn-in and retirement of the table against a 50-digit statement of the rules."""
  rng = np.random.default_rng(11)
  cfg = post_cfg(decay=0.9, confidence=0.8)
  ids = [f"t{i}" for i in range(40)]
  table = PosteriorTable(cfg, ids)
  for tid in ids:
    p = rng.uniform()
    for step in sorted(rng.integers(1, 60, size=int(rng.integers(1, 8)))):
      table.observe(tid, float(np.clip(p + rng.normal(0, 0.1), 0, 1)), int(step), 0, generated=True)
  stats = GroupStats(mean=rng.uniform(size=40), var=rng.uniform(size=40), phi=rng.uniform(size=40),
                     zone=np.zeros(40, np.int32), zero_std=np.zeros(40, bool))
  dec = table.decision_stats(ids, stats)
  checked = 0
  for i, tid in enumerate(ids):
    a, b, _ = table.get(tid)
    m, ephi, _ = mp_beta(a, b)
    below = lambda t: float(mpmath.betainc(a, b, 0, t, regularized=True))  # noqa: E731
    if min(abs(below(t) - q) for t in (BLO, RHI) for q in (cfg.confidence, 1 - cfg.confidence)) < 1e-9:
      continue  # too close to call at float64
    checked += 1
    assert dec.zone[i] == (0 if m < LO else 2 if m > HI else 1)
    assert dec.mean[i] == pytest.approx(m, rel=1e-10) and dec.phi[i] == pytest.approx(ephi, rel=1e-9)
    assert table.priority(tid) == pytest.approx(ephi, rel=1e-9)
    ref = (MASTERED if m > RHI and 1 - below(RHI) >= cfg.confidence else
           UNSOLVABLE if m < RLO and below(RLO) >= cfg.confidence else KEEP)
    assert table.retire_verdict(tid) == ref
    evict = m < BLO and below(BLO) >= cfg.confidence
    want = "evicted" if evict else {MASTERED: "retired_mastered", UNSOLVABLE: "retired_unsolvable", KEEP: None}[ref]
    assert table.lifecycle(tid, 0, retirement=True) == want
    assert table.lifecycle(tid, 1, retirement=False) is None  # burn-in only in the epoch of the first observation
  assert checked >= 35
  assert np.array_equal(dec.var, stats.var) and np.array_equal(dec.zero_std, stats.zero_std)


def test_metrics_count_zone_flips_and_contradicted_verdicts_of_both_rules():
  """Counters against a direct count over the r̄ sequence (step rule) and the posterior after each observation."""
  rng = np.random.default_rng(2)
  cfg = post_cfg(decay=0.8, confidence=0.6, k=4)
  table = PosteriorTable(cfg, ["s"])
  table.add("g", "s")
  ref = {"zone_flips": 0, "step_zone_flips": 0, "retire_checked": 0, "retire_contradicted": 0,
         "step_retire_checked": 0, "step_retire_contradicted": 0, "burn_in_checked": 0, "burn_in_contradicted": 0,
         "step_burn_in_checked": 0, "step_burn_in_contradicted": 0}
  prev = {}
  for step in range(1, 40):
    for tid in ("s", "g"):
      r = float(rng.choice([0.0, 0.05, 0.15, 0.5, 0.9, 0.97, 1.0]))
      table.observe(tid, r, step, 0, generated=tid == "g")
      a, b, n = table.get(tid)
      m = a / (a + b)
      now = {"zone": 0 if m < LO else 2 if m > HI else 1, "step_zone": 0 if r < LO else 2 if r > HI else 1,
             "verdict": table.retire_verdict(tid),
             "step_verdict": MASTERED if r > RHI else UNSOLVABLE if r < RLO else KEEP,
             "burn": bool(m < BLO and posterior.prob_below(a, b, BLO) >= cfg.confidence), "step_burn": r < BLO}
      if n >= 2:
        old = prev[tid]
        ref["zone_flips"] += now["zone"] != old["zone"]
        ref["step_zone_flips"] += now["step_zone"] != old["step_zone"]
        for p, key in (("", "verdict"), ("step_", "step_verdict")):
          if old[key] != KEEP:
            ref[f"{p}retire_checked"] += 1
            ref[f"{p}retire_contradicted"] += now[key] != old[key]
        if tid == "g" and n == 2:
          for p, key in (("", "burn"), ("step_", "step_burn")):
            if old[key]:
              ref[f"{p}burn_in_checked"] += 1
              ref[f"{p}burn_in_contradicted"] += not now[key]
      keep_burn = n > 1 and tid == "g"  # the burn-in verdicts are those of the first observation
      prev[tid] = {**now, "burn": prev[tid]["burn"], "step_burn": prev[tid]["step_burn"]} if keep_burn else now
  m = table.metrics(["s", "g", "s"])
  for key, value in ref.items():
    assert m[f"posterior/{key}"] == value, key
  assert ref["step_zone_flips"] > ref["zone_flips"] > 0 and ref["step_retire_checked"] > 0
  assert m["posterior/revisited_tasks"] == 2 and m["posterior/zone_flips_per_task"] == ref["zone_flips"] / 2
  assert sum(m[f"posterior/zones/{z}"] for z in ("hard", "boundary", "mastered")) == pytest.approx(1.0)


def simulate(k, decay, strength, confidence, visits=10, gap=8, reps=20, conc=3.0, seed=0, drift=0.0):
  """Synthetic tasks of known success rate p (a grid over [0, 1], ``reps`` each), visited once per epoch of ``gap``
  steps, K continuous rewards per visit ~ Beta(conc·p, conc·(1 − p)) (mean p: a noisy progress reward).

  Returns, per detector: the zone error rate over all visits, the wrong-removal rate (a task evicted or retired as
  unsolvable with p ≥ 0.2, or retired as mastered with p ≤ 0.95; per task) and the missed-retirement rate (a task
  with p > 0.95 or p < 0.2 still in the pool after ``visits`` epochs). ``drift``: every p rises by this much per epoch
  (clipped at 1), a policy that improves; the truth is the current p.
  """
  rng = np.random.default_rng(seed)
  p0 = np.repeat(np.arange(101) / 100.0, reps)  # exact at the thresholds 0.2, 0.85, 0.95
  n = len(p0)
  a, b = np.full(n, strength / 2), np.full(n, strength / 2)
  alive = {"step": np.ones(n, bool), "posterior": np.ones(n, bool)}
  wrong = {"step": np.zeros(n, bool), "posterior": np.zeros(n, bool)}
  zone_err = {"step": 0, "posterior": 0}
  for v in range(visits):
    p = np.clip(p0 + drift * v, 0.0, 1.0)
    true_zone = posterior.zones(p, LO, HI)
    pc = np.clip(p, 1e-9, 1 - 1e-9)[:, None]
    r = np.where(p[:, None] == 0, 0.0, np.where(p[:, None] == 1, 1.0, rng.beta(conc * pc, conc * (1 - pc), (n, k))))
    rbar = r.mean(1)
    a, b = posterior.update(a, b, r.sum(1), k, decay, gap)
    zone_err["step"] += int((posterior.zones(rbar, LO, HI) != true_zone).sum())
    zone_err["posterior"] += int((posterior.zones(posterior.mean(a, b), LO, HI) != true_zone).sum())
    first = v == 0  # burn-in: at the end of the first observed epoch, before retirement (the buffer's order)
    rules = {"step": (first & (rbar < BLO), rbar > RHI, rbar < RLO),
             "posterior": (first & posterior.confidently_below(a, b, BLO, confidence),
                           posterior.confidently_above(a, b, RHI, confidence),
                           posterior.confidently_below(a, b, RLO, confidence))}
    for name, (evict, mastered, unsolvable) in rules.items():
      low = alive[name] & (evict | (~mastered & unsolvable))
      high = alive[name] & ~evict & mastered
      wrong[name] |= (low & (p >= RLO)) | (high & (p <= RHI))
      alive[name] &= ~(low | high)
  should = (p > RHI) | (p < RLO)
  return {name: {"zone_error": zone_err[name] / (n * visits), "wrong_removal": float(wrong[name].mean()),
                 "missed_retirement": float((alive[name] & should).sum() / should.sum())} for name in alive}


def test_calibration_posterior_detector_errs_less_than_the_one_step_rule(capsys):
  """Default decay / prior / confidence (configs/base.py): fewer zone errors and fewer wrong removals at every K."""
  from configs import base
  r = base.get_config().rods
  lines = ["K   detector   zone_error  wrong_removal  missed_retirement"]
  for k in (4, 8, 16):
    out = simulate(k, r.posterior_decay, r.posterior_prior_strength, r.posterior_confidence)
    for name, m in out.items():
      lines.append(f"{k:<3} {name:<10} {m['zone_error']:.4f}      {m['wrong_removal']:.4f}         "
                   f"{m['missed_retirement']:.4f}")
    assert out["posterior"]["zone_error"] < out["step"]["zone_error"]
    assert out["posterior"]["wrong_removal"] < out["step"]["wrong_removal"]
  with capsys.disabled():
    print("\ncalibration (101 p values x 20 tasks, 10 epochs of 8 steps, rewards ~ Beta(3p, 3(1-p))):\n"
          + "\n".join(lines))
  # A policy that moves faster than the default half-life makes the posterior lag (docs/METHOD.md §11):
  # at +0.1 per epoch the default decay errs more than one step; a shorter memory (d = 0.8) errs less again.
  moving = {d: simulate(8, d, 2.0, 0.9, drift=0.1) for d in (r.posterior_decay, 0.8)}
  assert moving[r.posterior_decay]["posterior"]["zone_error"] > moving[0.8]["step"]["zone_error"]
  assert moving[0.8]["posterior"]["zone_error"] < moving[0.8]["step"]["zone_error"]
  # Full forgetting and no confidence gate: the same numbers as the one-step rule on the same draws.
  out = simulate(8, 0.0, 0.0, 0.0)
  assert out["posterior"] == out["step"]


def make_task(tid, parent=None, origin="seed"):
  return Task(id=tid, env="toolworld", category=("base", "miss_func")[len(tid) % 2], classes=("Files",),
              initial_state={"Files": {"n": len(tid)}}, turns=(f"turn of {tid}",),
              gt_calls=(({"name": "ls", "arguments": {"i": 0}},),),
              lineage=Lineage(origin=origin, parent_id=parent, generation=0 if parent is None else 1, birth_step=0))


def drive(buf, rng, steps, b=4, stage_every=2, tag=""):
  """Noisy r̄ around a per-task rate, each task observed once per epoch (fillers not observed), variants staged from
  sampled tasks; returns the epoch reports and the posterior decision stats of every batch."""
  reports, decisions = [], []
  for step in range(1, steps + 1):
    s = buf.sample(b)
    ids = [t.id for t in s.tasks[:len(s.tasks) - s.n_filler]]
    rate = np.array([zlib.crc32(t.encode()) % 1001 / 1000 for t in ids])
    rbar = np.clip(rate + rng.normal(0.0, 0.15, size=len(ids)), 0.0, 1.0)
    for tid, r in zip(ids, rbar):
      buf.observe(tid, float(r), step)
    if buf.posterior is not None:
      st = GroupStats(mean=rbar, var=rbar * 0.1, phi=4 * rbar * (1 - rbar),
                      zone=posterior.zones(rbar, LO, HI), zero_std=np.zeros(len(ids), bool))
      decisions.append((rbar, buf.posterior.decision_stats(ids, st)))
    if step % stage_every == 0:
      buf.stage(make_task(f"v{tag}{step}", parent=ids[0], origin="synth"))
    if s.epoch_end:
      reports.append(buf.end_epoch())
  return reports, decisions


def buffer_cfg():
  return BufferConfig(p_max=5, beta=0.5, burn_in_low=BLO, retire_high=RHI, retire_low=RLO, stale_epochs=2,
                      retirement=True)


def test_full_forgetting_reduces_to_the_one_step_rule(tmp_path):
  """decay 0: the posterior is the last observation (a = K r̄, b = K (1 − r̄)); zones equal the step zones and the
  seed order (E[φ] = φ K/(K+1)) is the same. With the confidence gate off too, every lifecycle decision (burn-in,
  retirement, pruning) equals the paper's on the same random history."""
  seeds = [make_task(f"s{i}") for i in range(6)]
  step_buf = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "a.jsonl"), seed=1)
  post_buf = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "b.jsonl"), seed=1,
                          posterior_cfg=post_cfg(decay=0.0, confidence=0.0))
  ref_reports, _ = drive(step_buf, np.random.default_rng(4), 80)
  reports, decisions = drive(post_buf, np.random.default_rng(4), 80)
  assert reports == ref_reports
  assert sum(len(r.evicted) + len(r.retired_mastered) + len(r.retired_unsolvable) + len(r.pruned)
             for r in reports) >= 10  # the lifecycle really decided things
  sel_cfg = SelectorConfig(seeds_per_step=2, seeds_per_category=1, cooldown_steps=0, seed_selection="boundary")
  for rbar, dec in decisions:
    np.testing.assert_allclose(dec.mean, rbar, rtol=1e-15)
    assert np.array_equal(dec.zone, posterior.zones(rbar, LO, HI))
    np.testing.assert_allclose(dec.phi, 4 * rbar * (1 - rbar) * 8 / 9, rtol=1e-12)
    ids, cats = [f"x{i}" for i in range(len(rbar))], ["base"] * len(rbar)
    step_stats = GroupStats(mean=rbar, var=rbar, phi=4 * rbar * (1 - rbar), zone=posterior.zones(rbar, LO, HI),
                            zero_std=np.zeros(len(rbar), bool))
    assert (SeedSelector(sel_cfg).select(ids, cats, dec, 0) == SeedSelector(sel_cfg).select(ids, cats, step_stats, 0))
  # With the default confidence gate, decay 0 keeps the step zones (and selection) but retires less.
  gated = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "c.jsonl"), seed=1, posterior_cfg=post_cfg(decay=0.0))
  gated_reports, gated_dec = drive(gated, np.random.default_rng(4), 80)
  for rbar, dec in gated_dec:  # the just-observed tasks' posterior is their last observation, whatever the pool
    assert np.array_equal(dec.zone, posterior.zones(rbar, LO, HI))
  removed = lambda rs: sum(len(r.evicted) + len(r.retired_mastered) + len(r.retired_unsolvable) for r in rs)  # noqa
  assert removed(gated_reports) < removed(reports)


def test_checkpoint_round_trip_restores_the_posteriors_exactly(tmp_path):
  """state_dict -> JSON -> a fresh buffer: the same posteriors, counters and, continued, the same decisions."""
  seeds = [make_task(f"s{i}") for i in range(6)]
  cfg = post_cfg(decay=0.9, confidence=0.7)
  a = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "a.jsonl"), seed=2, posterior_cfg=cfg)
  drive(a, np.random.default_rng(9), 60)
  state = json.loads(json.dumps(a.state_dict()))
  assert state["posterior"]["tasks"] and state["posterior"]["counts"]["revisited_tasks"] > 0
  b = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "a.jsonl"), seed=77, posterior_cfg=cfg)
  b.load_state_dict(state)
  assert b.state_dict() == a.state_dict()
  assert any("posterior" in rec for rec in state["removed"].values())  # removed tasks keep their final posterior
  ra, da = drive(a, np.random.default_rng(10), 30, tag="x")
  rb, db = drive(b, np.random.default_rng(10), 30, tag="x")
  assert ra == rb and b.state_dict() == a.state_dict()
  for (_, x), (_, y) in zip(da, db):
    assert np.array_equal(x.mean, y.mean) and np.array_equal(x.phi, y.phi)
  assert json.dumps(b.posterior.metrics(b.active_ids())) == json.dumps(a.posterior.metrics(a.active_ids()))
  # A step run's state cannot be resumed as a posterior run (or the other way round).
  step_buf = ReplayBuffer(seeds, buffer_cfg(), str(tmp_path / "s.jsonl"))
  with pytest.raises(ValueError, match="config.rods.detector"):
    step_buf.load_state_dict(state)


def no_variant_factory():
  import types
  return lambda seed, rng: types.SimpleNamespace(task=None, failure="none_needed")


@pytest.mark.parametrize("detector,sent", [("step", ["s1", "s2", "s3"]), ("posterior", ["s0", "s1", "s2", "s3"])])
def test_curriculum_selects_seeds_by_the_posterior_zone(tmp_path, detector, sent):
  """Five steps at r̄ = 0.5, then one draw of 0.1: the step rule calls s0 hard; its posterior still says boundary."""
  import ml_collections
  from configs import base
  from rods_jax.rods.curriculum import Curriculum
  from rods_jax.rods.buffer import Sample
  rods = base.get_config().rods
  rods.detector, rods.seeds_per_step, rods.seeds_per_category, rods.cooldown_steps = detector, 4, 1, 1
  syn = ml_collections.ConfigDict(dict(process=False, exchange_dir="", request_queue_size=16, result_queue_size=16,
                                      lag_steps=-1))
  seeds = [make_task(f"s{i}").replace(category=("base", "miss_func", "miss_param", "long_context")[i])
           for i in range(4)]
  cur = Curriculum(seeds, rods, syn, str(tmp_path), no_variant_factory, "synthesize", seed=0, group_size=8)
  try:
    sample = Sample(tasks=seeds, epoch=0, epoch_end=False, n_filler=0)
    rng = np.random.default_rng(0)
    for step in range(1, 7):
      mean = np.array([0.1 if step == 6 else 0.5, 0.5, 0.45, 0.55])
      var = rng.uniform(0.05, 0.2, size=4)
      stats = GroupStats(mean=mean, var=var, phi=4 * mean * (1 - mean), zone=posterior.zones(mean, LO, HI),
                         zero_std=np.zeros(4, bool))
      m = cur.after_update(sample, stats, step)
    assert [s.id for s in seeds if cur.selector.on_cooldown(s.id, 6)] == sent
    assert m["synth/seeds_sent"] == len(sent)
    assert ("posterior/zones/boundary" in m) == (detector == "posterior")
    if detector == "posterior":
      a, b, n = cur.buffer.posterior.get("s0")
      assert n == 6 and LO <= a / (a + b) <= HI
      assert cur.state_dict()["buffer"]["posterior"]["tasks"]["s0"]["a"] == a
  finally:
    cur.close()


def test_config_validation_names_the_posterior_fields():
  from configs import rods as rods_arm, rods_posterior
  from rods_jax import config_validation
  config_validation.validate(rods_posterior.get_config(), 1)
  config_validation.validate(rods_posterior.get_config("paper"), 16)
  for field, value, match in (("detector", "posterier", r"config\.rods\.detector='posterier' is not one of"),
                              ("posterior_decay", 1.5, r"config\.rods\.posterior_decay=1\.5 must lie in \[0, 1\]"),
                              ("posterior_prior_strength", -1.0, r"config\.rods\.posterior_prior_strength=-1\.0"),
                              ("posterior_confidence", 2.0, r"config\.rods\.posterior_confidence=2\.0")):
    c = rods_posterior.get_config()
    c.rods[field] = value
    with pytest.raises(ValueError, match=match):
      config_validation.validate(c, 1)
  c = rods_arm.get_config()
  c.rods.detector = "posterior"  # the rods arm is the paper's rule
  with pytest.raises(ValueError, match=r"config\.rods\.detector='posterior' contradicts config\.arm='rods'"):
    config_validation.validate(c, 1)
