# HISTORICAL STEP SERVER -- NOT THE PRODUCT (see benchmarks/steps.py).
#
# The product's service, built by tcpdemo.tap.makeService from the same
# options as `twistd tcpdemo`, with its protocol class swapped for one step
# of BENCHMARKS.md:
#
#   TCPDEMO_STEP=step0 TCPDEMO_STEP_ARGS="--port tcp:0:interface=127.0.0.1" \
#       twistd -n --pidfile= -y benchmarks/step_app.tac
import os
import shlex
import sys

from twisted.application.service import Application

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.steps import STEPS  # noqa: E402
from tcpdemo.tap import Options, makeService  # noqa: E402

_step = os.environ.get("TCPDEMO_STEP", "")
if _step in STEPS:
    _protocol = STEPS[_step]
else:
    raise SystemExit(
        f"TCPDEMO_STEP must be one of {', '.join(STEPS)}, not {_step!r}"
    )
_options = Options()
_options.parseOptions(shlex.split(os.environ.get("TCPDEMO_STEP_ARGS", "")))
_service = makeService(_options)
_service.factory.protocol = _protocol
# A step that counted otherwise than the product's tally brings its own.
_tally = getattr(_protocol, "stepTally", None)
if _tally is not None:
    _service.factory.tally = _tally(_service.factory.metrics)
application = Application(f"tcpdemo-{_step}")
_service.setServiceParent(application)
