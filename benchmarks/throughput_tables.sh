#!/usr/bin/env bash
# The run-to-completion tables of benchmarks/results/throughput/, in one GPU session:
#   bash benchmarks/throughput_tables.sh OUT_DIR [REPEATS]
# 1. Llama-3-8B shape: stock bf16 (sizes the pool), TOVA K=512, stock fp8.
# 2. LLaMA-2-7B shape: the same three systems.
# 3. Llama-3-8B shape: TOVA K=256 and K=1,024 on table 1's pool and request set.
# Paper workload (512 + 3,584), N = 4x stock bf16's capacity, every request run to completion.
set -euo pipefail
out=${1:?OUT_DIR}
repeats=${2:-1}
common=(--workloads paper --repeats "$repeats" --out-dir "$out")
python -m benchmarks.throughput --model llama3-8b --systems stock,tova:512,stock-fp8 "${common[@]}"
python -m benchmarks.throughput --model llama2-7b --systems stock,tova:512,stock-fp8 "${common[@]}"
pool=$(python - "$out" <<'PY'
import csv, glob, sys
row = next(r for f in glob.glob(f"{sys.argv[1]}/*-llama3-8b-completion.csv") for r in csv.DictReader(open(f))
           if r["system"] == "stock")
print(int(row["kv_pool_blocks"]) * int(row["block_size"]))
PY
)
python -m benchmarks.throughput --model llama3-8b --systems tova:256,tova:1024 --kv-pool-tokens "$pool" \
    --tag budgets "${common[@]}"
