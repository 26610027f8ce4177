"""A ``--register`` file for tools/train_net.py, used by benchmarks/multi_gpu.py and its CPU test
(tests/tools/test_distributed_faults.py). train_net.py runs it in every process it starts (the launcher's ranks too),
so what it patches into ``SGGTrainer`` acts on every rank. It registers no dataset.

- Always: after training and after each evaluation, each rank prints
  ``MULTI_GPU rank R peak_gpu_memory_gb A reserved_gb B`` (its GPU's peaks; nothing without CUDA).
- ``MULTI_GPU_PROBE_DIR=D``: right after ``--resume`` loaded the checkpoint, each rank saves what it will continue
  from (``start_iter`` and ``trainer.state_dict()``: iteration, the hooks' states such as the LR scheduler's, the
  optimizer's state) to ``D/resumed_rank<R>.pt``, for comparison with the checkpoint file.
- ``MULTI_GPU_STALL=R:I``: rank R stops answering at iteration I (it sleeps: a stalled rank, alive, not a dead one),
  after writing the time to ``D/stalled_rank<R>`` (``D`` = ``MULTI_GPU_PROBE_DIR``, default the working folder).
"""
import os
import time

import torch
from detectron2.utils import comm

from kern_d2.engine import SGGTrainer

PROBE_DIR_ENV, STALL_ENV = "MULTI_GPU_PROBE_DIR", "MULTI_GPU_STALL"


def print_peak_memory():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"MULTI_GPU rank {comm.get_rank()} peak_gpu_memory_gb {torch.cuda.max_memory_allocated() / 1e9:.2f} "
              f"reserved_gb {torch.cuda.max_memory_reserved() / 1e9:.2f}", flush=True)


def _patch():
    train, resume_or_load, run_step = SGGTrainer.train, SGGTrainer.resume_or_load, SGGTrainer.run_step
    test = SGGTrainer.test.__func__  # a classmethod (DefaultTrainer's unless SGGTrainer defines its own)

    def probed_train(self):
        try:
            return train(self)
        finally:
            print_peak_memory()

    def probed_test(cls, cfg, model, evaluators=None):
        results = test(cls, cfg, model, evaluators)
        print_peak_memory()
        return results

    def probed_resume_or_load(self, resume=True):
        resume_or_load(self, resume=resume)
        probe_dir = os.environ.get(PROBE_DIR_ENV)
        if resume and probe_dir:
            os.makedirs(probe_dir, exist_ok=True)
            torch.save({"start_iter": self.start_iter, "trainer": self.state_dict()},
                       os.path.join(probe_dir, f"resumed_rank{comm.get_rank()}.pt"))

    def probed_run_step(self):
        stall = os.environ.get(STALL_ENV)
        if stall:
            rank, iteration = (int(x) for x in stall.split(":"))
            if comm.get_rank() == rank and self.iter >= iteration:
                with open(os.path.join(os.environ.get(PROBE_DIR_ENV, "."), f"stalled_rank{rank}"), "w") as f:
                    f.write(f"{time.time()}\n")
                while True:
                    time.sleep(3600)
        return run_step(self)

    SGGTrainer.train = probed_train
    SGGTrainer.test = classmethod(probed_test)
    SGGTrainer.resume_or_load = probed_resume_or_load
    SGGTrainer.run_step = probed_run_step
    SGGTrainer._rank_probe = True


if not getattr(SGGTrainer, "_rank_probe", False):
    _patch()
