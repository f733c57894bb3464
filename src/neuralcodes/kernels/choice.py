"""``cpu_conv=auto``: each convolution's CPU kernel chosen by timing it on this machine.

Which kernel is faster depends on the CPU, not on its vendor: NNPACK's Winograd/FFT convolutions
beat oneDNN's direct ones on AVX2 CPUs and on Zen 4 (whose AVX-512 runs at AVX2's multiply-add
rate), lost to them on a Zen 5 (full-width AVX-512) and on an Intel Xeon with AVX-512 and AMX
(family 6 model 167: conv3-conv5 ~1.4-1.5x slower in NNPACK). So on first use for a (CPU model,
torch version, precision, train/inference, batch size, threads, layer shapes), :func:`choose`
times each eligible convolution with each kernel that applies (NNPACK only in fp32 on a CPU,
outside torch.compile) on its real input shape, forward + backward for training and forward only
for inference, in interleaved rounds within :data:`BUDGET_S`, and picks the faster kernel per
layer. The timings and the choice are kept in ``<cache dir>/kernels/cpu-<cpu>.json`` (written
atomically) and reused; a new torch version or another CPU model measures again.

The measurement is injectable: :func:`choose` takes a ``measure`` function, and the environment
variable :data:`TIMINGS_ENV` names a JSON timing table (``{"conv2": {"onednn": 1.2, "nnpack":
0.9}, "*": {...}}``, seconds per call) used instead of measuring and caching (the test suite sets
it, so tests never pay for a measurement).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralcodes.config import CPU_CONVS, KERNELS
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_json
from neuralcodes.kernels.cpu import cpu_vendor, native_bf16
from neuralcodes.kernels.nnpack import (
    NNPACK_MIN_BATCH,
    NnpackConv2d,
    eligible_layers,
    nnpack_applies,
    use_nnpack,
)

log = logging.getLogger(__name__)

#: Seconds one measurement may take at most (warm-up included); it happens once per machine
#: for each (precision, train/inference, batch size, threads, model shape).
BUDGET_S = 10.0
#: Interleaved timing rounds (each layer, each kernel, once per round), at least and at most; the
#: fastest of each kept, so that one preemption on a busy machine does not decide.
MIN_ROUNDS, MAX_ROUNDS = 2, 3
#: Environment variable naming a JSON timing table to use instead of measuring.
TIMINGS_ENV = "NEURALCODES_KERNEL_TIMINGS"
#: Bump when the cache file's layout changes.
CACHE_FORMAT = 1

#: layer name -> kernel -> seconds per call.
Timings = dict[str, dict[str, float]]
#: (model, layer candidates, batch, train, channels_last, budget) -> (timings, batch timed at).
Measure = Callable[[nn.Module, dict[str, list[str]], int, bool, bool, float],
                   tuple[Timings, int]]


@functools.cache
def cpu_identity() -> dict[str, Any]:
    """What identifies this CPU's kind for the kernel cache: vendor, family, model, stepping,
    model name (Linux /proc/cpuinfo), torch's CPU capability, native bf16 and AMX."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = info.get("flags", "").split()
    return {"vendor": cpu_vendor() or platform.machine(),
            "family": info.get("cpu family", ""), "model": info.get("model", ""),
            "stepping": info.get("stepping", ""),
            "model_name": info.get("model name", platform.processor()),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(), "amx": "amx_tile" in flags}


def cpu_label(cpu: dict[str, Any] | None = None) -> str:
    """``GenuineIntel family 6 model 167, AVX512, native bf16, AMX``: a CPU kind in words."""
    c = cpu or cpu_identity()
    return (f"{c['vendor']} family {c['family'] or '?'} model {c['model'] or '?'}, "
            f"{c['capability']}" + (", native bf16" if c["native_bf16"] else "")
            + (", AMX" if c["amx"] else ""))


def cache_file(cache_dir: Path) -> Path:
    """The timing cache of this CPU kind under ``cache_dir``."""
    c = cpu_identity()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{c['vendor']}-{c['family']}-{c['model']}").strip("-")
    digest = hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir / "kernels" / f"cpu-{slug}-{digest}.json"


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """The kernel of each eligible convolution of a model, and how it was decided."""

    setting: str  # train.cpu_conv: auto | nnpack | onednn
    how: str  # measured | cached | forced | table (TIMINGS_ENV) | one kernel applies
    mode: str  # train | inference
    precision: str
    batch: int
    layers: dict[str, str]  # layer -> kernel
    timings_ms: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    timed_batch: int | None = None  # the batch the timings were taken at (the batch, or less)
    seconds: float | None = None  # what the measurement took
    cache: str | None = None  # the cache file

    @property
    def nnpack(self) -> list[str]:
        """The layers that run in NNPACK."""
        return [name for name, k in self.layers.items() if k == "nnpack"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the CPU it applies to (for config.json and benchmark JSON)."""
        return dataclasses.asdict(self) | {"cpu": cpu_label(), "torch": torch.__version__}

    def describe(self) -> str:
        """One line: ``conv2 nnpack, conv3-5 onednn (cpu_conv=auto, measured: ...)``."""
        groups: dict[str, list[str]] = {}
        for name, kernel in self.layers.items():
            groups.setdefault(kernel, []).append(name)
        kernels = "; ".join(f"{', '.join(names)} in {'NNPACK' if k == 'nnpack' else 'oneDNN'}"
                            for k, names in groups.items()) or "no eligible convolution"
        how = self.how
        if self.how in ("measured", "cached"):
            how = (f"{self.how} at batch {self.timed_batch}" + (
                f" in {self.seconds:.1f} s" if self.how == "measured" and self.seconds else "")
                + f", {self.cache}")
        return f"{kernels} ({self.mode}, {self.precision}, batch {self.batch}; " \
               f"cpu_conv={self.setting}: {how})"


def candidates(model: nn.Module, device: torch.device, precision: str, compile: bool,
               setting: str) -> dict[str, list[str]]:
    """The kernels each eligible layer of ``model`` may run in under ``setting``."""
    if setting not in CPU_CONVS:
        raise NeuralCodesError(f"unknown cpu_conv '{setting}' (choose {', '.join(CPU_CONVS)})")
    applies = nnpack_applies(device, precision, compile)
    if setting == "nnpack" and applies and not torch.backends.nnpack.is_available():
        raise NeuralCodesError("cpu_conv nnpack: this build of torch has no NNPACK")
    nnpack = applies and torch.backends.nnpack.is_available()
    options = {"onednn": ["onednn"], "nnpack": ["nnpack"] if nnpack else ["onednn"],
               "auto": list(KERNELS) if nnpack else ["onednn"]}[setting]
    return {name: list(options) for name in eligible_layers(model)}


def choose(model: nn.Module, *, setting: str, device: torch.device, precision: str, batch: int,
           train: bool, compile: bool = False, channels_last: bool = True,
           cache_dir: Path | None = None, measure: Measure | None = None,
           budget_s: float = BUDGET_S) -> KernelChoice:
    """The kernel of each eligible convolution of ``model`` under ``train.cpu_conv`` ``setting``:
    forced, the only one that applies, from :data:`TIMINGS_ENV`'s table, from the cache, or
    measured now (``measure``, default :func:`measure_layers`) and cached in ``cache_dir``."""
    mode = "train" if train else "inference"
    options = candidates(model, device, precision, compile, setting)
    base = {"setting": setting, "mode": mode, "precision": precision, "batch": batch}
    if batch < NNPACK_MIN_BATCH:  # NNPACK's layers run oneDNN below this batch anyway
        options = {name: ["onednn"] for name in options}
    if all(len(v) == 1 for v in options.values()):
        how = "forced" if setting != "auto" else "one kernel applies"
        return KernelChoice(**base, how=how, layers={k: v[0] for k, v in options.items()})
    table = os.environ.get(TIMINGS_ENV)
    if table:
        timings = _table(table, options)
        return KernelChoice(**base, how="table", layers=_fastest(timings, options),
                            timings_ms=_ms(timings), timed_batch=batch, cache=table)
    key = _key(model, mode, precision, batch, channels_last)
    path = cache_file(cache_dir) if cache_dir is not None else None
    entry = _load(path).get("entries", {}).get(key) if path else None
    if entry is not None and set(entry.get("choice", {})) == set(options):
        return KernelChoice(**base, how="cached", layers=dict(entry["choice"]),
                            timings_ms=entry["timings_ms"], timed_batch=entry["timed_batch"],
                            seconds=entry.get("seconds"), cache=str(path))
    log.info(f"measuring the convolution kernels once for this CPU ({cpu_label()}): "
             f"{mode}, {precision}, batch {batch} (at most ~{budget_s:.0f} s)")
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # random inputs that leave the seeded stream alone
        timings, timed = (measure or measure_layers)(model, options, batch, train, channels_last,
                                                     budget_s)
    seconds = round(time.perf_counter() - began, 2)
    choice = KernelChoice(**base, how="measured", layers=_fastest(timings, options),
                          timings_ms=_ms(timings), timed_batch=timed, seconds=seconds,
                          cache=str(path) if path else None)
    if path is not None:
        _store(path, key, choice)
    return choice


def apply(model: nn.Module, choice: KernelChoice) -> nn.Module:
    """Run ``model``'s layers in the kernels of ``choice``; the choice is kept as
    ``model.kernel_choice`` (what config.json, the plan and the benchmarks record)."""
    use_nnpack(model, bool(choice.nnpack), layers=choice.nnpack)
    model.kernel_choice = choice
    return model


def kernel_choice(model: nn.Module) -> KernelChoice | None:
    """The choice :func:`apply` gave ``model`` (None: none made)."""
    return getattr(model, "kernel_choice", None)


# --------------------------------------------------------------------------- measuring


def _layer_calls(layer: nn.Conv2d, shape: tuple[int, ...], batch: int, train: bool,
                 channels_last: bool) -> dict[str, Callable[[], None]]:
    """One call per kernel of a private copy of ``layer`` on a random batch of its input shape:
    forward + backward (input and weight gradients) for training, forward only otherwise."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, *shape[1:]).to(memory_format=fmt).requires_grad_(train)
    # an eligible convolution keeps the spatial size ('same' padding, stride 1)
    grad = torch.randn(batch, layer.out_channels, *shape[2:]).to(memory_format=fmt)
    calls = {}
    for kernel in KERNELS:
        m = copy.deepcopy(layer)
        use = NnpackConv2d if kernel == "nnpack" else nn.Conv2d
        m.__class__ = use
        if not train:
            def forward(m: nn.Module = m) -> None:
                with torch.no_grad():
                    m(x)
            calls[kernel] = forward
            continue

        def step(m: nn.Module = m) -> None:
            x.grad = None
            for p in m.parameters():
                p.grad = None
            m(x).backward(grad)
        calls[kernel] = step
    return calls


def _input_shapes(model: nn.Module, names: list[str], channels_last: bool
                  ) -> dict[str, tuple[int, ...]]:
    """The input shape of each named layer in one forward pass of a single image."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda m, args, out, n=n: shapes.__setitem__(n, tuple(args[0].shape))) for n in names]
    size = getattr(model, "image_size", 64)
    x = torch.rand(1, 3, size, size)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _seconds(fn: Callable[[], None]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure_layers(model: nn.Module, options: dict[str, list[str]], batch: int, train: bool,
                   channels_last: bool, budget_s: float = BUDGET_S) -> tuple[Timings, int]:
    """Seconds per call of each layer in each of its candidate kernels, the fastest of
    :data:`MIN_ROUNDS` to :data:`MAX_ROUNDS` interleaved rounds, on the layer's real input shape
    at ``batch``, or at the largest batch whose rounds fit the budget (at least
    :data:`NNPACK_MIN_BATCH`) when a warm-up at that small batch says those at ``batch`` would
    not; returns the timings and the batch they were taken at."""
    began = time.perf_counter()
    todo = [n for n, kernels in options.items() if len(kernels) > 1]
    shapes = _input_shapes(model, todo, channels_last)
    modules = dict(model.named_modules())
    small = min(batch, NNPACK_MIN_BATCH)
    # warm-up (library set-up, first-call costs) at a small batch, which also says what a round
    # costs per image (over-estimated by those first-call costs, so the budget holds)
    warm: Timings = {n: {k: _seconds(call) for k, call in _layer_calls(
        modules[n], shapes[n], small, train, channels_last).items()} for n in todo}
    per_image = sum(sum(v.values()) for v in warm.values()) / small
    left = budget_s - (time.perf_counter() - began)
    timed = min(batch, int(0.8 * left / (MIN_ROUNDS * per_image)) if per_image > 0 else batch)
    timings: Timings = {n: {k: float("inf") for k in options[n]} for n in todo}
    rounds = 0
    if timed <= small:  # little time: the warm-up is the first sample, at the small batch
        timed, timings, rounds = small, warm, 1
    calls = {n: _layer_calls(modules[n], shapes[n], timed, train, channels_last) for n in todo}
    while rounds < MAX_ROUNDS:
        round_began = time.perf_counter()
        for name in todo:
            for kernel in options[name][::1 if rounds % 2 == 0 else -1]:  # A B, then B A
                timings[name][kernel] = min(timings[name][kernel],
                                            _seconds(calls[name][kernel]))
        rounds += 1
        spent, last = time.perf_counter() - began, time.perf_counter() - round_began
        if rounds >= MIN_ROUNDS and spent + last > budget_s:
            break
    return _with_single(timings, options), timed


def _with_single(timings: Timings, options: dict[str, list[str]]) -> Timings:
    """``timings`` plus an untimed entry for each layer with a single candidate kernel."""
    return timings | {n: {k[0]: 0.0} for n, k in options.items() if len(k) == 1}


def _fastest(timings: Timings, options: dict[str, list[str]]) -> dict[str, str]:
    """The faster kernel per layer (the first of :data:`KERNELS` on a tie)."""
    return {name: min(kernels, key=lambda k: (timings[name][k], KERNELS.index(k)))
            for name, kernels in options.items()}


def _ms(timings: Timings) -> dict[str, dict[str, float]]:
    return {n: {k: round(s * 1000, 2) for k, s in v.items()} for n, v in timings.items()}


def _table(path: str, options: dict[str, list[str]]) -> Timings:
    """The timings of :data:`TIMINGS_ENV`'s table for ``options`` (key ``*``: any layer)."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        return {n: {k: float((table.get(n) or table["*"])[k]) for k in kernels}
                for n, kernels in options.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise NeuralCodesError(f"{TIMINGS_ENV}={path}: not a kernel timing table "
                               f"({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- the cache


def _key(model: nn.Module, mode: str, precision: str, batch: int, channels_last: bool) -> str:
    """What a measurement depends on besides the CPU and torch (which name the file)."""
    shapes = [(name, m.in_channels, m.out_channels, m.kernel_size[0])
              for name, m in model.named_modules() if name in eligible_layers(model)]
    digest = hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:10]
    layout = "cl" if channels_last else "nchw"
    return (f"{mode}-{precision}-batch{batch}-threads{torch.get_num_threads()}-{layout}-"
            f"{digest}")


def _load(path: Path) -> dict[str, Any]:
    """The cache file's content for this CPU and torch version; empty when it is missing,
    unreadable, or made by another torch version or CPU (which invalidates it)."""
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (NeuralCodesError, OSError, ValueError):
        return {}
    if not isinstance(data, dict) or (data.get("format"), data.get("torch"), data.get("cpu")) != (
            CACHE_FORMAT, torch.__version__, cpu_identity()):
        log.info(f"{path}: kernel timings of another torch version or CPU; measuring again")
        return {}
    return data


def _store(path: Path, key: str, choice: KernelChoice) -> None:
    """Add one measurement to the cache file (read again just before, written atomically); a
    cache that cannot be written only costs a measurement next time."""
    data = _load(path) or {"format": CACHE_FORMAT, "torch": torch.__version__,
                           "cpu": cpu_identity(), "entries": {}}
    data.setdefault("entries", {})[key] = {
        "mode": choice.mode, "precision": choice.precision, "batch": choice.batch,
        "threads": torch.get_num_threads(), "timed_batch": choice.timed_batch,
        "seconds": choice.seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "timings_ms": choice.timings_ms, "choice": choice.layers}
    try:
        write_json(path, data)
    except (NeuralCodesError, OSError) as e:
        log.warning(f"warning: kernel timings not cached ({e})")
