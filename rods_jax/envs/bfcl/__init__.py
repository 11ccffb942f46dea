"""BFCL multi-turn (the real benchmark) from the pinned ``bfcl-eval`` wheel, with safe dispatch and official parity.

Public API (see docs/ARCHITECTURE.md, BFCL section):
  make(env_cfg) -> BfclEnv                      the ``bfcl`` Environment (rods_jax.envs.make_env("bfcl", cfg.env))
  load_tasks(category, split) -> list[Task]     100 tasks per category per split ("train" | "test")
  score(task, calls_per_turn) -> EpisodeResult  offline BFCL scoring (per-turn state/response, R_P, success)
  execute_calls(task_like, calls_per_turn) -> Execution   run calls on fresh backends (synthesizer helper)
  function_docs(cls), tool_schemas(classes), tools_at(task, turn), mutating_functions()
"""
from rods_jax.envs.bfcl.data import (BFCL_VERSION, MISS_FUNC_MESSAGE, MULTI_TURN_CLASSES, function_docs,
                                     function_names, load_all_tasks, openai_tool, tool_schemas)
from rods_jax.envs.bfcl.env import (BfclEnv, BfclEpisode, BfclWorld, load_tasks, make, offered_names, released_at,
                                    score, tools_at)
from rods_jax.envs.bfcl.execution import Execution, execute_calls, mutating_functions, to_jsonable
from rods_jax.envs.bfcl.split import SPLIT_SEED, split_indices
