#!/usr/bin/env bash
# One command for a machine with one CUDA GPU: builds the extension with its CUDA kernels, runs
# the whole test suite (the `device` fixture adds the CUDA cases), times masked_spmm against
# torch.sparse (cuSPARSE) and PyG gather/scatter, and times one epoch + one evaluation of
# LightGCN, FREEDOM and I3-MRec on ml100k_mm and baby. Prints one table of the steps at the end;
# stops at the first failing step (exit status 1) and lists what it skipped.
#
#   bash benchmarks/gpu_check.sh             # from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # print the plan, run nothing
#
# Environment: PYTHON (default: python), DATA_ROOT (default: ../shared/data).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DATA_ROOT="${DATA_ROOT:-../shared/data}"
DRY_RUN=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "gpu_check.sh: unknown argument '$1' (expected --dry-run or nothing)" >&2; exit 2 ;;
esac

STEPS=(
  "build|FORCE_CUDA=1 $PYTHON setup.py build_ext --inplace"
  "kernels|$PYTHON -c \"import sys, pyg_mmrec.ops as o; sys.exit(0 if 'cuda' in o.EXT_DEVICES else 'the CUDA kernels did not load: EXT_DEVICES=' + str(sorted(o.EXT_DEVICES)))\""
  "tests|$PYTHON -m pytest -q -x -rs tests"
  "op benchmark|$PYTHON benchmarks/bench_masked_spmm.py --device cuda --root $DATA_ROOT --graphs baby 1M 10M --reps 10"
  "epochs|$PYTHON benchmarks/gpu_epochs.py --device cuda --root $DATA_ROOT --datasets ml100k_mm,baby"
)

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check.sh plan (dry run, nothing executed):"
  for s in "${STEPS[@]}"; do echo "  [${s%%|*}] ${s#*|}"; done
  exit 0
fi

# Refuse clearly where the check cannot mean anything.
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: needs a CUDA build of torch and a visible GPU; found" \
       "$("$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, torch.version.cuda={torch.version.cuda}, cuda available={torch.cuda.is_available()}")' 2>&1 | tail -1)." \
       "Nothing was run." >&2
  exit 1
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

LOG_DIR="$(mktemp -d -t gpu_check.XXXXXX)"
SUMMARY=()
STATUS=0
for s in "${STEPS[@]}"; do
  name="${s%%|*}"; cmd="${s#*|}"
  log="$LOG_DIR/${name// /_}.log"
  echo "==> [$name] $cmd"
  start=$(date +%s)
  bash -c "$cmd" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  secs=$(( $(date +%s) - start ))
  if [ "$rc" -ne 0 ]; then
    SUMMARY+=("| $name | FAILED (exit $rc) | $secs |")
    STATUS=1
    echo "gpu_check.sh: step '$name' FAILED (exit $rc); its log: $log" >&2
    break
  fi
  SUMMARY+=("| $name | ok | $secs |")
done

echo
echo "gpu_check.sh summary (logs in $LOG_DIR)"
echo "| step | result | seconds |"
echo "|---|---|---:|"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo
if [ -f "$LOG_DIR/epochs.log" ]; then
  grep '^|' "$LOG_DIR/epochs.log" || true
fi
if [ -f "$LOG_DIR/op_benchmark.log" ]; then
  sed -n '/^graph /,$p' "$LOG_DIR/op_benchmark.log"
fi
echo "skipped:"
grep -h -E '^SKIPPED|^\[skip\]|skipped|not installed' "$LOG_DIR"/*.log | sort | uniq -c | sed 's/^/  /' || true
exit $STATUS
