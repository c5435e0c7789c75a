"""verl plugin (entry point group `verl.plugins`): importing this module runs `entropy_rl.integrations.verl.install()`.

verl imports every `verl.plugins` entry point when it is itself imported (verl/__init__.py), in every process,
and only logs a failure at debug level; so a failure is also logged here as a warning, then raised.
"""

import logging

from entropy_rl.integrations.verl import install

try:
    INSTALLED = install()
except Exception as e:  # noqa: BLE001 - verl swallows plugin errors; say it where the user sees it
    logging.getLogger(__name__).warning("entropy-rl's verl plugin did not install: %s", e)
    raise
