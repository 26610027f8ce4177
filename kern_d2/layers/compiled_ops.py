"""Loader of the compiled ops of kern_d2._C (``torch.ops.kern_d2.*``) and their fake kernels.

Importing kern_d2._C registers the ops' schemas, CPU/CUDA kernels and autograd in C++ (TORCH_LIBRARY). Their fake
(meta) kernels, which give the output's shape, dtype and device without data so that FakeTensor tracing
(torch.compile, torch.export, make_fx) goes through the ops, are written in Python and can only be registered once
the ops exist, i.e. after the import. :func:`load_ops` does both and returns ``torch.ops.kern_d2``.

An op module declares the fake kernels of its ops at import time with :func:`fake_kernel` (this needs no built
extension) and calls :func:`load_ops` where it needs the ops; ``load_ops`` registers every declared fake kernel
the first time it runs, and ``fake_kernel`` registers right away when the ops are already loaded (this module
loads them at import when the extension is built, so that nothing is registered while torch.compile traces)::

    from .compiled_ops import fake_kernel, load_ops

    @fake_kernel("kern_d2::my_op")
    def _my_op_fake(x, n):
        return x.new_empty((x.shape[0], n))

    def my_op(x, n):
        return load_ops().my_op(x, n)

Like the C++ kernels, a fake kernel checks what it can without data (shapes, dtypes, devices); the index ranges
need the data and are left to the kernels. Op modules import this module, never the other way round.
"""
import functools
from typing import Callable, Dict, Set

import torch

__all__ = ["fake_kernel", "load_ops"]

_NAMESPACE = "kern_d2"

# Qualified op name ("kern_d2::op") -> fake kernel, as declared by the op modules.
_declared_fakes: Dict[str, Callable] = {}
# Those already handed to torch.library.
_registered_fakes: Set[str] = set()
# Whether load_ops() has imported the extension, i.e. the ops exist.
_ops_loaded = False


def fake_kernel(qualname: str) -> Callable[[Callable], Callable]:
    """
    Decorator declaring ``fn`` as the fake kernel of the compiled op ``qualname`` (``"kern_d2::name"``; same
    signature as the op). It is registered with ``torch.library.register_fake`` by :func:`load_ops`, or at once
    when the ops are already loaded.
    """
    namespace, _, name = qualname.partition("::")
    if namespace != _NAMESPACE or not name:
        raise ValueError(f"fake_kernel: expected an op name '{_NAMESPACE}::<op>', got {qualname!r}")

    def declare(fn: Callable) -> Callable:
        previous = _declared_fakes.get(qualname)
        if previous is not None and previous is not fn:
            raise ValueError(
                f"fake_kernel: {qualname} already has a fake kernel, {previous.__module__}.{previous.__qualname__}"
            )
        _declared_fakes[qualname] = fn
        if _ops_loaded:
            _register_declared_fakes()
        return fn

    return declare


def _register_declared_fakes():
    for qualname, fn in _declared_fakes.items():
        if qualname not in _registered_fakes:
            torch.library.register_fake(qualname, fn)
            _registered_fakes.add(qualname)


@functools.lru_cache(maxsize=None)
def load_ops():
    """``torch.ops.kern_d2``, after importing kern_d2._C (whose import registers the ops) and registering the
    declared fake kernels."""
    global _ops_loaded
    try:
        import kern_d2._C  # noqa: F401
    except ImportError as e:
        raise ImportError("kern_d2._C is not built: run bash scripts/install.sh") from e
    if not _ops_loaded:
        _ops_loaded = True
        _register_declared_fakes()
    return torch.ops.kern_d2


# Load now when the extension is built, so that the fake kernels are in place before anything is traced:
# torch.compile traces through load_ops() (it ignores lru_cache) but cannot trace torch.library.register_fake.
# Without the extension, the ops' wrappers raise load_ops()'s error when called.
try:
    load_ops()
except ImportError:
    pass
