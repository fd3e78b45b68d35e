"""The crash-once retry scenario in a process of its own: ``python ray_crash_driver.py TMP``.

Every Ray task's worker process dies once (``os._exit`` inside the task, the
``crash-once`` fault of ``RAY_FAULT_ENV``); the job's retries must still build the index
the local backend builds. It starts and stops its own local Ray runtime (2 CPUs), compares
the two indexes (``_assert_same`` of test_ray_index.py) and prints one JSON line: the
version published, the tasks of the Ray cycle and the fault markers they left (one per
failed first attempt). Run from :func:`test_ray_index.test_crashed_workers_are_retried`:
a worker killed under the test process's own driver twice made that pytest process exit
with status 1 a few tests later, so the kill happens here, where it can only end this
process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ray
from test_ray_index import _assert_same, _job, _model, _world

from ralm.distributed.ray_index import RAY_FAULT_ENV, RayBackend
from ralm.serve.recluster import LocalBackend


def main(tmp: Path) -> None:
    _, _, clicks = _world()
    markers = tmp / "markers"
    markers.mkdir(parents=True)
    model = _model()
    local, s1 = _job(tmp, "local", model, LocalBackend(), clicks)
    backend = RayBackend(items_per_task=13, max_retries=1)
    remote, s2 = _job(tmp, "ray", model, backend, clicks)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        local.run_full()
        os.environ[RAY_FAULT_ENV] = f"crash-once:{markers}"
        rep = remote.run_full()
        _assert_same(local.holder.current(), remote.holder.current())
        out = {
            "version": rep.version,
            "tasks": backend.last_tasks,
            "markers": len(list(markers.iterdir())),
        }
    finally:
        s1.close()
        s2.close()
        ray.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
