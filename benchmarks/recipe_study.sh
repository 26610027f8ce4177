#!/usr/bin/env bash
# The recipe study of the relation phases (issue 26, STUDY.md "Recipe"), one call of the GPU machine per part:
#   bash benchmarks/recipe_study.sh 1     # PredCls: SGD (shipped VG/OI/GQA and toy learning rates), VRFC at Adam 1e-3
#   bash benchmarks/recipe_study.sh 2     # Adam at KERN's released lr at batch 8 (1e-5 per image: 8e-5); SGCls: SGD vs Adam
#   bash benchmarks/recipe_study.sh toy   # the toy configs' recipe: KERN and VRFC, every mode, seeds 0-2 (divergence)
#   bash benchmarks/recipe_study.sh lr    # PredCls: KERN and VRFC at Adam 8e-5 and, beside them, at Adam 1e-3 (12 runs)
#   bash benchmarks/recipe_study.sh 2-cpu # SGCls of part 2 on this machine's CPUs (2 runs at once, one thread each;
#                                         # 2 cores: ~70 min), into /tmp/recipe_cpu
# Parts 1, 2, lr and toy are each one run of `run_gpu_checks.sh study` (up to 18 runs at once) into its own folder
# ($OUT/recipe_<part>.tgz); tools/merge_study_reports.py merges them with the fidelity study's KERN rows at Adam 1e-3
# (same detector, same data). All runs: the synth schedule (800 iterations at batch 8, warmup 50, step at 640); what
# changes is the optimizer, its learning rate and gradient clipping (norm 5 unless "noclip").
set -euo pipefail
part=${1:?usage: recipe_study.sh 1|2|lr|2-cpu|toy}
sgd="SOLVER.OPTIMIZER SGD SOLVER.WEIGHT_DECAY 0.0001"  # Base-KERN.yaml's SGD: momentum 0.9, weight decay 1e-4
noclip="SOLVER.CLIP_GRADIENTS.ENABLED False"
# The carried detector when there is one; otherwise the study trains it (4.5 min on an H200) and run_gpu_checks.sh
# returns it as $OUT/study_detector.pth, to carry as .pilot/study_detector.pth into the next part.
detector=${DETECTOR_WEIGHTS:-.pilot/study_detector.pth}
detector_args=""; [ -f "$detector" ] && detector_args="--detector-weights $detector"
common="--models --seeds 0 1 2 --jobs 18 $detector_args"
case $part in
  1) args="--modes predcls $common
      --variant kern_sgd_lr0.001=$sgd SOLVER.BASE_LR 0.001 $noclip
      --variant vrfc_sgd_lr0.001=NAME VRFC $sgd SOLVER.BASE_LR 0.001 $noclip
      --variant kern_sgd_lr0.02=$sgd SOLVER.BASE_LR 0.02 $noclip
      --variant kern_sgd_lr0.02_clip5=$sgd SOLVER.BASE_LR 0.02
      --variant vrfc_sgd_lr0.02_clip5=NAME VRFC $sgd SOLVER.BASE_LR 0.02
      --variant vrfc_adam_lr1e-3=NAME VRFC" ;;
  2) args="--modes predcls sgcls $common
      --variant kern_adam_lr8e-5=SOLVER.BASE_LR 0.00008
      --variant vrfc_adam_lr8e-5@predcls=NAME VRFC SOLVER.BASE_LR 0.00008
      --variant kern_sgd_lr0.001@sgcls=$sgd SOLVER.BASE_LR 0.001 $noclip
      --variant vrfc_sgd_lr0.001@sgcls=NAME VRFC $sgd SOLVER.BASE_LR 0.001 $noclip
      --variant vrfc_adam_lr1e-3@sgcls=NAME VRFC" ;;
  lr) args="--modes predcls --models kern vrfc --seeds 0 1 2 --jobs 12
      $detector_args
      --variant kern_adam_lr8e-5=SOLVER.BASE_LR 0.00008
      --variant vrfc_adam_lr8e-5=NAME VRFC SOLVER.BASE_LR 0.00008" ;;
  2-cpu) # SGCls: KERN and VRFC under Adam 1e-3 (the shipped recipe) and SGD 0.001
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    cpu="--device cpu --jobs 2 --seeds 0 1 2 $detector_args"
    # shellcheck disable=SC2086
    python3 tools/run_study.py --dataset synth --output /tmp/recipe_cpu --modes sgcls --models kern vrfc $cpu \
      --variant kern_sgd_lr0.001=$sgd SOLVER.BASE_LR 0.001 $noclip \
      --variant vrfc_sgd_lr0.001=NAME VRFC $sgd SOLVER.BASE_LR 0.001 $noclip
    exit ;;
  toy) # the chosen recipe on the toy data: seeds 0-2 of every mode must train without a FloatingPointError
    STUDY_DATASET=toy STUDY_OUTPUT=/tmp/recipe_toy STUDY_TIMEOUT_S=${STUDY_TIMEOUT_S:-530} \
      STUDY_ARGS="--models kern vrfc --seeds 0 1 2 --jobs 18" bash "$(dirname "$0")/run_gpu_checks.sh" study
    exit ;;
  *) echo "recipe_study.sh: part must be 1, 2, lr, 2-cpu or toy, got $part" >&2; exit 2 ;;
esac
STUDY_OUTPUT=/tmp/recipe_$part STUDY_TIMEOUT_S=${STUDY_TIMEOUT_S:-530} STUDY_ARGS="$args" \
  bash "$(dirname "$0")/run_gpu_checks.sh" study
