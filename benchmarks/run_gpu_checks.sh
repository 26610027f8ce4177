#!/usr/bin/env bash
# On the GPU machine (device tool), from the project root, with .whl carried (../shared/tools/device-wheels.sh):
#   bash benchmarks/run_gpu_checks.sh [tests|bench|step|all]...
# Builds kern_d2._C with CUDA, runs the CUDA op tests, the GPU benchmarks, and bf16 KERN training steps on toy data.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! python3 -c "import kern_d2._C as C; assert C.with_cuda" 2>/dev/null; then
  python3 setup.py -q build_ext --inplace 2>&1 | grep -iE "error|fatal" | head -20  # no network there: no pip build env
fi
python3 -c "import torch, kern_d2._C as C; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'kern_d2._C with_cuda', C.with_cuda)"
out=${OUT:-/tmp/out}; mkdir -p "$out"
for what in "${@:-all}"; do
  case $what in
    tests|all)
      python3 -m pytest -q -p no:cacheprovider tests/test_box_pair_masks.py tests/test_pair_union_roi_align.py \
        tests/test_pair_union_pooler.py tests/test_object_routing.py tests/test_relation_routing.py 2>&1 | tail -15 ;;&
    bench|all)
      python3 benchmarks/bench_union_op.py 2>&1 | tee "$out/bench_union_op.txt" ;;&
    step|all)
      export KERN_DATASETS=/tmp/kern_datasets
      python3 tools/make_toy_dataset.py --output $KERN_DATASETS/toy > /dev/null
      python3 tools/compute_priors.py --dataset toy_train --output /tmp/toy_priors.npz > /dev/null
      for task in predcls sgcls sgdet; do
        python3 tools/train_net.py --config-file configs/toy/kern_$task.yaml MODEL.DEVICE cuda MODEL.WEIGHTS "" \
          MODEL.ROI_RELATION_HEAD.PRIORS_FILE /tmp/toy_priors.npz SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bfloat16 \
          SOLVER.IMS_PER_BATCH 8 SOLVER.MAX_ITER 5 DATALOADER.NUM_WORKERS 2 OUTPUT_DIR /tmp/step_$task 2>&1 \
          | grep -E "iter: |copypaste|Error|error|Traceback" | tail -6
      done ;;
  esac
done
