"""Run `reconcile` (the service) with other listener limits, so tests and the
bench can use short timeouts and see them end within seconds.

LISTENER_LIMITS holds a JSON object of reconciler.service.limits.ListenerLimits fields
(e.g. `{"head_timeout_s": 1, "body_timeout_s": 2}`); the rest keep their defaults.
"""

import functools
import json
import os
import sys

import reconciler.service.run as run_module
from reconciler.cli import main
from reconciler.service.limits import ListenerLimits

LIMITS = ListenerLimits(**json.loads(os.environ.get("LISTENER_LIMITS", "{}")))
# The cli imports serve() from the module when it starts the service: it gets this one.
run_module.serve = functools.partial(run_module.serve, limits=LIMITS)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
