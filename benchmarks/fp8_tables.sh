#!/usr/bin/env bash
# TOVA with an FP8 KV cache against stock bf16 and stock fp8, run to completion, paper
# workload (512 + 3,584), N = 4x stock bf16's capacity; the TOVA fp8 systems also get their
# own N (``@M``: M x stock's capacity, about one full batch of their own pool), so each runs
# at its best batch. One part per GPU call (a call may run 10 minutes):
#   bash benchmarks/fp8_tables.sh OUT_DIR REPEATS PART
# Parts, most useful first. Estimates for one H100 80GB, REPEATS=1: the runs from the
# 2026-12-07 H100 tables, TOVA fp8 at ~90% of the ceiling model (benchmarks/ceiling.py), plus
# 30-75 s per engine start:
#   llama2-7b-fp8    stock fp8, tova:512-fp8 N=16x: the >= 3x stock fp8 target, one call 6.5-7.5 min
#   llama2-7b        stock bf16 (sizes the pool), tova:512-fp8 N=16x (448 of its ~461)  7-8.7 min
#   llama2-7b-more   stock fp8, tova:512 bf16 (N=4x)                                    4.5-6 min
#   llama2-7b-k256   tova:256-fp8 N=32x (896 of its ~923), tova:256 bf16 (N=4x)         5-6.5 min
#   llama3-8b        stock fp8 (sizes the pool), tova:512-fp8 N=9x (981: max_num_seqs)  6.5-8 min
#   llama3-8b-more   stock bf16                                                          4.5-5.5 min
#   llama3-8b-k256   tova:256-fp8 N=9x, tova:512 bf16 (N=4x)                            5-6.5 min
# A later part of a shape reuses the first part's pool (in bytes) when its CSV is in OUT_DIR;
# otherwise its first system sizes the pool from --gpu-memory-utilization, which gives every
# system the same bytes on the same card.
# REPEATS multiplies each run's time (not the starts). After each part, the shape's parts so
# far are merged into <device>-<shape>-completion-fp8.{csv,md,png}: every system side by
# side with the ratios and targets (rows from different calls, so maybe different cards).
set -euo pipefail
out=${1:?OUT_DIR}
repeats=${2:?REPEATS}
part=${3:?PART: llama2-7b-fp8, llama2-7b, llama2-7b-more, llama2-7b-k256, llama3-8b, llama3-8b-more or llama3-8b-k256}
common=(--workloads paper --repeats "$repeats" --out-dir "$out")

# The first part's pool, as --kv-pool-tokens for a first system of cache dtype $2 (an FP8
# token takes half a bf16 token's bytes).
pool_of() {
    python - "$out" "$1" "$2" <<'PY'
import csv, glob, sys
out, model, dtype = sys.argv[1:]
rows = [r for f in glob.glob(f"{out}/*-{model}-completion-fp8-a.csv") for r in csv.DictReader(open(f))]
if rows:
    tokens = int(rows[0]["kv_pool_blocks"]) * int(rows[0]["block_size"])
    ratio = {(True, False): 0.5, (False, True): 2.0}.get((rows[0]["kv_cache_dtype"] == "fp8", dtype == "fp8"), 1.0)
    print(f"--kv-pool-tokens={int(tokens * ratio)}")
PY
}

case "$part" in
    llama2-7b-fp8)
        python -m benchmarks.throughput --model llama2-7b --systems stock-fp8,tova:512-fp8@16 \
            $(pool_of llama2-7b fp8) --tag fp8-d "${common[@]}" ;;
    llama2-7b)
        python -m benchmarks.throughput --model llama2-7b --systems stock,tova:512-fp8@16 --tag fp8-a "${common[@]}" ;;
    llama2-7b-more)
        python -m benchmarks.throughput --model llama2-7b --systems stock-fp8,tova:512 \
            $(pool_of llama2-7b fp8) --tag fp8-b "${common[@]}" ;;
    llama2-7b-k256)
        python -m benchmarks.throughput --model llama2-7b --systems tova:256-fp8@32,tova:256 \
            $(pool_of llama2-7b fp8) --tag fp8-c "${common[@]}" ;;
    llama3-8b)
        python -m benchmarks.throughput --model llama3-8b --systems stock-fp8,tova:512-fp8@9 --tag fp8-a "${common[@]}" ;;
    llama3-8b-more)
        python -m benchmarks.throughput --model llama3-8b --systems stock \
            $(pool_of llama3-8b auto) --tag fp8-b "${common[@]}" ;;
    llama3-8b-k256)
        python -m benchmarks.throughput --model llama3-8b --systems tova:256-fp8@9,tova:512 \
            $(pool_of llama3-8b fp8) --tag fp8-c "${common[@]}" ;;
    *)
        echo "unknown PART $part" >&2
        exit 2 ;;
esac

merged=$(python - "$out" "${part:0:9}" <<'PY'
import csv, glob, sys
out, model = sys.argv[1], sys.argv[2]
parts = sorted(glob.glob(f"{out}/*-{model}-completion-fp8-?.csv"))
rows = [r for f in parts for r in csv.DictReader(open(f))]
if rows:
    merged = parts[0][: -len("-a.csv")] + ".csv"
    with open(merged, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # The merged table's header: the shape's title and every part's command, for --render.
    def header(part_csv):
        lines = open(part_csv[: -len(".csv")] + ".md").read().splitlines()
        return lines[0], next(l[len("- command: `"):-1] for l in lines if l.startswith("- command: `"))
    heads = [header(f) for f in parts]
    commands = " && ".join(c for _, c in heads)
    with open(merged[: -len(".csv")] + ".md", "w") as f:
        f.write(f"{heads[0][0]}\n\n- command: `{commands}`\n")
    print(merged)
PY
)
[ -n "$merged" ] && python -m benchmarks.throughput --render "$merged"
