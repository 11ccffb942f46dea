"""Serves a checkpoint over the OpenAI chat-completions API, with tool calling, as vLLM does for tool-calling models.

    python -m launch.openai_server --checkpoint_dir=/ckpt/qwen3-4b --port=8000
    # then: config.synthesis.backend="openai", config.synthesis.endpoint="http://127.0.0.1:8000/v1"
    # or any OpenAI client: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")

``POST /v1/chat/completions`` (``tools``, ``tool_calls`` in and out, tool messages, ``n``, ``temperature``, ``top_p``,
``max_tokens``, ``stop``, ``seed``, ``stream``) and ``GET /v1/models``, on starlette + uvicorn; concurrent requests
are batched into this project's sampler (``rods_jax.serving``). ``--temperature`` / ``--top_p`` are the defaults of
requests that omit them; ``--max_new_tokens`` is the default and the largest ``max_tokens``; a prompt may hold
``--capacity`` - max_tokens tokens (longer: 400). ``build_server`` is importable (tests, notebooks).
"""
from __future__ import annotations

from rods_jax.rollout.render import ChatRenderer
from rods_jax.serving import app as app_lib
from rods_jax.serving.generator import GeneratorConfig, SamplerGenerator
from rods_jax.serving.protocol import ProtocolConfig
from rods_jax.serving.scheduler import BatchScheduler, SchedulerConfig


def build_server(model, model_cfg, tokenizer, server_cfg: app_lib.ServerConfig, scheduler_cfg: SchedulerConfig,
                 generator_cfg: GeneratorConfig, seed: int):
  """(app, scheduler, generator) serving ``model`` with ``tokenizer``'s chat template; close the scheduler when done."""
  _check_rows(server_cfg, scheduler_cfg)
  generator = SamplerGenerator(model, model_cfg, tokenizer, generator_cfg, seed)
  scheduler = BatchScheduler(generator, scheduler_cfg)
  return app_lib.build_app(ChatRenderer(tokenizer), scheduler, server_cfg), scheduler, generator


def _check_rows(server_cfg: app_lib.ServerConfig, scheduler_cfg: SchedulerConfig) -> None:
  if server_cfg.protocol.max_n > scheduler_cfg.max_batch_rows:
    raise ValueError(f"max_n={server_cfg.protocol.max_n} must be <= max_batch_rows={scheduler_cfg.max_batch_rows}")


def configs_from_flags(f) -> tuple[app_lib.ServerConfig, SchedulerConfig, GeneratorConfig]:
  protocol_cfg = ProtocolConfig(max_body_bytes=f.max_body_bytes, max_n=f.max_n, max_tokens=f.max_new_tokens,
                                temperature=f.temperature, top_p=f.top_p)
  server_cfg = app_lib.ServerConfig(model_name=f.model_name, capacity=f.capacity, read_timeout_s=f.read_timeout_s,
                                    protocol=protocol_cfg)
  scheduler_cfg = SchedulerConfig(max_queue=f.max_queue, batch_window_s=f.batch_window_ms / 1000.0,
                                  max_batch_rows=f.max_batch_rows)
  _check_rows(server_cfg, scheduler_cfg)
  return server_cfg, scheduler_cfg, GeneratorConfig(segment_tokens=f.segment_tokens)


def main(argv):
  del argv
  import uvicorn  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from rods_jax.models import hf_loader  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f.checkpoint_dir:
    raise SystemExit("--checkpoint_dir is required (a local HF directory: config.json, safetensors, tokenizer)")
  try:
    server_cfg, scheduler_cfg, generator_cfg = configs_from_flags(f)
  except ValueError as e:
    raise SystemExit(f"openai_server: {e}") from None
  try:
    model, model_cfg = hf_loader.load_hf_checkpoint(f.checkpoint_dir)
    tokenizer = hf_loader.load_tokenizer(f.checkpoint_dir)
  except (ValueError, OSError) as e:
    raise SystemExit(f"openai_server: cannot load --checkpoint_dir={f.checkpoint_dir}: {e}") from None
  app, scheduler, _ = build_server(model, model_cfg, tokenizer, server_cfg, scheduler_cfg, generator_cfg, f.seed)
  config = app_lib.uvicorn_config(app, f.host, f.port, f.max_connections)
  sock = config.bind_socket()  # bound here so that --port=0 can print the port it got
  host, port = sock.getsockname()[:2]
  print(f"serving {f.checkpoint_dir} as {f.model_name!r} at http://{host}:{port}/v1", flush=True)
  try:
    uvicorn.Server(config).run(sockets=[sock])
  finally:
    scheduler.close()


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint_dir", "", "local HF checkpoint directory")
  flags.DEFINE_string("host", "127.0.0.1", "bind address")
  flags.DEFINE_integer("port", 8000, "port (0 = any free port)")
  flags.DEFINE_string("model_name", "rods-jax", "model id reported by /v1/models")
  flags.DEFINE_integer("max_new_tokens", 512, "default and largest max_tokens of a request")
  flags.DEFINE_integer("capacity", 4096, "KV slots per choice: prompt + max_tokens must fit (longer prompts: 400)")
  flags.DEFINE_float("temperature", 1.0, "sampling temperature of requests that omit it (0 = greedy)")
  flags.DEFINE_float("top_p", 0.7, "nucleus mass of requests that omit it")
  flags.DEFINE_integer("seed", 0, "PRNG seed of requests without a seed")
  flags.DEFINE_integer("max_n", 8, "choices per request at most")
  flags.DEFINE_integer("max_queue", 256, "requests waiting at most; more get 503")
  flags.DEFINE_float("batch_window_ms", 5.0, "how long a request waits for others to batch with")
  flags.DEFINE_integer("max_batch_rows", 16, "choices decoded together at most (KV memory: rows x capacity)")
  flags.DEFINE_integer("segment_tokens", 16, "tokens decoded between stop-string checks / streamed chunks")
  flags.DEFINE_float("read_timeout_s", 30.0, "seconds a client has to send its headers (else closed) and its body (else 408)")
  flags.DEFINE_integer("max_body_bytes", 2 << 20, "largest request body (else 413)")
  flags.DEFINE_integer("max_connections", 1024, "open connections at most (uvicorn answers 503 beyond)")
  app.run(main)
