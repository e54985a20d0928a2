"""Run megatron-core on CPU (gloo) when CUDA is absent.

megatron-core hard-codes a few CUDA entry points: ``torch.cuda.current_device()`` as the
device of freshly allocated buffers (RoPE frequencies, gather buffers), the CUDA RNG tracker
that forks the random state for tensor-parallel dropout and initialisation, and CUDA-only
autocast decorators on its linear autograd functions, the CUDA RNG state that activation
recompute saves and restores (their backward would otherwise mix a
bf16 gradient with an fp32 weight under CPU autocast). This module redirects exactly those
to the CPU. It does nothing when CUDA is available, so the GPU
path is megatron-core's own, unpatched.

Everything megatron-specific about CPU execution lives here; nothing else in the package
checks for CUDA except :func:`cuda_available`.
"""
from __future__ import annotations

import contextlib

import torch

_ACTIVE = False


def cuda_available() -> bool:
    return torch.cuda.is_available()


class CPURNGStatesTracker:
    """Drop-in for megatron's ``CudaRNGStatesTracker`` that forks the CPU generator.

    megatron forks a named RNG state around tensor-parallel dropout so that each TP rank
    draws a different mask (``model-parallel-rng``) while data-parallel replicas agree.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} already registered")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} already registered")
        self._is_initialized = True
        self.seeds_.add(seed)
        gen = torch.Generator().manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} was never added (call model_parallel_seed first)")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def activate() -> None:
    """Patch megatron-core's CUDA-only entry points; a no-op when CUDA is present."""
    global _ACTIVE
    if _ACTIVE or cuda_available():
        return
    from megatron.core.tensor_parallel import random as mrandom

    # Buffers megatron allocates "on the current device" go to the CPU.
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    # The RNG tracker megatron asks for becomes a CPU one.
    mrandom._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # Activation recompute saves/restores "the CUDA RNG state" around the recomputed forward.
    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    # Linear autograd functions: re-decorate for CPU autocast (backward runs in forward's autocast state).
    from megatron.core.tensor_parallel import layers

    for fn in (layers.LinearWithFrozenWeight, layers.LinearWithGradAccumulationAndAsyncCommunication):
        fwd = getattr(fn.forward, "__wrapped__", fn.forward)
        bwd = getattr(fn.backward, "__wrapped__", fn.backward)
        fn.forward = staticmethod(torch.amp.custom_fwd(fwd, device_type="cpu"))
        fn.backward = staticmethod(torch.amp.custom_bwd(bwd, device_type="cpu"))
    _ACTIVE = True


def model_parallel_seed(seed: int) -> None:
    """CPU/GPU-agnostic ``model_parallel_cuda_manual_seed``: same seeds, same tracker names."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if cuda_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
        return
    activate()
    torch.manual_seed(seed)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.reset()
    # Same offsets as megatron: TP ranks differ, DP replicas agree.
    tracker.add("model-parallel-rng", seed + 2718 + ps.get_tensor_model_parallel_rank())
