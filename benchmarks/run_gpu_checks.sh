#!/usr/bin/env bash
# On the GPU machine (device tool), from the project root, with .whl carried (../shared/tools/device-wheels.sh):
#   bash benchmarks/run_gpu_checks.sh TARGET...      (no TARGET: all)
# Builds kern_d2._C with CUDA, then runs the targets in the order given. Each benchmark target shows its output and
# keeps it in "$OUT/<target>.txt" with its wall time in the last line.
#
# The machine starts fresh for each device call (nothing kept: the build below runs every time) and a call has at
# most 600 s, so group targets by the estimates (H100; from the sizes and the timings of the 2026-11-25 runs):
#   setup            wheels + CUDA build of kern_d2._C (3 .cu, 4 .cpp)                                 ~1.5 min
#   tests            CUDA op, gate kernel and routing tests                                            ~1 min
#   union            bench_union_op.py: 2 dtypes x 2 paths x (fwd, fwd+bwd) x 23 calls                 ~40 s
#   gates            bench_gate_kernels.py: the fused gate kernels alone vs PyTorch ops                 ~15 s
#   union-features   bench_union_features.py: all-pairs union pooling and mask encoder, as run vs
#                    the forms they replaced                                                           ~15 s
#   routing          bench_routing.py, gates fused + eager, no torch.compile; the object
#                    routing's per-object loop (2.5 s a call) 4 calls                                  ~45 s
#   routing-compile  bench_routing.py --compile, gates fused + compile: inductor builds of the
#                    object routing, the gate functions and the whole relation module (fp32
#                    error checks, bf16 3a, bf16 3b, then again with CUDA graphs)                      ~4-5 min
#   step             bench_train_step.py: detector + KERN SGDet/SGCls/PredCls, 4 model builds,
#                    13 steps each                                                                     ~2 min
#   infer            bench_sgdet_inference.py: Detectron2-default detector (0.7 s a batch),
#                    reference detector, KERN x 4 settings, 13 calls each                              ~1.7 min
#   loading          bench_data_loading.py: 300 VG-sized JPEGs, 2 passes, workers 0,1,2,4,8, each
#                    plain and with CompactTransfer                                                  ~80 s
#   toy              3 toy KERN trainings (PredCls/SGCls/SGDet), 5 bf16 steps each                     ~2.5 min
#   profile          routing (relation, fused gate) + step + infer (chunk 4096) with --profile         ~4 min
#   study            tools/run_study.py on the synth benchmark ($STUDY_ARGS, default: all modes, models and
#                    3 seeds, 16 runs at once); its report and every run's metrics in $OUT/study.tgz, the
#                    detector it trained in $OUT/study_detector.pth. H200, 2026-12-03 (STUDY.md): PredCls +
#                    SGCls, 15 runs, 5.6 min; SGDet, 13 runs at once, 8 min of runs with a carried detector
#                    (more than a call once setup and data are added: make it two calls, the second reusing
#                    the finished runs on the still-warm machine, or fewer --jobs per call)
#   vg-scale         benchmarks/vg_scale.py --part all: VG stand-in (108,073-row index, 3,000 train + 2,200
#                    test JPEGs), VG-Detection R-101-FPN 200 iterations from random init, priors, KERN PredCls,
#                    SGCls and SGDet 300 iterations each (at the configs' batches), then --eval-only on >= 2,000
#                    test images: SGDet with all pairs, the detector alone (side by side, for the throughput
#                    ratio), PredCls with 8 loader workers, SGDet with overlapping pairs. H200: 5 min at 1,500 +
#                    1,000 images and 100 iterations a phase (without the detector-alone and 8-worker steps);
#                    ~11 min with 2,200 test images on a slow machine start, more than a call: use vg-scale-1
#                    then vg-scale-2. VG_SCALE_BUDGET_S (default 480 s) cuts training iterations (not below 50)
#                    so that the rest fits
#   vg-scale-1/-2    the same in two calls: part 1 up to SGCls, part 2 SGDet and the evaluations; part 2
#                    needs part 1's state in output/ and datasets/ (the same warm machine: call at once),
#                    else redoes part 1 small first
#   vg-scale-loader  --part loader: the stand-in (VG_SCALE_TRAIN_IMAGES), priors, then PredCls at the configs' batch
#                    for VG_SCALE_KERN_ITERS iterations at each of VG_SCALE_LOADER_WORKERS (default 4,8,12) loader
#                    workers: s/iter and the data-loader wait share side by side
#   vg-scale-smoke   the same commands at tiny sizes (on the GPU; a check of the path, ~2-3 min)
#   multi-gpu-1/-2   benchmarks/multi_gpu.py, issue 23, on nvidia-h200-x2 (two GPUs; the script refuses fewer):
#                    1 GPU vs 2 at the same per-GPU batch on the VG stand-in. Part 1: the stand-in, the VG-Detection
#                    R-101-FPN detector (100 iterations) and KERN PredCls (200) each on 1 and 2 GPUs, then the
#                    fault checks on 2 GPUs (kill -9 of rank 1 after a checkpoint, then --resume compared with the
#                    checkpoint; rank 1 stalled with --dist-timeout-s 30). Part 2: KERN SGDet (200) on 1 and 2 GPUs,
#                    SGDet --eval-only on >= 2,000 test images on 1 and 2 GPUs (sgg_metrics.json compared, wall
#                    times). images/s, ratio, peak memory per GPU, loader wait share; the table is printed and kept
#                    in $OUT/multi_gpu_table.txt (figures in $OUT/multi_gpu.json). Estimates (not yet run on GPUs):
#                    ~7 and ~6 min + setup; part 2 needs part 1's output/ and datasets/ (the same warm machine:
#                    call at once), else it first remakes the stand-in and a short 1-GPU detector
#   multi-gpu        both parts in one call (more than a call allows at the default sizes)
#   multi-gpu-faults only the fault checks (part 1 without them: MULTI_GPU_FAULTS=none, should it not fit a call)
#   multi-gpu-smoke  the same at tiny sizes (a check of the path; on CPU: 5-7 min on 2 cores)
# e.g. `union routing step infer loading` ~6 min + setup (within one call); `routing-compile` alone; `tests toy`;
# `profile` alone; `vg-scale` alone (the machine stays warm only 30 s after a call: two-call targets must follow at once).
# `all` runs every target but the vg-scale ones (~19 min: more than one call allows).
# multi-gpu sizes: MULTI_GPU_<SIZE> (e.g. MULTI_GPU_KERN_ITERS, MULTI_GPU_TEST_IMAGES, MULTI_GPU_FAULTS=kill|none;
# see benchmarks/multi_gpu.py).
# vg-scale sizes: VG_SCALE_<SIZE> (e.g. VG_SCALE_DETECTOR_ITERS, VG_SCALE_KERN_ITERS, VG_SCALE_TEST_IMAGES; see
# benchmarks/vg_scale.py), VG_SCALE_BUDGET_S (training iterations are cut so that the rest fits).
# STUDY_DATASET (default synth; toy: the toy dataset and configs, e.g. the recipe's divergence check of issue 26).
# STUDY_OUTPUT (default /tmp/study): the study's folder on the machine, packed as $OUT/<its name>.tgz; studies of
# several calls on one warm machine may share it (finished runs are reused) or use one each.
# STUDY_TIMEOUT_S (default 480 s, a call of 600 s less the setup): the study stops then, and what finished is
# still packed into $OUT/study.tgz (a call killed at its limit returns nothing of a run still going).
# Environment: STEP_IMAGES_PER_S (loading: images/s per GPU the training step consumes; default 48, the KERN SGDet
# step on the H100), OUT (output folder; default /tmp/out).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
export PYTHONFAULTHANDLER=1  # a crash in native code prints the Python stack
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! python3 -c "import kern_d2._C as C; assert C.with_cuda" 2>/dev/null; then
  python3 setup.py -q build_ext --inplace 2>&1 | grep -iE "error|fatal" | head -20  # no network there: no pip build env
fi
python3 -c "import torch, kern_d2._C as C; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'kern_d2._C with_cuda', C.with_cuda)"
echo "setup: ${SECONDS} s"
out=${OUT:-/tmp/out}; mkdir -p "$out"
step_images_per_s=${STEP_IMAGES_PER_S:-48}
targets="tests union union-features gates routing routing-compile step infer loading toy profile"

# run TARGET COMMAND...: show COMMAND's output (stdout and stderr) and append it to $out/TARGET.txt, with its time
run() {
  local target=$1 start=$SECONDS; shift
  echo "### $target: $*" | tee -a "$out/$target.txt"
  "$@" 2>&1 | tee -a "$out/$target.txt"
  echo "### $target: $((SECONDS - start)) s" | tee -a "$out/$target.txt"
}

toy_training() {
  export KERN_DATASETS=/tmp/kern_datasets
  python3 tools/make_toy_dataset.py --output $KERN_DATASETS/toy > /dev/null
  python3 tools/compute_priors.py --dataset toy_train --output /tmp/toy_priors.npz > /dev/null
  for task in predcls sgcls sgdet; do
    echo "toy $task:"
    python3 tools/train_net.py --config-file configs/toy/kern_$task.yaml MODEL.DEVICE cuda MODEL.WEIGHTS "" \
      MODEL.UNTRAINED_DETECTOR allow \
      MODEL.ROI_RELATION_HEAD.PRIORS_FILE /tmp/toy_priors.npz SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bfloat16 \
      SOLVER.IMS_PER_BATCH 8 SOLVER.MAX_ITER 5 DATALOADER.NUM_WORKERS 2 OUTPUT_DIR /tmp/step_$task 2>&1 \
      | grep -E "iter: |copypaste|Error|error|Traceback" | tail -6
  done
}

selected=()
for what in "${@:-all}"; do
  if [ "$what" = all ]; then selected+=($targets); else selected+=("$what"); fi
done
for target in "${selected[@]}"; do
  rm -f "$out/$target.txt"
  case $target in
    tests)
      run tests python3 -m pytest -q -p no:cacheprovider tests/layers \
        tests/modeling/test_object_routing.py tests/modeling/test_relation_routing.py tests/modeling/test_detections.py \
        -k "not invalid" ;;  # on the device's torch 2.11 build a C++ TORCH_CHECK failure kills the process
    union)
      run union python3 benchmarks/bench_union_op.py ;;
    union-features)
      run union-features python3 benchmarks/bench_union_features.py ;;
    gates)
      run gates python3 benchmarks/bench_gate_kernels.py ;;
    routing)
      run routing python3 benchmarks/bench_routing.py --gates fused,eager --literal-repeats 3 ;;
    routing-compile)
      run routing-compile python3 benchmarks/bench_routing.py --compile --gates fused,compile --literal-repeats 2 ;;
    step)
      run step python3 benchmarks/bench_train_step.py --device cuda ;;
    infer)
      run infer python3 benchmarks/bench_sgdet_inference.py --device cuda ;;
    loading)
      run loading python3 benchmarks/bench_data_loading.py --toy-images 0 --vg-images 300 --passes 2 \
        --workers 0,1,2,4,8 --step-images-per-s "$step_images_per_s" ;;
    toy)
      run toy toy_training ;;
    study)
      # shellcheck disable=SC2086
      study_dir=${STUDY_OUTPUT:-/tmp/study}
      run study timeout "${STUDY_TIMEOUT_S:-480}" python3 tools/run_study.py --dataset "${STUDY_DATASET:-synth}" --device cuda \
        --output "$study_dir" ${STUDY_ARGS:---jobs 16}
      tar czf "$out/$(basename "$study_dir").tgz" -C "$(dirname "$study_dir")" --exclude='*.pth' \
        --exclude='events.out.*' "$(basename "$study_dir")"
      [ -f "$study_dir/detector/model_final.pth" ] && cp "$study_dir/detector/model_final.pth" "$out/study_detector.pth" ;;
    vg-scale-1|vg-scale-2|vg-scale|vg-scale-loader|vg-scale-smoke)
      part=${target#vg-scale}; part=${part#-}
      case $part in "") args="--part all" ;; smoke) args="--part all --smoke --workdir /tmp/vg_scale_smoke" ;;
        *) args="--part $part" ;; esac
      run "$target" python3 benchmarks/vg_scale.py $args --out "$out" ;;
    multi-gpu|multi-gpu-1|multi-gpu-2|multi-gpu-faults|multi-gpu-smoke)
      part=${target#multi-gpu}; part=${part#-}
      case $part in "") args="--part all" ;; smoke) args="--part all --smoke --workdir /tmp/multi_gpu_smoke" ;;
        *) args="--part $part" ;; esac
      run "$target" python3 benchmarks/multi_gpu.py $args --out "$out" ;;
    profile)
      run profile python3 benchmarks/bench_routing.py --only relation --gates fused --repeats 10 --profile
      run profile python3 benchmarks/bench_train_step.py --device cuda --repeats 5 --profile
      run profile python3 benchmarks/bench_sgdet_inference.py --device cuda --chunks 4096 --overlap off --repeats 5 \
        --no-d2-default --profile ;;
    *)
      echo "unknown target '$target': choose from $targets study vg-scale-1 vg-scale-2 multi-gpu-1 multi-gpu-2 all" ;;
  esac
done
