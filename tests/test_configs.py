"""Every config file loads and validates; each arm keeps its defining fields; bad configs fail naming the field."""
import glob
import importlib
import os
import sys

import numpy as np
import pytest

from configs import arms, base, scales
from rods_jax import config_validation

ARM_NAMES = ("rods", "static", "env_augment", "random_seed", "no_retire", "static_pool", "dynamic_sampling", "offline",
             "rods_posterior")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(arm, scale="lab"):
  return importlib.import_module(f"configs.{arm}").get_config(scale)


def test_every_arm_has_a_file_and_an_entry():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(_REPO, "configs", "*.py"))}
  assert set(ARM_NAMES) == set(arms.ARMS)
  assert set(ARM_NAMES) <= files


def test_every_config_file_loads_and_validates(monkeypatch):
  """Nothing unvalidated hides in configs/: each file is a helper, a config (get_config) or a sweep (get_sweep)."""
  from launch import sweep
  monkeypatch.chdir(_REPO)
  for path in sorted(glob.glob(os.path.join("configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "arms", "scales"):
      continue
    module = importlib.import_module(f"configs.{name}")
    if hasattr(module, "get_sweep"):
      assert sweep.plan(path, "/tmp/unused", [], 8), path
    else:
      config_validation.validate(module.get_config(), 8)


@pytest.mark.parametrize("arm", ARM_NAMES)
def test_arm_loads_and_validates(arm):
  config = _load(arm)
  assert config.arm == arm
  for num_devices in (1, 2, 8):
    config_validation.validate(config, num_devices)
  for dotted, value in arms.ARMS[arm].items():
    section, field = dotted.split(".")
    assert config[section][field] == value
  # Apart from the arm's fields, nothing drifts from base (arms are comparable).
  ref = base.get_config()
  arms.apply_arm(ref, arm)
  if arm == "offline":
    ref.sft.steps = config.sft.steps
  assert config.to_dict() == ref.to_dict()


def test_arms_mean_what_the_paper_says():
  c = {arm: _load(arm) for arm in ARM_NAMES}
  assert c["rods"].rods.synthesis and c["rods"].rods.seed_selection == "boundary" and c["rods"].rods.retirement
  assert not c["static"].rods.synthesis and not c["static"].rods.dynamic_sampling
  assert c["dynamic_sampling"].rods.dynamic_sampling and not c["dynamic_sampling"].rods.synthesis
  assert c["random_seed"].rods.seed_selection == "uniform" and c["random_seed"].rods.synthesis
  assert not c["no_retire"].rods.retirement
  assert not c["static_pool"].rods.dynamic
  assert c["env_augment"].env.error_hints and c["env_augment"].rods.seed_selection == "uniform"
  assert c["offline"].env.seed_split == "offline" and c["offline"].sft.steps > 0
  assert not any(c[a].env.error_hints for a in ARM_NAMES if a != "env_augment")


@pytest.mark.parametrize("arm", [a for a in ARM_NAMES if a != "offline"])
def test_paper_scale_validates_on_a_slice(arm):
  config = _load(arm, "paper")
  assert config.model.preset == "qwen3_4b" and config.env.name == "bfcl"
  assert config.rollout.tasks_per_step * config.rollout.k == 512
  for num_devices in (8, 16, 32):
    config_validation.validate(config, num_devices)


def test_paper_scale_offline_is_refused_with_the_field():
  with pytest.raises(ValueError, match=r"config\.env\.seed_split='offline' is not one of \['train'\]"):
    config_validation.validate(_load("offline", "paper"), 16)
  with pytest.raises(ValueError, match="scale 'huge'"):
    scales.apply_scale(base.get_config(), "huge")


def _set(dotted, value):
  def mutate(c):
    section, field = dotted.split(".")
    c[section][field] = value
  return mutate


def _add(dotted, value):
  def mutate(c):
    section, field = dotted.split(".")
    with c.unlocked():
      setattr(c[section], field, value)
  return mutate


def _add_top(name, value):
  def mutate(c):
    setattr(c, name, value)
  return mutate


def _set_many(**fields):
  def mutate(c):
    for dotted, value in fields.items():
      _set(dotted.replace("__", "."), value)(c)
  return mutate


BAD = [
    (lambda c: setattr(c.grpo, "temperature", 0.7), 1, "grpo.temperature"),
    (lambda c: setattr(c, "arm", "grpo_plus"), 8, r"config\.arm='grpo_plus' is not one of"),
    (_set("mesh.data", 3), 8, r"config\.mesh\.data=3 x config\.mesh\.tensor=1 = 3 does not divide the 8 devices"),
    (_set_many(mesh__data=2, mesh__fsdp=2, mesh__tensor=1), 8, r"config\.mesh\.data=2 x config\.mesh\.fsdp=2 .* != 8"),
    (_set("mesh.tensor", -1), 8, r"config\.mesh\.tensor=-1 must be a positive int"),
    (_set("mesh.fsdp", 0), 8, r"config\.mesh\.fsdp=0 must be"),
    (_set_many(rollout__tasks_per_step=3, rollout__k=5, grpo__micro_batch=15), 2,
     r"config\.rollout\.tasks_per_step=3 x config\.rollout\.k=5 = 15 rows is not divisible by data x fsdp = 2"),
    (_set("grpo.micro_batch", 48), 1, r"config\.grpo\.micro_batch=48 does not divide the 64 rows per update"),
    (_set_many(grpo__micro_batch=4, mesh__fsdp=8), 8,
     r"config\.grpo\.micro_batch=4 gives micro-batches of 4 rows, not divisible by data x fsdp = 8"),
    (_set("grpo.updates_per_batch", 3), 1, r"config\.grpo\.updates_per_batch=3 does not divide the 64 rows"),
    (_set("rods.alpha_low", 0.9), 1, r"config\.rods\.alpha_low=0\.9 must be < config\.rods\.alpha_high=0\.85"),
    (_set("rods.alpha_high", 0.2), 1, r"config\.rods\.alpha_low=0\.2 must be < config\.rods\.alpha_high=0\.2"),
    (_set("rollout.k", 1), 1, r"config\.rollout\.k=1 must be >= 2"),
    (_set("rods.beta", 0.0), 1, r"config\.rods\.beta=0\.0 must lie in \(0, 1\]"),
    (_set("rods.beta", 1.5), 1, r"config\.rods\.beta=1\.5 must lie in \(0, 1\]"),
    (_set("rods.p_max", -1), 1, r"config\.rods\.p_max=-1 must be >= 0"),
    (_set("rollout.cache_capacity", 300), 1,
     r"config\.rollout\.cache_capacity=300 must be >= config\.rollout\.max_trajectory_tokens=320"),
    (_set("model.preset", "gpt5"), 1, r"config\.model\.preset='gpt5' is not one of"),
    (_set("grpo.advantage", "ppo"), 1, r"config\.grpo\.advantage='ppo' is not one of"),
    (_set("grpo.aggregation", "sum"), 1, r"config\.grpo\.aggregation='sum' is not one of"),
    (_set("synthesis.backend", "gpt"), 1, r"config\.synthesis\.backend='gpt' is not one of"),
    (_set("env.name", "webshop"), 1, r"config\.env\.name='webshop' is not one of"),
    (_set("rods.seed_selection", "hardest"), 1, r"config\.rods\.seed_selection='hardest' is not one of"),
    (_set("model.dtype", "float16"), 1, r"config\.model\.dtype='float16' is not one of"),
    (_add("rods.pmax", 200), 1, r"config\.rods\.pmax is not a known field.*did you mean config\.rods\.p_max\?"),
    (_add_top("optimizer", 1), 1, r"config\.optimizer is not a known field"),
    (_add("grpo.kl_coeff", 0.1), 1, r"config\.grpo\.kl_coeff is not a known field.*config\.grpo\.kl_coef"),
    (_set("rods.synthesis", False), 1, r"config\.rods\.synthesis=False contradicts config\.arm='rods'"),
    (_set("env.error_hints", True), 1, r"config\.env\.error_hints=True contradicts config\.arm='rods'"),
    (_set("synthesis.backend", "openai"), 1, r"config\.synthesis\.endpoint='' must be set"),
    (_set("model.preset", "qwen3_4b"), 1, r"config\.model\.tokenizer_dir='' must be set"),
    (_set("env.seed_split", "train"), 1, r"config\.env\.seed_split='train' is not one of \['offline', 'seeds'\]"),
    (_set("rollout.top_p", 0.0), 1, r"config\.rollout\.top_p=0\.0 must lie in \(0, 1\]"),
    (_set("optim.lr", 0.0), 1, r"config\.optim\.lr=0\.0 must be > 0"),
    (_set("rods.retire_high", 0.8), 1, r"config\.rods\.retire_high=0\.8 must be >= config\.rods\.alpha_high"),
    (_set("train.total_trajectories", 10), 1, r"config\.train\.total_trajectories=10 is less than one step"),
    (_set("rollout.cohorts", 0), 1, r"config\.rollout\.cohorts=0 must be >= 1"),
    (_set("rollout.cohorts", 2), 8, r"config\.rollout\.cohorts=2 > 1 needs one device, not 8"),
]


@pytest.mark.parametrize("mutate,num_devices,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_config_names_the_field(mutate, num_devices, message):
  config = _load("rods")
  # Pin the fields the messages quote, so base.py may change its defaults.
  _set_many(rollout__tasks_per_step=8, rollout__k=8, grpo__micro_batch=64, grpo__updates_per_batch=1,
            rods__alpha_low=0.2, rods__alpha_high=0.85, rods__retire_high=0.95, rollout__max_trajectory_tokens=320,
            rollout__cache_capacity=384, rollout__max_tokens_per_message=48, mesh__data=1, mesh__fsdp=-1,
            mesh__tensor=1, train__total_trajectories=25_600)(config)
  config_validation.validate(config, num_devices)
  mutate(config)
  with pytest.raises(ValueError, match=message):
    config_validation.validate(config, num_devices)


def test_type_mismatch_and_missing_field():
  from ml_collections import ConfigDict
  d = _load("static").to_dict()
  d["rods"]["p_max"] = 200.0  # a float where base has an int
  with pytest.raises(ValueError, match=r"config\.rods\.p_max=200\.0 has type float; configs/base\.py has int"):
    config_validation.validate(ConfigDict(d), 1)
  d = _load("static").to_dict()
  d["rods"]["synthesis"] = 0  # an int where base has a bool
  with pytest.raises(ValueError, match=r"config\.rods\.synthesis=0 has type int"):
    config_validation.validate(ConfigDict(d), 1)
  d = _load("static").to_dict()
  del d["grpo"]["kl_coef"]
  with pytest.raises(ValueError, match=r"config\.grpo\.kl_coef is missing"):
    config_validation.validate(ConfigDict(d), 1)
  d = _load("static").to_dict()
  d["optim"]["lr"] = 1  # an int where base has a float is fine
  config_validation.validate(ConfigDict(d), 1)


def test_resolve_mesh():
  c = base.get_config()
  assert config_validation.resolve_mesh(c.mesh, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
  c.mesh.data, c.mesh.tensor = 2, 2
  assert config_validation.resolve_mesh(c.mesh, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  c.mesh.fsdp = 1
  with pytest.raises(ValueError, match=r"!= 8 devices"):
    config_validation.resolve_mesh(c.mesh, 8)


# ---------------------------------------------------------------------------------------------- launch entry points
def _parse(module, argv):
  """Parses ``argv`` with the entry point's own flags into a fresh FlagValues (as `python -m` would).

  Config-file entry points also get ``argv`` at definition: config_flags reads --config.* overrides from it."""
  from absl import flags
  fv = flags.FlagValues()
  argv = ["prog", *argv]
  if module.__name__ == "launch.sweep":
    module.define_flags(fv)
  else:
    module.define_flags(fv, argv)
  fv(argv)
  return fv


def test_train_flags_override_validate_and_report_resume(tmp_path, capsys):
  import jax
  import ml_collections

  from launch import train
  from rods_jax import checkpoint
  cfg_path = os.path.join(_REPO, "configs", "rods.py")
  fv = _parse(train, [f"--config={cfg_path}", "--config.rods.p_max=200", "--config.rollout.k=4",
                      f"--workdir={tmp_path}", "--validate_only"])
  assert fv.config.rods.p_max == 200 and fv.config.rollout.k == 4 and fv.config.arm == "rods"
  assert train.run(fv) is None
  assert "p_max: 200" in capsys.readouterr().out
  assert fv.distributed == "env" and fv.num_processes == 0  # distributed flags come with every entry point
  assert train.prepare(fv.config, str(tmp_path)) is None
  # A checkpoint in the workdir: the run will resume from it.
  ckpt_cfg = ml_collections.ConfigDict({"every_steps": 1, "keep": 1, "async_save": False})
  with checkpoint.CheckpointManager(tmp_path / train.CHECKPOINT_SUBDIR, ckpt_cfg) as manager:
    manager.save(checkpoint.TrainState(12, {"w": jax.numpy.ones(3)}, {}, None, jax.random.key(0)))
  assert train.prepare(fv.config, str(tmp_path)) == 12
  # Scale argument after ':' and a contradictory override that validation names.
  fv = _parse(train, [f"--config={cfg_path}:paper", f"--workdir={tmp_path}", "--validate_only"])
  assert fv.config.model.preset == "qwen3_4b"
  fv = _parse(train, [f"--config={cfg_path}", "--config.rods.synthesis=False", f"--workdir={tmp_path}",
                      "--validate_only"])
  with pytest.raises(ValueError, match=r"config\.rods\.synthesis=False contradicts config\.arm='rods'"):
    train.run(fv)


def test_train_flags_reject_unknown_field(tmp_path):
  from absl import flags

  from launch import train
  with pytest.raises((flags.Error, AttributeError, KeyError), match="pmax"):
    _parse(train, [f"--config={os.path.join(_REPO, 'configs', 'rods.py')}", "--config.rods.pmax=3",
                   f"--workdir={tmp_path}"])


def test_distributed_resolve():
  from launch import distributed as d
  assert d.resolve("env", "", 0, -1, {}) == d.DistributedSpec("single")
  assert d.resolve("off", "h:1", 2, 0, {}) == d.DistributedSpec("single")
  assert d.resolve("auto", "", 0, -1, {}) == d.DistributedSpec("auto")
  assert d.resolve("env", "10.0.0.1:1234", 4, 3, {}) == d.DistributedSpec("explicit", "10.0.0.1:1234", 4, 3)
  env = {d.ENV_COORDINATOR: "h:9", d.ENV_NUM_PROCESSES: "2", d.ENV_PROCESS_ID: "1"}
  assert d.resolve("env", "", 0, -1, env) == d.DistributedSpec("explicit", "h:9", 2, 1)
  assert d.resolve("env", "", 0, 0, env).process_id == 0  # a flag wins over the environment
  with pytest.raises(ValueError, match="needs --coordinator_address"):
    d.resolve("env", "", 2, 0, {})
  with pytest.raises(ValueError, match="must be host:port"):
    d.resolve("env", "localhost", 2, 0, {})
  with pytest.raises(ValueError, match=r"--process_id=2 .* must lie in \[0, 2\)"):
    d.resolve("env", "h:1", 2, 2, {})
  with pytest.raises(ValueError, match="must be integers"):
    d.resolve("env", "", 0, -1, {d.ENV_COORDINATOR: "h:1", d.ENV_NUM_PROCESSES: "two"})


def test_sweep_expands_validates_and_prints(tmp_path, capsys, monkeypatch):
  from launch import sweep
  monkeypatch.chdir(_REPO)
  runs = sweep.expand({"rods.p_max": [0, 50], "rollout.k": [4, 8]})
  assert [r.name for r in runs] == ["p_max=0,k=4", "p_max=0,k=8", "p_max=50,k=4", "p_max=50,k=8"]
  assert runs[3].overrides == {"rods.p_max": 50, "rollout.k": 8}
  fv = _parse(sweep, ["--sweep=configs/sweep_pmax.py", f"--workdir={tmp_path}", "--print_only",
                      "--extra_args=--distributed=auto", "--num_devices=8"])
  commands = sweep.run(fv)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(commands) == len(lines) == 4
  assert lines[2] == (f"python -m launch.train --config=configs/rods.py --config.rods.p_max=200 "
                      f"--workdir={tmp_path}/p_max=200 --distributed=auto")
  named = sweep.expand_sweep({"config": ["configs/rods.py", "configs/static.py:paper"], "grid": {"rods.p_max": [0, 1]}})
  assert [(r.name, r.config) for r in named] == [
      ("rods,p_max=0", "configs/rods.py"), ("rods,p_max=1", "configs/rods.py"),
      ("static_paper,p_max=0", "configs/static.py:paper"), ("static_paper,p_max=1", "configs/static.py:paper")]
  # A sweep over config files: one run per arm, named after the file.
  arms_commands = sweep.plan("configs/sweep_arms.py", str(tmp_path), ["--config.rollout.k=4"], 8)
  assert len(arms_commands) == len(ARM_NAMES)
  by_arm = {os.path.basename(c[-2].split("=", 1)[1]): c for c in arms_commands}
  assert set(by_arm) == set(ARM_NAMES)
  assert by_arm["offline"][3:] == ["--config=configs/offline.py", f"--workdir={tmp_path}/offline", "--config.rollout.k=4"]
  bad = tmp_path / "bad_sweep.py"
  bad.write_text('def get_sweep():\n  return {"config": "configs/rods.py", "grid": {"rods.alpha_low": [0.1, 0.9]}}\n')
  with pytest.raises(ValueError, match=r"sweep run alpha_low=0\.9: config\.rods\.alpha_low=0\.9 must be <"):
    sweep.plan(str(bad), str(tmp_path), [], None)
  bad.write_text('def get_sweep():\n  return {"config": "configs/rods.py", "grid": {"rods.pmax": [1]}}\n')
  with pytest.raises(ValueError, match=r"config\.rods\.pmax is not a known field"):
    sweep.plan(str(bad), str(tmp_path), [], None)
  bad.write_text('def get_sweep():\n  return {"config": "configs/rods.py", "grid": {"rods.p_max": 5}}\n')
  with pytest.raises(ValueError, match=r"grid\['rods.p_max'\] must be a non-empty list"):
    sweep.plan(str(bad), str(tmp_path), [], None)


def test_sweep_runs_locally_one_after_another(tmp_path, monkeypatch):
  """The local path for real: one grid point, launched as `python -m launch.train ... --validate_only`."""
  from launch import sweep
  monkeypatch.chdir(_REPO)
  path = tmp_path / "one.py"
  path.write_text('def get_sweep():\n  return {"config": "configs/static.py", "grid": {"rods.p_max": [7]}}\n')
  fv = _parse(sweep, [f"--sweep={path}", f"--workdir={tmp_path}", "--extra_args=--validate_only",
                      "--extra_args=--distributed=off"])
  (cmd,) = sweep.run(fv)
  assert cmd[0] == sys.executable and cmd[-2:] == ["--validate_only", "--distributed=off"]


def test_tpu_vm_script_is_valid_bash():
  import subprocess
  script = os.path.join(_REPO, "launch", "tpu_vm.sh")
  assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
  assert os.access(script, os.X_OK)
  out = subprocess.run(["bash", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
  assert out.returncode != 0 and "TPU_NAME" in out.stderr  # refuses to run without its settings
  out = subprocess.run(["bash", script, "bogus"], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "TPU_NAME": "t", "ZONE": "z", "PROJECT": "p"})
  assert out.returncode == 2 and "usage:" in out.stderr


def test_synthesize_serves_a_directory_exchange(tmp_path):
  from launch import synthesize
  from rods_jax import envs
  from rods_jax.rods.queues import DirExchange, Request
  config = _load("rods")
  with pytest.raises(ValueError, match=r"config\.synthesis\.exchange_dir='' must name"):
    synthesize.serve(config, 0, 1, 1.0)
  config.synthesis.exchange_dir = str(tmp_path / "exchange")
  seeds = envs.make_env(config.env.name, config.env).load_tasks(config.env.seed_split)
  trainer_side = DirExchange(config.synthesis.exchange_dir, 8, 8)
  for i, seed in enumerate(seeds[:2]):
    trainer_side.put_request(Request(i, seed.to_record(), "synthesize"))
  assert synthesize.serve(config, worker_id=0, max_requests=2, idle_timeout_s=30.0) == 2
  outcomes = trainer_side.drain_results()
  assert sorted(o.seed_id for o in outcomes) == sorted(s.id for s in seeds[:2])
  assert any(o.record is not None for o in outcomes)  # template synthesis on toolworld succeeds on most seeds
  static = _load("static")
  static.synthesis.exchange_dir = str(tmp_path / "exchange")
  with pytest.raises(ValueError, match=r"config\.rods\.synthesis=False"):
    synthesize.serve(static, 0, 1, 1.0)


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
  """A lab tokenizer from 16 seed conversations (the full build takes ~15 s of CPU)."""
  from rods_jax import envs
  from rods_jax.models import lab_tokenizer
  config = base.get_config()
  env = envs.make_env(config.env.name, config.env)
  corpus = [lab_tokenizer.conversation_text(t, env) for t in env.load_tasks(config.env.seed_split)[:16]]
  out = str(tmp_path_factory.mktemp("tokenizer"))
  lab_tokenizer.build_lab_tokenizer(out, corpus, vocab_size=400)
  return out


def test_every_arm_builds_its_trainer(tmp_path, small_tokenizer):
  """rods_jax.rods.loop.build on each arm's own config (only the tokenizer, inline synthesis and no warm-up changed)."""
  from rods_jax.rl.learner import GRPOLearner
  from rods_jax.rods import loop
  for arm in ARM_NAMES:
    config = _load(arm)
    config.model.tokenizer_dir = small_tokenizer
    config.synthesis.process = False  # no worker process to spawn in a test
    config.sft.steps = 0  # offline's supervised stage is the loop's to test
    config.logging.tensorboard = False
    parts = loop.build(config, str(tmp_path / arm))
    try:
      assert isinstance(parts.learner, GRPOLearner) and parts.config.arm == arm
      assert parts.restored_step is None and parts.state.step == 0
      assert (parts.curriculum.client is not None) == arms.ARMS[arm]["rods.synthesis"]
      assert parts.curriculum.dynamic == config.rods.dynamic
      assert len(parts.curriculum.buffer) == (16_000 if arm == "offline" else 400)
      assert len(parts.test_tasks) == config.train.eval_max_tasks
    finally:
      parts.close()


def test_evaluate_loads_the_runs_latest_params(tmp_path, small_tokenizer):
  """launch.evaluate picks the run's newest checkpoint and restores only the policy parameters from it."""
  import jax
  from flax import nnx

  from launch import evaluate
  from rods_jax import checkpoint
  fv = _parse(evaluate, [f"--config={os.path.join(_REPO, 'configs', 'static.py')}", f"--workdir={tmp_path}",
                         "--k=4", "--max_tasks=3"])
  config = evaluate.apply_flags(fv.config, fv.k, fv.max_tasks)
  assert config.train.eval_k == 4 and config.train.eval_max_tasks == 3
  with pytest.raises(ValueError, match="--k=-1"):
    evaluate.apply_flags(config, -1, 0)
  config.model.tokenizer_dir = small_tokenizer
  init = evaluate.load_policy(config, str(tmp_path))
  assert init.source == "init"
  # The run saved two checkpoints; the latest holds distinct weights.
  later = jax.tree.map(lambda x: x + 1.0 if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, init.params)
  with checkpoint.CheckpointManager(tmp_path / "checkpoints", config.checkpoint) as manager:
    manager.save(checkpoint.TrainState(5, init.params, {}, None, jax.random.key(0)), force=True)
    manager.save(checkpoint.TrainState(10, later, {}, None, jax.random.key(0)), force=True)
  got = evaluate.load_policy(config, str(tmp_path))
  assert got.source == "step10"
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(later)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert isinstance(nnx.merge(got.graphdef, got.params), nnx.Module)
  assert evaluate.load_policy(config, str(tmp_path), step=5).source == "step5"
  with pytest.raises(FileNotFoundError, match="step 7"):
    evaluate.load_policy(config, str(tmp_path), step=7)


def test_every_config_field_has_a_reader():
  """A field nothing reads is an option silently ignored (logging.progress_bar and env.rerandomize_worlds once were):
  each leaf name of the base config must be read somewhere in rods_jax/ or launch/ (attribute or string key),
  validation aside."""
  import re
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sources = []
  for top in ("rods_jax", "launch"):
    for d, _, files in os.walk(os.path.join(root, top)):
      sources += [open(os.path.join(d, f), encoding="utf-8").read() for f in files
                  if f.endswith(".py") and f != "config_validation.py"]
  text = "\n".join(sources)

  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, prefix + k + ".")
      else:
        yield prefix + k

  unread = [key for key in leaves(base.get_config().to_dict())
            if not re.search(r"(\.|[\"'])" + re.escape(key.split(".")[-1]) + r"\b", text)]
  assert not unread, f"config fields nothing reads: {unread}"


def test_eval_split_selects_the_held_out_tasks_of_training_and_is_checked(tmp_path, small_tokenizer):
  """train.eval_split=validation: the curves are measured on the validation split (round-robin over categories);
  bfcl has no such split, and a misspelt split fails at validation, before anything is built."""
  from launch import evaluate
  from rods_jax import config_validation
  from rods_jax.rods import loop
  config = _load("static")
  config.model.tokenizer_dir, config.sft.steps, config.logging.tensorboard = small_tokenizer, 0, False
  config.train.eval_split, config.train.eval_max_tasks = "validation", 8
  parts = loop.build(config, str(tmp_path / "run"))
  try:
    assert [t.lineage.origin for t in parts.test_tasks] == ["validation"] * 8
    assert sorted(t.category for t in parts.test_tasks) == sorted(2 * ["base", "miss_func", "miss_param",
                                                                        "long_context"])
  finally:
    parts.close()
  config.train.eval_split = "valid"
  with pytest.raises(ValueError, match=r"config.train.eval_split='valid' is not one of"):
    config_validation.validate(config, 1)
  bfcl = _load("static", "paper")
  bfcl.train.eval_split = "validation"
  with pytest.raises(ValueError, match=r"config.train.eval_split='validation'"):
    config_validation.validate(bfcl, 16)
  with pytest.raises(ValueError, match=r"--split='validation' is not a held-out split of bfcl"):
    evaluate.evaluate(bfcl, str(tmp_path), split="validation")
