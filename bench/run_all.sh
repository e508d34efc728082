#!/usr/bin/env bash
# Every benchmark, one after the other, on a quiet machine. The figures in
# bench/README.md come from this script's output (bench/results.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
run() { echo; echo "\$ $*"; "$@"; }
{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
  run $py bench/cancel_latency.py --model offline --mode streaming --runs 1000
  run $py bench/cancel_latency.py --model offline --mode stalled --runs 1000
  run $py bench/cancel_latency.py --model responses --mode streaming --runs 1000
  run $py bench/cancel_latency.py --model responses --mode stalled --runs 1000
  run $py bench/cancel_latency.py --model chat --mode streaming --runs 1000
  run $py bench/chunk_throughput.py --words 20000 --repeat 5
  run $py bench/redis_cancel_latency.py
  run $py bench/redis_throughput.py
  run $py bench/redis_commands.py
  run $py bench/http_cancel.py --streams 100
  KERN_REDIS_URL=redis://127.0.0.1:6379/0 KERN_REDIS_PREFIX=benchhttp \
    run $py bench/http_cancel.py --streams 100
  run $py bench/http_sse.py --repeat 3
  run $py bench/queue_workers.py dispatch --runs 2000
  run $py bench/queue_workers.py capacity --runs 5000
} 2>&1 | tee bench/results.txt
