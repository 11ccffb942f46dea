"""The launchers' common entry point: a user error in the config ends the program with one line on stderr (the
field, the bad value, what is allowed) and exit status 2, before any work and without a traceback."""
import sys

from absl import app

from rods_jax import config_validation


def run(main) -> None:
  """``app.run(main)``, with ``--config.*`` field names checked first and ConfigError as a one-line exit."""
  try:
    config_validation.check_override_names(sys.argv)
    app.run(main)
  except config_validation.ConfigError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
