"""Asynchronous synthesizer machinery with injected trivial synthesize functions (the process, the queues, the
directory exchange, restart after a kill, drop-oldest overflow, and no accepted task lost)."""
import json
import os
import signal
import threading
import time
import types

import ml_collections
import numpy as np
import pytest

from rods_jax.envs.task import Lineage, Task
from rods_jax.rods.buffer import BufferConfig, ReplayBuffer
from rods_jax.rods.queues import DirExchange, LocalRequestQueue, Request
from rods_jax.rods.synth_process import SynthClient, process_request, run_worker


def make_task(tid, category="base"):
  return Task(id=tid, env="toolworld", category=category, classes=("Files",), initial_state={"Files": {"x": 1}},
              turns=("a", "b"), gt_calls=(({"name": "ls", "arguments": {}},), ()))


def _variant(seed_task, rng, delay=0.0):
  if delay:
    time.sleep(delay)
  if seed_task.id.startswith("bad"):
    return types.SimpleNamespace(task=None, failure="vm_exec_failed")
  if seed_task.id.startswith("boom"):
    raise RuntimeError("hostile seed")
  new_id = f"{seed_task.id}-v{int(rng.integers(1 << 40))}"
  return types.SimpleNamespace(task=seed_task.replace(id=new_id, lineage=Lineage("synth", seed_task.id, 1, 0)),
                               failure=None)


def echo_factory():
  return _variant


def slow_factory():
  return lambda t, rng: _variant(t, rng, delay=0.05)


def syn_cfg(**kw):
  c = dict(process=True, exchange_dir="", request_queue_size=64, result_queue_size=16, lag_steps=-1)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def poll_until(client, n, timeout=60.0):
  outs, t0 = [], time.monotonic()
  while len(outs) < n and time.monotonic() - t0 < timeout:
    outs += client.poll().outcomes
    time.sleep(0.02)
  return outs


def test_process_request_success_failure_and_exception_never_raise():
  ok = process_request(_variant, Request(3, make_task("s1").to_record(), "synthesize"), seed=0)
  assert ok.failure == "" and Task.from_record(ok.record).lineage.parent_id == "s1" and ok.seed_id == "s1"
  again = process_request(_variant, Request(3, make_task("s1").to_record(), "synthesize"), seed=0)
  assert Task.from_record(again.record).id == Task.from_record(ok.record).id  # per-request RNG is deterministic
  bad = process_request(_variant, Request(4, make_task("bad1").to_record(), "synthesize"), seed=0)
  assert bad.record is None and bad.failure == "vm_exec_failed"
  boom = process_request(_variant, Request(5, make_task("boom").to_record(), "synthesize"), seed=0)
  assert boom.record is None and boom.failure == "pipeline_exception:RuntimeError"
  garbage = process_request(_variant, Request(6, np.frombuffer(b"{not json", np.uint8).copy(), "synthesize"), 0)
  assert garbage.record is None and garbage.failure.startswith("pipeline_exception")


def test_local_request_queue_drops_oldest():
  q = LocalRequestQueue(3)
  drops = [q.put(Request(i, np.zeros(1, np.uint8), "synthesize")) for i in range(5)]
  assert drops == [0, 0, 0, 1, 1] and q.dropped == 2
  assert [q.pop().request_id for _ in range(3)] == [2, 3, 4] and q.pop() is None
  with pytest.raises(ValueError, match="request_queue_size"):
    LocalRequestQueue(0)


def test_process_worker_serves_requests_and_overflow_drops_oldest():
  with SynthClient(echo_factory, syn_cfg(request_queue_size=8), seed=1) as client:
    seeds = [make_task(f"s{i}") for i in range(20)]
    assert client.submit(seeds) == 12  # nothing consumed yet: the 12 oldest requests are dropped
    outs = poll_until(client, 8)
    assert sorted(o.seed_id for o in outs) == sorted(f"s{i}" for i in range(12, 20))
    assert all(o.failure == "" for o in outs)
    assert client.stats.dropped == 12 and client.stats.restarts == 0


def test_killed_worker_is_restarted_and_no_accepted_task_is_lost(tmp_path):
  log = str(tmp_path / "cand.jsonl")
  buf = ReplayBuffer([make_task(f"s{i}") for i in range(4)],
                     BufferConfig(p_max=100, beta=1.0, burn_in_low=0.2, retire_high=0.95, retire_low=0.2,
                                  stale_epochs=3, retirement=True), log)
  client = SynthClient(slow_factory, syn_cfg(), seed=2)
  try:
    client.submit([make_task(f"s{i % 4}") for i in range(30)])
    staged = []
    t0 = time.monotonic()
    while len(staged) < 4 and time.monotonic() - t0 < 60:
      for o in client.poll().outcomes:
        if buf.stage(Task.from_record(o.record)):
          staged.append(o.request_id)
      time.sleep(0.01)
    old_pid = client.pid
    os.kill(old_pid, signal.SIGKILL)
    while client.alive():
      time.sleep(0.01)
    t0 = time.monotonic()
    while client.stats.received < 24 and time.monotonic() - t0 < 60:  # requests in flight at the kill are retried
      for o in client.poll().outcomes:
        if buf.stage(Task.from_record(o.record)):
          staged.append(o.request_id)
      time.sleep(0.01)
    assert client.stats.restarts == 1 and client.pid != old_pid and client.alive()
    assert len(staged) >= 24 and len(set(staged)) == len(staged)
  finally:
    client.close()
  # Every accepted task is in the log, in order, and a fresh buffer recovers all of them.
  logged = [json.loads(x)["id"] for x in open(log)]
  assert logged == buf.staged_ids()
  fresh = ReplayBuffer([make_task(f"s{i}") for i in range(4)], buf.config, log)
  empty_state = ReplayBuffer([make_task(f"s{i}") for i in range(4)], buf.config, str(tmp_path / "x.jsonl"))
  state = empty_state.state_dict()
  state["log_offset"] = 0
  assert fresh.load_state_dict(state) == logged


def test_inline_mode_runs_in_the_trainer():
  client = SynthClient(echo_factory, syn_cfg(process=False), seed=0)
  client.submit([make_task("s0"), make_task("bad0")])
  p = client.poll()
  assert [o.failure for o in p.outcomes] == ["", "vm_exec_failed"] and p.would_wait_s >= 0.0
  assert client.depths()["synth/request_depth"] == 0


def test_directory_exchange_bounds_and_worker(tmp_path):
  ex = DirExchange(str(tmp_path / "x"), request_limit=3, result_limit=2)
  for i in range(5):
    ex.put_request(Request(i, make_task(f"s{i}").to_record(), "synthesize"))
  assert ex.dropped == 2 and ex.depths() == (3, 0)
  stop = threading.Event()
  served = []
  th = threading.Thread(target=lambda: served.append(run_worker(ex, echo_factory, 0, stop)), daemon=True)
  th.start()
  t0 = time.monotonic()
  while ex.depths() != (0, 2) and time.monotonic() - t0 < 10:
    time.sleep(0.02)
  time.sleep(0.3)
  assert ex.depths() == (0, 2)  # the full results/ folder makes the worker wait with s4's outcome in hand
  outs = ex.drain_results()
  assert [o.seed_id for o in outs] == ["s2", "s3"]
  t0 = time.monotonic()
  while ex.depths()[1] < 1 and time.monotonic() - t0 < 10:
    time.sleep(0.02)
  outs = ex.drain_results()
  stop.set()
  th.join(5)
  assert [o.seed_id for o in outs] == ["s4"] and served == [3]
  assert Task.from_record(outs[0].record).lineage.parent_id == "s4"
  assert os.listdir(tmp_path / "x" / "tmp") == []


def test_directory_exchange_client_with_local_worker(tmp_path):
  with SynthClient(echo_factory, syn_cfg(exchange_dir=str(tmp_path / "ex")), seed=3) as client:
    client.submit([make_task(f"s{i}") for i in range(4)] + [make_task("bad9")])
    outs = poll_until(client, 5)
  assert sorted(o.seed_id for o in outs) == ["bad9", "s0", "s1", "s2", "s3"]
  assert sum(o.record is None for o in outs) == 1


@pytest.mark.parametrize("mode,origin", [("synthesize", "synth"), ("perturb", "augment")])
def test_real_pipeline_through_the_client(mode, origin):
  from configs import base
  from rods_jax import envs
  from rods_jax.rods.synth_process import pipeline_factory
  config = base.get_config()
  seeds = envs.make_env("toolworld", config.env).load_tasks("seeds")[::97][:4]
  config.synthesis.process = False
  client = SynthClient(pipeline_factory(config, mode), config.synthesis, seed=0, mode=mode)
  client.submit(seeds)
  outs = client.poll().outcomes
  assert [o.seed_id for o in outs] == [s.id for s in seeds]
  tasks = [Task.from_record(o.record) for o in outs if o.record is not None]
  assert len(tasks) >= 3, [o.failure for o in outs]
  for t in tasks:
    assert t.lineage.origin == origin and t.lineage.parent_id in {s.id for s in seeds}
    assert t.id not in {s.id for s in seeds}


# ---------------------------------------------------------------------------------------------- lag and resume
def _step_seeds(step):
  return [make_task(f"s{step}-{j}") for j in range(3)] + [make_task(f"bad{step}")]


def _run_steps(client, steps, log):
  """One submit + poll per step; records what each poll returned (request id, seed, task id or failure)."""
  for step in steps:
    client.submit(_step_seeds(step) if step is not None else [])
    log.append([(o.request_id, o.seed_id, Task.from_record(o.record).id if o.record is not None else o.failure)
                for o in client.poll().outcomes])
  return log


def test_lag_steps_makes_arrival_independent_of_timing_and_mode():
  with SynthClient(slow_factory, syn_cfg(lag_steps=1), seed=4) as proc:
    via_process = _run_steps(proc, range(5), [])
  with SynthClient(echo_factory, syn_cfg(lag_steps=1, process=False), seed=4) as inline:
    via_inline = _run_steps(inline, range(5), [])
  assert via_process == via_inline
  assert via_process[0] == [] and [r[0] for r in via_process[1]] == [0, 1, 2, 3]  # step s returns step s-1's
  assert [r[1] for r in via_process[4]] == ["s3-0", "s3-1", "s3-2", "bad3"] and via_process[4][3][2] == "vm_exec_failed"


def _finish(client, lag, expected_total, log):
  """The outcomes still to come after the last step: L more polls (lag_steps = L), or poll until all arrived."""
  if lag >= 0:
    return _run_steps(client, [None] * (lag + 1), log)
  outs = poll_until(client, expected_total - sum(map(len, log)))
  return log + [[(o.request_id, o.seed_id, Task.from_record(o.record).id if o.record is not None else o.failure)
                 for o in outs]]


@pytest.mark.parametrize("lag", [1, -1])
def test_requests_in_flight_at_a_kill_are_resubmitted_on_resume(lag):
  cfg = syn_cfg(lag_steps=lag, request_queue_size=16)
  with SynthClient(slow_factory, cfg, seed=5) as client:
    uninterrupted = _finish(client, lag, 24, _run_steps(client, range(6), []))
  client = SynthClient(slow_factory, cfg, seed=5)
  first = _run_steps(client, range(3), [])
  state = json.loads(json.dumps(client.state_dict()))  # what the checkpoint holds, through JSON
  os.kill(client.pid, signal.SIGKILL)  # the trainer dies with requests waiting and in flight
  client.close()
  assert state["waiting"] or state["held"], state  # there was synthesis work in flight to lose
  with SynthClient(slow_factory, cfg, seed=5) as resumed:
    resumed.load_state_dict(state)
    log = _finish(resumed, lag, 24, _run_steps(resumed, range(3, 6), first))
  if lag >= 0:  # exactly the same outcomes at the same steps
    assert log == uninterrupted
  # every request of the run is answered exactly once, with the same outcome as in the uninterrupted run
  flat = lambda log: sorted(r for step in log for r in step)  # noqa: E731
  assert flat(log) == flat(uninterrupted) and len(flat(uninterrupted)) == 24


# ---------------------------------------------------------------------------------------------- no orphans
_TRAINER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_synth_process import make_task, slow_factory, syn_cfg
from rods_jax.rods.synth_process import SynthClient
if __name__ == "__main__":  # the spawned worker imports this file too
  client = SynthClient(slow_factory, syn_cfg(), seed=0)
  client.submit([make_task(f"s{{i}}") for i in range(60)])
  while not client.poll().outcomes:
    time.sleep(0.01)
  print("busy", flush=True)  # the worker is mid-synthesis from here on
  time.sleep(600)
"""


def _children(pid):
  kids = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        stat = open(f"/proc/{name}/stat").read()
      except OSError:
        continue
      if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
        kids.append(int(name))
  return kids


def _alive(pid):
  try:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
  except OSError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_a_killed_trainer_leaves_no_synthesizer_nor_resource_tracker_alive(tmp_path):
  import subprocess
  import sys
  script = tmp_path / "trainer.py"
  script.write_text(_TRAINER.format(tests=os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
  watchdog = threading.Timer(120, trainer.kill)  # a hung script fails the test instead of hanging it
  watchdog.start()
  kids = []
  try:
    assert trainer.stdout.readline().strip() == "busy"  # (a dead worker is restarted: this line does come)
    kids = _children(trainer.pid)
    assert len(kids) >= 2, kids  # the synthesizer and multiprocessing's resource tracker
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(10)
    deadline = time.monotonic() + 5.0
    while any(map(_alive, kids)) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not [k for k in kids if _alive(k)], "processes of the killed trainer still alive"
  finally:
    watchdog.cancel()
    trainer.kill()
    for k in [k for k in kids if _alive(k)]:  # only on failure: leave nothing behind
      os.kill(k, signal.SIGKILL)
