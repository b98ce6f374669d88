#!/usr/bin/env bash
# Re-measure every performance table of docs/performance.md (and docs/index.md, docs/backbones.md) in one go.
#
#   bash benchmarks/run_all.sh --quick    # every script in its quick mode (minutes on an idle 2-core machine)
#   bash benchmarks/run_all.sh            # the full runs behind the docs' tables (much longer: 1M-vector shapes)
#
# Each script prints the machine line (CPU, cores, load, threads, versions) first and the verdict
# (comparable / NOT comparable: busy machine) last; run it on a quiet machine to refresh the docs.
# Output also goes to benchmarks-<UTC time>.log in the current directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
QUICK=""
if [[ "${1:-}" == "--quick" ]]; then QUICK="--quick"; fi
LOG="benchmarks-$(date -u +%Y%m%dT%H%M%SZ).log"
{
  $PY benchmarks/startup.py $QUICK
  $PY benchmarks/index_search.py $QUICK
  $PY benchmarks/encode_throughput.py $QUICK
  $PY benchmarks/index_ann.py $QUICK
  $PY benchmarks/milvus_throughput.py $QUICK
  $PY benchmarks/train_throughput.py $QUICK
} 2>&1 | tee "$LOG"
echo "wrote $LOG"
