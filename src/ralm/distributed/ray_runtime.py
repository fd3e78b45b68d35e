"""Ray plumbing shared by the serving backend and the training forms of re-clustering.

* :func:`ensure_ray` connects to a cluster or starts a local runtime; :func:`ray_module`
  imports Ray with a one-line error when it is not installed.
* :class:`ModelSpec`: the stage-2 weights as they travel to the workers (``ray.put`` once);
  :func:`fetch` is a worker's ``ray.get`` with a small per-process cache of rebuilt
  objects (the model, the embedder, an index), keyed by the object id.
* :func:`remote` wraps a task body with ``ray.remote`` on first use; :func:`task_options`
  (retries on exceptions and dead workers, one CPU); :func:`gather` returns every task's
  result in order, cancelling the others on a failure or timeout (:class:`RayTaskFailed`).

Test hook: ``RALM_RAY_FAULT`` in the driver's environment makes tasks fail
(:func:`inject_fault`): ``once:DIR`` raises in the first attempt of every chunk (markers in
DIR), ``crash-once:DIR`` kills the worker process in the first attempt, ``always`` raises
in every attempt, ``sleep:SECONDS`` makes every task hang that long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ralm.errors import ConfigError, RalmError
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel

log = logging.getLogger(__name__)

RAY_FAULT_ENV = "RALM_RAY_FAULT"
DEFAULT_ITEMS_PER_TASK = 2048
_WORKER_CACHE_SIZE = 4


class RayTaskFailed(RalmError):
    """A Ray re-clustering task failed after its retries (the cycle publishes nothing)."""


class InjectedFault(RuntimeError):
    """Raised by the ``RALM_RAY_FAULT`` test hook."""


def ray_module() -> Any:
    """The ``ray`` module (ConfigError naming the extra when Ray is not installed)."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is in the dev extra
        raise ConfigError("recluster backend 'ray' needs Ray: pip install 'ralm[ray]'") from e
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray (``address``) or start a local runtime, unless already connected.

    Returns True when this call started it (the caller then owns ``ray.shutdown``).
    """
    ray = ray_module()
    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    log.info("ray runtime: %s", ray.cluster_resources())
    return True


@dataclass(frozen=True)
class ModelSpec:
    """The stage-2 weights as they travel to the workers (put once in the object store).

    Args:
        config: ``LookalikeConfig.model_dump()``.
        state: the state dict as numpy arrays (zero-copy out of the object store).
    """

    config: dict[str, Any]
    state: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: LookalikeModel) -> ModelSpec:
        state = {n: t.detach().cpu().numpy().copy() for n, t in model.state_dict().items()}
        return cls(config=model.config.model_dump(mode="json"), state=state)

    def build(self) -> LookalikeModel:
        """The model these weights describe (eval mode)."""
        model = LookalikeModel(LookalikeConfig(**self.config))
        model.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in self.state.items()})
        return model.eval()


_cache: OrderedDict[str, Any] = OrderedDict()  # per worker process: object id -> value


def fetch(ref: Any) -> Any:
    """``ray.get(ref)``; objects that cost work to rebuild (the model, the embedder, an
    index) are kept per worker process, keyed by the object id. Arrays are not kept: they
    are read zero-copy from the object store on every call, so nothing stays pinned."""
    key = ref.hex()
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    value = ray_module().get(ref)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, ModelSpec):
        value = value.build()
    _cache[key] = value
    while len(_cache) > _WORKER_CACHE_SIZE:
        _cache.popitem(last=False)
    return value


def inject_fault(fault: str | None, key: str) -> None:
    """The ``RALM_RAY_FAULT`` hook of task ``key`` (see the module docstring)."""
    if not fault:
        return
    if fault == "always":
        raise InjectedFault(f"injected failure of task {key}")
    mode, _, folder = fault.partition(":")
    if mode == "sleep":  # a task that hangs (the cycle's timeout must end it)
        time.sleep(float(folder))
        return
    if mode not in ("once", "crash-once") or not folder:
        raise ValueError(f"{RAY_FAULT_ENV}: expected always, once:DIR, crash-once:DIR or sleep:S")
    try:  # the first attempt of this task creates the marker and fails
        fd = os.open(Path(folder) / f"{key}.failed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if mode == "crash-once":
        os._exit(1)
    raise InjectedFault(f"injected first-attempt failure of task {key}")


_remote: dict[Callable[..., Any], Any] = {}


def remote(body: Callable[..., Any]) -> Any:
    """``ray.remote(body)``, made once per task body."""
    if body not in _remote:
        _remote[body] = ray_module().remote(body)
    return _remote[body]


def gather(refs: list[Any], timeout_s: float | None, what: str) -> list[Any]:
    """Results of every task, in order; on a failure or timeout the others are cancelled."""
    ray = ray_module()
    try:
        return list(ray.get(refs, timeout=timeout_s))
    except Exception as e:
        for r in refs:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(r)
        raise RayTaskFailed(f"{what}: a Ray task failed ({type(e).__name__}: {e})") from e


def task_options(max_retries: int) -> dict[str, Any]:
    """Ray options of a re-clustering task: retried on exceptions too, one CPU."""
    return {"max_retries": max_retries, "retry_exceptions": True, "num_cpus": 1}
