"""The serving scorer's post-matmul chain as one compiled loop (``kernels/chain.c``).

torch runs the chain after the scorer's matmul (sigmoid, exp2, the weight products, the
batched Gram product, the reduction over k) as one pass per step over each tile; at
batch 32 those passes cost ~35 % of the matmul (docs/SERVING.md, "Fused chain"). The C
kernel does the whole chain per item in registers and L1, vectorised over the users, in
~17 % of the matmul. No maintained library fuses this chain: it is ~120 lines of C
compiled at first use with the host's C compiler (``$CC``, else ``cc``) at ``-O3
-march=native`` into a cache folder (``$RALM_KERNEL_DIR``, else the user cache folder's
``ralm/kernels``), keyed by the source, the compiler, its flags and the CPU, and loaded
with ctypes (a ctypes call releases the GIL, so the parts of a tile run on several
threads at once).

``RALM_SCORER_KERNEL`` chooses: ``auto`` (default: the kernel when it builds, else the
torch chain with one warning), ``off`` (always the torch chain) or ``on`` (the kernel or a
:class:`~ralm.errors.ConfigError` saying why not). Both chains compute the same formulas
(tests/lookalike/test_scorer_kernel.py checks them against each other and against the
naive per-(user, item) loop).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ralm.errors import ConfigError

log = logging.getLogger(__name__)

MODE_ENV = "RALM_SCORER_KERNEL"
DIR_ENV = "RALM_KERNEL_DIR"
MODES = ("auto", "off", "on")
ABI = 3  # ralm_chain_abi() of the source this module calls
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
SOURCES = ("chain.c", "chain_body.h")
COMPILE_TIMEOUT_S = 120

_P = ctypes.c_void_p
_L = ctypes.c_int64
_ARGTYPES = [_P, _L, _L, _L, _L, _P, _P, _P, _L, _P, ctypes.c_float]
_F = ctypes.c_float
# stage 2's training form (ralm.lookalike.train_kernel): forward and backward
_TRAIN_FWD = [_P, _L, _L, _L, _L, _P, _P, _P, _F, _P, _L, _P]
_TRAIN_BWD = [_P, _L, _L, _L, _L, _P, _P, _P, _F, _P, _L, _P, _P, _P]


@dataclass(frozen=True)
class ChainKernel:
    """The loaded kernel: one function per lane width (``lanes`` = the widest here), and
    per width the training forward and backward (``train``)."""

    path: Path
    lanes: int
    fns: dict[int, Callable[..., None]]
    train: dict[int, tuple[Callable[..., None], Callable[..., None]]]

    def lanes_for(self, n_b: int) -> int:
        """The lane width for B users (the caller pads B to a multiple of it with zero
        columns): 16 where the host has it and padding to 16 adds no column over 8."""
        if 16 in self.fns and -(-n_b // 16) * 16 == -(-n_b // 8) * 8:
            return 16
        return 8


_lock = threading.Lock()
_loaded: ChainKernel | None = None
_error: str | None = None  # why the last build failed (auto: warned once)


def mode() -> str:
    """``RALM_SCORER_KERNEL`` (auto / off / on), checked."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{MODE_ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$RALM_KERNEL_DIR``, else the user cache)."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ralm")) / "kernels"


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler found (set CC, or install gcc)")
    return cc


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and its CPU flags."""
    sig = platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return sig + platform.processor()
    for line in text.splitlines():
        if line.startswith(("flags", "Features", "model name")):
            sig += line
    return sig


def _build(directory: Path) -> Path:
    """Compile the kernel into ``directory`` unless a build with the same key is there."""
    cc = _compiler()
    pkg = resources.files("ralm.lookalike") / "kernels"
    sources = {name: (pkg / name).read_bytes() for name in SOURCES}
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        raise OSError(f"C compiler {cc!r} does not run: {e}") from e
    key = hashlib.sha256()
    for name in SOURCES:
        key.update(sources[name])
    key.update("\0".join([version, *FLAGS, _cpu_signature()]).encode())
    target = directory / f"chain-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
        for name, data in sources.items():
            (Path(tmp) / name).write_bytes(data)
        out = Path(tmp) / "chain.so"
        cmd = [cc, *FLAGS, "-o", str(out), str(Path(tmp) / "chain.c"), "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise OSError(f"{' '.join(cmd)}: {e}") from e
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: a concurrent builder writes the same bytes
    return target


def _open(path: Path) -> ChainKernel:
    lib = ctypes.CDLL(str(path))
    if lib.ralm_chain_abi() != ABI:
        raise OSError(f"{path}: kernel ABI {lib.ralm_chain_abi()} != {ABI}")
    lanes = int(lib.ralm_chain_lanes())
    fns: dict[int, Callable[..., None]] = {}
    train: dict[int, tuple[Callable[..., None], Callable[..., None]]] = {}
    for width in (8, 16) if lanes == 16 else (8,):
        found = []
        for suffix, argtypes in (
            ("", _ARGTYPES),
            ("_train_fwd", _TRAIN_FWD),
            ("_train_bwd", _TRAIN_BWD),
        ):
            fn = getattr(lib, f"ralm_chain_v{width}{suffix}")
            fn.argtypes = argtypes
            fn.restype = None
            found.append(fn)
        fns[width] = found[0]
        train[width] = (found[1], found[2])
    return ChainKernel(path=path, lanes=lanes, fns=fns, train=train)


def _open_or_rebuild(directory: Path) -> ChainKernel:
    """Open the cached build; one that does not load (truncated, foreign) is rebuilt."""
    path = _build(directory)
    try:
        return _open(path)
    except OSError as e:
        log.warning("rebuilding the scorer kernel: the cached %s does not load (%s)", path, e)
        path.unlink(missing_ok=True)
        return _open(_build(directory))


def load() -> ChainKernel | None:
    """The kernel, built on first use; None when switched off or (``auto``) unavailable.

    Raises:
        ConfigError: ``RALM_SCORER_KERNEL=on`` and the kernel cannot be built or loaded.
    """
    global _loaded, _error
    want = mode()
    if want == "off":
        return None
    if _loaded is None and _error is None:
        with _lock:
            if _loaded is None and _error is None:
                try:
                    _loaded = _open_or_rebuild(cache_dir())
                    log.debug("scorer kernel %s (%d lanes)", _loaded.path, _loaded.lanes)
                except (OSError, AttributeError) as e:
                    _error = str(e)
                    if want == "auto":
                        log.warning(
                            "the fused scorer kernel is unavailable (%s); scoring uses "
                            "the torch chain (same scores, slower; %s=off silences this)",
                            _error,
                            MODE_ENV,
                        )
    if _loaded is None and want == "on":
        raise ConfigError(f"{MODE_ENV}=on but the fused scorer kernel is unavailable: {_error}")
    return _loaded


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def pool(n: int) -> ThreadPoolExecutor:
    """A shared pool of ``n`` threads for the kernel's parts of a call (a ctypes call
    releases the GIL, so the parts run at once)."""
    with _POOLS_LOCK:
        got = _POOLS.get(n)
        if got is None:
            got = _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="ralm-chain")
        return got


def reset() -> None:
    """Forget the loaded kernel and any build error (tests; a changed CC or cache dir)."""
    global _loaded, _error
    with _lock:
        _loaded, _error = None, None
