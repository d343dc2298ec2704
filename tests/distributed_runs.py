"""Several runs inside one `accelerate launch` (for tests/test_distributed.py): each process calls
hupeft.experiment.run for every (config, out) of the JSON file given, as `hupeft run` does in a
launch, so the process group starts once for all of them. A run's "env" sets test hooks
(HUPEFT_INJECT_NAN) for that run only; the runs go one after another in one thread.

    accelerate launch --config_file src/hupeft/accelerate_configs/ddp.yaml --num_processes 2 \\
        tests/distributed_runs.py runs.json
"""

import json
import os
import sys

from hupeft.experiment import run

for spec in json.loads(open(sys.argv[1]).read()):
    hooks = spec.get("env", {})
    os.environ.update(hooks)
    try:
        run(spec["config"], spec["out"], progress=False)
    finally:
        for name in hooks:
            del os.environ[name]
