"""The skill-aligned synthesis pipeline: Plan → Execute → Rewrite → Critique → Augment (docs/METHOD.md §5).

    synth = Synthesizer(env, backend, cfg.synthesis)
    result = synth.synthesize(seed_task, rng, step)     # SynthesisResult(task | None, failure | None, stage_log)
    synth.stats.as_dict()                                # {"attempts", "accepted", "failed/<kind>": n, ...}

Every call ends with an accepted task whose structural profile matches the seed's and whose gold trajectory scores
R_P = 1, or with exactly one failure kind of ``failures.FAILURES``; no exception escapes ``synthesize``.
``perturb`` is the env_augment baseline: a uniform structure-preserving re-instantiation (same calls and structure,
new values/entities), validated by the same gates, without language stages or boundary targeting.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods.synthesis import augment, critique, execute, failures, flow, plan, querycheck, structure
from rods_jax.rods.synthesis.backends.base import LanguageBackend, LanguageRequest, PlanRequest, TurnSpec
from rods_jax.rods.synthesis.backends.template import TemplateBackend
from rods_jax.rods.synthesis.failures import StageEvent, SynthesisFailure, SynthesisStats


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
  task: Task | None
  failure: str | None
  stage_log: tuple[StageEvent, ...]
  detail: str = ""
  seed_id: str = ""


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def turn_specs(task: Task, outputs: tuple[str, ...]) -> tuple[TurnSpec, ...]:
  """Per turn: the calls, the values the user states and the arguments that flow from earlier outputs."""
  sources = flow.argument_sources(task.turns, task.gt_calls, outputs)
  calls = plan.flat_calls(task)
  specs, j = [], 0
  for t, turn in enumerate(task.gt_calls):
    idx = range(j, j + len(turn))
    user, fl = [], []
    for s in sources:
      if s.call in idx:
        value = plan.leaf(calls[s.call]["arguments"][s.arg], s.path)
        if s.kind == flow.USER:
          user.append((s.arg, value))
        elif s.kind == flow.FLOW and s.arg not in fl:
          fl.append(s.arg)
    specs.append(TurnSpec(calls=tuple(turn), user_values=tuple(user), flow_args=tuple(fl), draft=task.turns[t]))
    j += len(turn)
  return tuple(specs)


def skills(seed_profile: Any, task: Task) -> tuple[str, ...]:
  out = ["parameter extraction"]
  depth = structure.depth(seed_profile)
  if depth >= 2:
    out.append("multi-step parameter passing")
  if structure.cross_turn_edges(seed_profile):
    out.append("cross-turn dependency")
  if task.category in ("miss_func", "miss_param"):
    out.append("recognising a missing function or parameter")
  return tuple(out)


class Synthesizer:
  """Skill-aligned synthesis for one environment and one language backend.

  Args:
    env: an ``rods_jax.envs.protocol.Environment`` (new_world, tools_at, score).
    backend: a ``LanguageBackend`` (template | sampler | openai).
    cfg: ``config.synthesis``.
    planner: overrides the environment's default planner (``structure.make_planner``).
  """

  def __init__(self, env, backend: LanguageBackend, cfg, planner: plan.Planner | None = None):
    self.env = env
    self.backend = backend
    self.cfg = cfg
    value_catalog = structure.catalog(env, cfg)
    self.planner = planner if planner is not None else structure.make_planner(env, cfg, value_catalog)
    self.perturber = structure.make_perturber(env, value_catalog)
    self.stats = SynthesisStats()
    for field in ("max_attempts", "max_refinements", "max_string_len", "max_list_len", "max_query_chars"):
      if int(getattr(cfg, field)) < (1 if field != "max_refinements" else 0):
        raise ValueError(f"config.synthesis.{field}={getattr(cfg, field)} is out of range")

  # --- public API ---
  def synthesize(self, seed_task: Task, rng: np.random.Generator | int, step: int = 0) -> SynthesisResult:
    """One new task from ``seed_task`` (see module docstring). Never raises."""
    return self._guarded(seed_task, rng, step, self._synthesize)

  def perturb(self, seed_task: Task, rng: np.random.Generator | int, step: int = 0) -> SynthesisResult:
    """The env_augment baseline's uniform structure-preserving perturbation of ``seed_task``. Never raises."""
    return self._guarded(seed_task, rng, step, self._perturb)

  # --- stages ---
  def _guarded(self, seed, rng, step, fn) -> SynthesisResult:
    log: list[StageEvent] = []
    try:
      task = fn(seed, _as_rng(rng), int(step), log)
      result = SynthesisResult(task, None, tuple(log), "", seed.id)
    except SynthesisFailure as e:
      log.append(StageEvent("fail", False, f"{e.kind}: {e.detail}"))
      result = SynthesisResult(None, e.kind, tuple(log), e.detail, getattr(seed, "id", ""))
    except Exception as e:  # the synthesizer process must survive anything a seed or backend does
      detail = f"{type(e).__name__}: {e}"
      log.append(StageEvent("fail", False, f"{failures.PIPELINE_EXCEPTION}: {detail}"))
      result = SynthesisResult(None, failures.PIPELINE_EXCEPTION, tuple(log), detail, getattr(seed, "id", ""))
    self.stats.record(result)
    return result

  def _check_seed(self, seed: Task) -> None:
    if seed.num_turns == 0:
      raise SynthesisFailure(failures.NO_PROMPTS, f"seed {seed.id} has no user turns")
    if not any(seed.gt_calls):
      raise SynthesisFailure(failures.NO_PATTERN, f"seed {seed.id} has no ground-truth calls to mirror")
    if seed.env != self.env.name:
      raise SynthesisFailure(failures.NO_PATTERN, f"seed {seed.id} is a {seed.env} task, the synthesizer runs {self.env.name}")

  def _execute(self, planner: plan.Planner, seed: Task, rng, log) -> tuple[plan.Draft, execute.ExecTrace, Any]:
    seed_profile = structure.profile(self.env, seed)
    draft, trace = execute.plan_and_execute(self.env, planner, seed, rng, int(self.cfg.max_attempts),
                                            structure.expected_ok(planner, seed), log,
                                            self._profile_check(seed_profile))
    return draft, trace, seed_profile

  def _profile_check(self, seed_profile):
    def check(trace: execute.ExecTrace) -> str | None:
      new_profile = structure.profile(self.env, trace.task, trace.outputs)
      if structure.profiles_match(seed_profile, new_profile, float(self.cfg.profile_tolerance)):
        return None
      return structure.describe_mismatch(seed_profile, new_profile)
    return check

  def _synthesize(self, seed: Task, rng: np.random.Generator, step: int, log: list[StageEvent]) -> Task:
    self._check_seed(seed)
    draft, trace, seed_profile = self._execute(self.planner, seed, rng, log)
    task = trace.task
    specs = turn_specs(task, trace.outputs)
    narrative = self.backend.plan_narrative(PlanRequest(
        env=self.env.name, classes=tuple(task.classes),
        functions_per_turn=tuple(tuple(c["name"] for c in turn) for turn in task.gt_calls),
        seed_queries=tuple(seed.turns), skills=skills(seed_profile, seed)))
    log.append(StageEvent("plan", True, f"narrative: {narrative[:120]}"))
    request = LanguageRequest(
        env=self.env.name, classes=tuple(task.classes), narrative=narrative, turns=specs,
        function_names=structure.function_names(self.env, task), forbidden_values=draft.forbidden,
        max_query_chars=int(self.cfg.max_query_chars),
        env_turns=tuple(sorted(int(k) for k in task.missing_functions)))
    queries = self._rewrite(request, task, log)
    task = task.replace(turns=queries)
    problems = critique.gate_problems(self.env, task, trace.outputs, int(self.cfg.max_string_len),
                                      int(self.cfg.max_list_len))
    if problems:
      raise SynthesisFailure(failures.GATE_FAILED, "; ".join(problems[:3]))
    log.append(StageEvent("critique", True, "gates passed: re-execution, availability, complexity, R_P = 1"))
    queries = self._judge(request, queries, task, log)
    task = task.replace(turns=queries)
    self._check_novel(seed, task, trace.outputs)
    if bool(self.cfg.augment) and seed.category in augment.AUGMENTABLE and task.category != seed.category:
      task = augment.augment(structure.miss_func_message(self.env), task, seed.category, rng, log,
                             user_values_per_turn=[s.user_values for s in specs])
      if not structure.profiles_match(seed_profile, structure.profile(self.env, task, None), float(self.cfg.profile_tolerance)):
        raise SynthesisFailure(failures.PROFILE_MISMATCH, "augmented variant's profile differs from the seed's")
    return self._finish(seed, task, rng, step, "synth", log)

  def _perturb(self, seed: Task, rng: np.random.Generator, step: int, log: list[StageEvent]) -> Task:
    self._check_seed(seed)
    draft, trace, _ = self._execute(self.perturber, seed, rng, log)
    task = trace.task
    problems = critique.gate_problems(self.env, task, trace.outputs, int(self.cfg.max_string_len),
                                      int(self.cfg.max_list_len))
    if problems:
      raise SynthesisFailure(failures.GATE_FAILED, "; ".join(problems[:3]))
    del draft
    self._check_novel(seed, task, trace.outputs)
    return self._finish(seed, task, rng, step, "augment", log)

  def _rewrite(self, request: LanguageRequest, task: Task, log) -> tuple[str, ...]:
    queries = tuple(self.backend.rewrite_queries(request))
    queries = self._keep_env_turns(task, queries)
    problems = querycheck.verify_queries(request, queries)
    if problems:
      raise SynthesisFailure(failures.QUERY_VERIFY_FAILED, "; ".join(problems[:3]))
    log.append(StageEvent("rewrite", True, f"{len(queries)} queries"))
    return queries

  def _keep_env_turns(self, task: Task, queries: tuple[str, ...]) -> tuple[str, ...]:
    """miss_func recovery turns hold the environment's message, not a user query: never rewritten."""
    if len(queries) != task.num_turns:
      return queries
    return tuple(task.turns[t] if str(t) in task.missing_functions else q for t, q in enumerate(queries))

  def _judge(self, request: LanguageRequest, queries: tuple[str, ...], task: Task, log) -> tuple[str, ...]:
    refinements = 0
    while True:
      # Query verification against the ground truth (every stated value present, no stale seed value) is
      # deterministic and applies to every backend; the backend's judge (rules or an LLM) runs on what passes it.
      verdict = querycheck.rule_verdict(request, queries)
      if verdict.accept and not isinstance(self.backend, TemplateBackend):
        verdict = self.backend.judge(request, queries)
      log.append(StageEvent("judge", verdict.accept, verdict.reason[:200]))
      if verdict.accept:
        return queries
      if not verdict.fixable:
        raise SynthesisFailure(failures.JUDGE_REJECTED, f"gt_unfixable: {verdict.reason[:200]}")
      if refinements >= int(self.cfg.max_refinements):
        raise SynthesisFailure(failures.JUDGE_REJECTED, verdict.reason[:200])
      refinements += 1
      queries = self._keep_env_turns(task, tuple(self.backend.refine(request, queries, verdict)))
      problems = querycheck.verify_queries(request, queries)
      if problems:
        raise SynthesisFailure(failures.QUERY_VERIFY_FAILED, "after refinement: " + "; ".join(problems[:3]))
      log.append(StageEvent("refine", True, f"refinement {refinements}"))

  def _check_novel(self, seed: Task, task: Task, outputs: tuple[str, ...]) -> None:
    del outputs
    if task.initial_state == seed.initial_state and task.gt_calls == seed.gt_calls:
      raise SynthesisFailure(failures.NOT_NOVEL, "same initial state and ground truth as the seed")

  def _finish(self, seed: Task, task: Task, rng, step: int, origin: str, log) -> Task:
    try:
      new = task.replace(
          id=plan.variant_id(seed, rng, "s" if origin == "synth" else "p"),
          lineage=Lineage(origin=origin, parent_id=seed.id, generation=seed.lineage.generation + 1, birth_step=step),
          meta={**task.meta, "parent": seed.id, "backend": type(self.backend).__name__ if origin == "synth" else "none",
                "planner": type(self.planner).__name__})
      Task.from_json(new.to_json())  # must survive the queue's record round trip
    except (ValueError, TypeError, KeyError) as e:
      raise SynthesisFailure(failures.CONVERSATION_CONSTRUCT_FAILED, f"{type(e).__name__}: {e}") from e
    log.append(StageEvent("accept", True, new.id))
    return new
