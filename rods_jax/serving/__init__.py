"""OpenAI-compatible chat-completions serving over this project's sampler.

* ``protocol``: request validation (size, JSON depth, types) and OpenAI messages -> chat-template conversation.
* ``responses``: tool calls parsed from the output (``rods_jax.envs.parsing``), completion / chunk / error bodies.
* ``generator``: a batch of requests -> completions with ``rods_jax.rollout.sampler`` (decoded in segments).
* ``scheduler``: a bounded queue that collects concurrent requests for a few ms and runs them as one batch.
* ``app``: the ASGI app (starlette) tying them together; ``serve_in_thread`` runs it with uvicorn.
"""
