"""Base config shared by every experiment arm.

Every field a module reads lives here, grouped by the module that reads it. Each module receives only its own
sub-config (``config.model``, ``config.grpo``, ...) so nothing reads global state. Arms override fields in their own
files (``configs/rods.py``, ``configs/static.py``, ...) and ``rods_jax.config_validation.validate`` checks the result.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.arm = "rods"  # rods | static | env_augment | random_seed | no_retire | static_pool | dynamic_sampling | offline
  #                | rods_posterior
  c.seed = 0

  # --- model (rods_jax/models) ---
  c.model = ml_collections.ConfigDict()
  c.model.preset = "lab_tiny"  # lab_tiny | qwen3_0_6b | qwen3_4b | qwen2_5_7b | llama3_1_8b
  c.model.checkpoint_dir = ""  # a local HF directory (config.json + safetensors + tokenizer); "" = from scratch
  c.model.tokenizer_dir = ""  # "" with preset lab_tiny = build the lab tokenizer into <workdir>/tokenizer
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  c.model.remat = False  # recompute each decoder block in the backward pass (large models / long sequences)
  c.model.attn_chunk = 0  # >0: attention in query blocks of this size (bounded memory for long sequences)

  # --- mesh (rods_jax/sharding.py) ---
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1  # -1 = all remaining devices
  c.mesh.tensor = 1

  # --- environment (rods_jax/envs) ---
  c.env = ml_collections.ConfigDict()
  c.env.name = "toolworld"  # toolworld | bfcl
  c.env.seed_split = "seeds"  # toolworld: seeds | offline ; bfcl: train
  c.env.test_split = "test"
  c.env.max_string_len = 200
  c.env.max_calls_per_message = 4
  c.env.max_message_chars = 2048
  c.env.error_hints = False  # EnvTuning-style actionable hints in tool error messages (env_augment arm)
  c.env.max_list_items = 5  # parser: items per list argument (docs/METHOD.md §5 critique rule)
  c.env.max_depth = 3  # parser: nesting of lists/objects inside one argument value
  c.env.cache_dir = ""  # toolworld split cache; "" = $RODS_JAX_CACHE or ~/.cache/rods_jax
  # bfcl (rods_jax/envs/bfcl): live-parser limits sized to BFCL's ground truth (its longest string argument is 6,813
  # chars, in long_context), so every GT call is expressible in one message; max_calls_per_message is shared.
  c.env.bfcl_max_message_chars = 16384
  c.env.bfcl_max_string_len = 8192
  c.env.bfcl_max_list_items = 64
  c.env.bfcl_max_depth = 4

  # --- rollout (rods_jax/rollout) ---
  c.rollout = ml_collections.ConfigDict()
  c.rollout.tasks_per_step = 8  # B
  c.rollout.k = 8  # rollouts per task (paper: 16)
  c.rollout.temperature = 1.0
  c.rollout.top_p = 1.0
  c.rollout.top_k = 0  # 0 = off
  c.rollout.max_steps_per_turn = 5
  c.rollout.max_tokens_per_message = 48
  c.rollout.max_trajectory_tokens = 512  # token budget per trajectory; past it the row is truncated (lab: 0.3 % of gold > 512)
  c.rollout.cache_capacity = 576  # KV slots per row (>= max_trajectory_tokens + one prefill chunk)
  c.rollout.kv_bucket = 64  # attention length is rounded up to a multiple of this
  c.rollout.prefill_bucket = 32  # incremental-prefill width is rounded up to a multiple of this (few compilations)
  c.rollout.stop_strings = ("<|im_end|>",)  # single-token stops besides EOS; add "</tool_call>" to stop after a call
  # a decode call returns to the host once this fraction of its active rows has stopped (the rest resume next call):
  # < 1 trades more (cheap) host rounds for fewer idle decode steps; 1 = every row finishes its message first.
  # 0.5 was the fastest of 1 / 0.75 / 0.5 / 0.3 on the lab benchmark (2-core CPU, B*K = 64; compare any value with
  # `launch.benchmark --min_stopped_frac=F`, timed beside the default: docs/benchmarks/cpu_lab.json has F = 1).
  c.rollout.min_stopped_frac = 0.5
  # decode / incremental prefill run only the rows that have work (finished or waiting rows are left out), padded to
  # a power of two >= this; 0 = always run all B*K rows. Late in a rollout most rows are done: this is where it pays.
  c.rollout.compact_min_rows = 8
  # the B tasks run as this many cohorts in host threads (each its own KV cache and decode/prefill calls), so one
  # cohort's host work (tool calls, rendering) overlaps the others' device work; results equal running the cohorts
  # one after another with keys fold_in(key, c). One device only: concurrent programs with collectives can deadlock.
  c.rollout.cohorts = 1
  # CPU runs: keep freed host memory mapped for reuse (glibc mallopt, applied before the backend starts), so decode
  # calls and train steps do not page-fault their temporaries in anew (rods_jax/host_memory.py). The paper scale
  # (accelerators) turns it off; so does a jax_platforms that does not start with cpu.
  c.rollout.cpu_keep_freed_memory = True

  # --- GRPO (rods_jax/rl) ---
  c.grpo = ml_collections.ConfigDict()
  c.grpo.advantage = "grpo"  # grpo | rloo | drgrpo
  c.grpo.loss = "ppo_clip"
  c.grpo.clip_low = 0.2
  c.grpo.clip_high = 0.28
  c.grpo.clip_ratio_c = 0.0  # dual-clip bound for negative advantages (verl / EnvTuning use 10.0); 0 = off
  c.grpo.kl_coef = 0.01
  c.grpo.kl_estimator = "low_var_kl"  # low_var_kl (k3) | k1 | k2
  c.grpo.aggregation = "seq-mean-token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum
  c.grpo.eps = 1e-6
  c.grpo.std_ddof = 1  # grpo advantage: group std with K - ddof (1 = unbiased, as verl / Tunix; 0 = population)
  c.grpo.entropy_coef = 0.0  # entropy bonus c_H (EnvTuning used 0.001); 0 = metric only
  c.grpo.temperature = 1.0  # trainer log-probs use log softmax(z/τ): keep equal to rollout.temperature
  c.grpo.zero_std_tol = 1e-6
  c.grpo.micro_batch = 64  # rows per gradient-accumulation micro-batch
  c.grpo.logit_chunk = 0  # >0: LM head + log-softmax this many positions at a time, rematerialised (big vocabularies)
  c.grpo.updates_per_batch = 1  # optimizer steps per rollout batch (1 = fully on-policy)
  # padded: every row at the batch's width, one jitted program (the original layout); bucketed: rows sorted by length
  # into micro-batches cut to multiples of bucket_tokens (rods_jax/rl/buckets.py; same objective and gradient). On
  # the 2-core CPU lab at 256 rows the bucketed update ran slower than the padded one although it computed fewer
  # positions (launch.benchmark --suite=grpo_step; docs/results.md): padded stays the default until that is understood.
  c.grpo.layout = "padded"
  c.grpo.bucket_tokens = 64

  # --- optimizer ---
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0

  # --- supervised warm-up (rods_jax/rl/sft.py) ---
  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 600  # lab warm-up from scratch; 0 = skip (real checkpoints: the paper scale sets 0)
  c.sft.batch_size = 32
  c.sft.lr = 1e-3
  c.sft.warmup_steps = 100
  c.sft.weight_decay = 0.01
  c.sft.seq_len = 512
  c.sft.eval_every = 50
  c.sft.select_by_zones = True  # keep the checkpoint with the largest seed boundary fraction (docs/METHOD.md §10)
  c.sft.init_checkpoint = ""  # start GRPO from this warm-up checkpoint directory instead of running SFT
  c.sft.grad_clip = 1.0  # global-norm clip of the warm-up (lab prototype: 1.0)
  c.sft.rerandomize = True  # toolworld: re-draw each seed's world every time it is sampled (anti-memorisation, §5)
  c.sft.eval_tasks = 64  # seeds (canonical worlds) rolled out K times at each zone evaluation
  # Also export every evaluated step to <out>_step<N> (HF layout): the selection keeps the least depleted
  # checkpoint, and a study wanting a more depleted pool can pick a later one without re-running the warm-up.
  c.sft.keep_evaluated = False
  c.sft.logit_chunk = 0  # as grpo.logit_chunk

  # --- RODS (rods_jax/rods) ---
  c.rods = ml_collections.ConfigDict()
  c.rods.alpha_low = 0.20  # hard < alpha_low <= boundary
  c.rods.alpha_high = 0.85  # boundary <= alpha_high < mastered
  c.rods.retire_high = 0.95
  c.rods.retire_low = 0.20
  c.rods.burn_in_low = 0.20
  c.rods.beta = 0.20  # max injected per epoch as a fraction of the active pool
  c.rods.p_max = 400
  c.rods.seeds_per_step = 8  # M
  c.rods.seeds_per_category = 2  # M_tau
  c.rods.cooldown_steps = 13  # c
  c.rods.stale_epochs = 3  # W
  c.rods.seed_selection = "boundary"  # boundary | uniform (random_seed arm)
  c.rods.synthesis = True
  c.rods.retirement = True
  c.rods.dynamic = True  # False: static_pool (synthesize once before training)
  c.rods.static_pool_size = 400
  c.rods.dynamic_sampling = False  # DAPO-style zero-variance group filtering with refill
  c.rods.dynamic_sampling_max_rounds = 4
  c.rods.static_pool_max_passes = 3  # static_pool: passes over the seeds (warm-up policy) collecting boundary seeds
  c.rods.static_pool_timeout_s = 600.0  # static_pool: how long training may wait for its one-off pool
  c.rods.seed_limit = 0  # use only the first N tasks of the seed split (0 = all): quick runs and tests
  # Boundary detector: "step" = the paper (zone, φ, burn-in, retirement from one step's r̄); "posterior" = a Beta
  # posterior per task across steps (rods_jax/rods/posterior_table.py; the rods_posterior arm).
  c.rods.detector = "step"
  c.rods.posterior_decay = 0.95  # evidence kept per training step (half-life 13.5 steps: a lab epoch is ~8-20)
  c.rods.posterior_prior_strength = 2.0  # pseudo-rollouts of a task's prior (seeds: Beta(1, 1); variants: parent)
  c.rods.posterior_confidence = 0.9  # burn-in / retirement need this posterior mass past the threshold

  # --- synthesis (rods_jax/rods/synthesis) ---
  c.synthesis = ml_collections.ConfigDict()
  c.synthesis.backend = "template"  # template | sampler | openai
  c.synthesis.endpoint = ""  # openai backend: base URL of an OpenAI-compatible server
  c.synthesis.model_name = ""
  c.synthesis.max_attempts = 3
  c.synthesis.max_refinements = 1
  c.synthesis.augment = True  # make miss_func / miss_param variants when the seed is of that category
  c.synthesis.profile_tolerance = 0.0  # 0 = exact structural match
  c.synthesis.request_queue_size = 64
  c.synthesis.result_queue_size = 256
  c.synthesis.process = True  # run the synthesizer in a separate process
  c.synthesis.exchange_dir = ""  # multi-host: directory-based exchange instead of multiprocessing queues
  # -1: stage whatever the worker has finished (timing-dependent); L >= 0: the outcomes of step s's requests are staged
  # at step s + L exactly (waiting if the worker is behind), so a run, and a resumed run, is reproducible.
  c.synthesis.lag_steps = -1
  c.synthesis.planner = "auto"  # auto (toolworld: its generator; bfcl: rename) | generator | rename
  c.synthesis.value_catalog_split = "train"  # rename planner: swap city/symbol/option values for ones seen in this
  #   split's ground truth at the same (function, argument) ("" = off; toolworld ignores it)
  c.synthesis.max_string_len = 200  # critique gate: string arguments <= this many chars (paper App. G)
  c.synthesis.max_list_len = 5  # critique gate: list arguments <= this many items
  c.synthesis.max_query_chars = 1200  # a rewritten user query longer than this is rejected
  c.synthesis.temperature = 1.0  # LLM backends (paper App. J: 1.0 / top_p 0.7)
  c.synthesis.top_p = 0.7
  c.synthesis.max_new_tokens = 512  # per LLM completion
  c.synthesis.timeout_s = 60.0  # openai backend: per HTTP request
  c.synthesis.http_retries = 2  # openai backend: retries on connection errors / 429 / 5xx
  c.synthesis.api_key_env = ""  # openai backend: env var holding a bearer token ("" = no Authorization header)
  c.synthesis.checkpoint_dir = ""  # sampler backend: HF checkpoint of the generator ("" = caller passes a model)

  # --- training schedule ---
  c.train = ml_collections.ConfigDict()
  c.train.total_trajectories = 25_600  # budget; x-axis of every curve
  c.train.eval_every_trajectories = 6_400
  c.train.eval_k = 1  # greedy held-out evaluation
  c.train.eval_max_tasks = 400
  # roll out step t+1 (with the policy before update t, one update stale) while update t runs; the loss then uses
  # the sampler's log-probs as the behaviour policy (PPO ratio and clip act on the staleness)
  c.train.overlap = False
  # Split of the held-out evaluations during training. "test" keeps every committed curve's protocol and is the one
  # split bfcl has; a study that makes choices on the curves sets "validation" (toolworld), so that the test split is
  # touched only by final evaluations (launch.evaluate, launch.study).
  c.train.eval_split = "test"

  # --- checkpoints and logging ---
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.logging = ml_collections.ConfigDict()
  c.logging.every_steps = 1
  c.logging.tensorboard = True
  c.logging.progress_bar = True
  c.logging.wandb = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no account)
  c.logging.wandb_project = "rods_jax"
  return c
