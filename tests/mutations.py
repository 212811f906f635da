"""Planted bugs, and the fast tests that must catch each: evidence that the tests can fail.

    python -m tests.mutations [--out benchmarks/results/correctness/mutations.md]
    python -m tests.mutations --soak   # the soak's planted bugs (benchmarks/results/reliability/)
    python -m tests.mutations --fp8    # the FP8 paths' planted bugs (mutations-fp8.md)

Each mutant replaces one line of the package's source in a temporary copy of the working
tree, then runs its tests (``FAST_TESTS`` for the package's source, the hand-worked examples
for the reference's) there in a fresh Python (so vLLM's plugin loading and every
import see the mutated code); a mutant is caught when at least one test fails. The record
names, per mutant, each test that failed and its first failure line. The unmutated tree
runs first and must pass. ``tests/unit/test_mutations.py`` runs the same check in CI.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "benchmarks" / "results" / "correctness" / "mutations.md"
SOAK_RECORD = REPO / "benchmarks" / "results" / "reliability" / "soak-mutations.md"
FP8_RECORD = RECORD.with_name("mutations-fp8.md")

#: The CPU unit level: no engine, no model; about 20 s per run, most of it importing vLLM.
FAST_TESTS = [
    "tests/unit/test_torch_backend_vs_reference.py",
    "tests/unit/test_reference_by_hand.py",
    "tests/unit/test_policies.py",
    "tests/unit/test_units.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = tuple(FAST_TESTS)  # pytest arguments
    env: tuple[tuple[str, str], ...] = ()  # more environment for the tests' run


MUTANTS = [
    Mutant(
        "evict the second-lowest entry",
        "vllm_tova/policy.py",
        'return scores.masked_fill(~valid, float("inf")).argmin(dim=-1)',
        'return scores.masked_fill(~valid, float("inf")).topk(2, dim=-1, largest=False).indices[..., 1]',
    ),
    Mutant(
        "score with head 0 instead of the head average",
        "vllm_tova/attention/head_average.py",
        "return self.combine(weights.mean(dim=dim))",
        "return self.combine(weights.select(dim, 0))",
    ),
    Mutant(
        "leave the new token out of the decode score",
        "vllm_tova/attention/torch_backend.py",
        "evicted = self.policy.evict_one(scores, rows.valid)",
        "evicted = self.policy.evict_one(scores[:, :-1], rows.valid[:, :-1])",
    ),
    Mutant(
        "off-by-one chunk boundary (scheduler cuts a prompt at C + 1)",
        "vllm_tova/scheduler.py",
        "end = min((start // chunk + 1) * chunk, prompt_len)",
        "end = min((start // chunk + 1) * chunk + 1, prompt_len)",
    ),
    Mutant(
        "off-by-one chunk boundary (chunk scored by its second-to-last query)",
        "vllm_tova/attention/torch_backend.py",
        "self.head_average(weights[:, -1]),",
        "self.head_average(weights[:, -2]),",
    ),
    Mutant(
        "compact into the wrong slots (chunk survivors fill the first slots, not the freed)",
        "vllm_tova/attention/torch_backend.py",
        "torch.nonzero(~kept_old).flatten(),",
        "torch.arange(int((~kept_old).sum()), device=k.device),",
    ),
    Mutant(
        "compact into the wrong slots (decode writes the new token into slot 0)",
        "vllm_tova/attention/torch_backend.py",
        "target = torch.where(rows.full, freed, target)",
        "target = torch.where(rows.full, rows.slots[:, 0], target)",
    ),
    Mutant(
        "drop the budget cap by one block",
        "vllm_tova/kv_manager.py",
        "return cdiv(budget, block_size)",
        "return cdiv(budget, block_size) - 1",
    ),
]


#: The reference's own definitions, pinned by the hand-worked examples (record only; CI runs
#: ``MUTANTS``, the backend's).
BY_HAND = ("tests/unit/test_reference_by_hand.py",)
REFERENCE_MUTANTS = [
    Mutant(
        "reference: TOVA scores with head 0",
        "vllm_tova/reference.py",
        "_keep(none, newest_weights.float().mean(dim=0), budget, exact=False)",
        "_keep(none, newest_weights.float()[0], budget, exact=False)",
        BY_HAND,
    ),
    Mutant(
        "reference: window keeps the oldest",
        "vllm_tova/reference.py",
        "_keep(none, positions, budget, exact=True)",
        "_keep(none, -positions, budget, exact=True)",
        BY_HAND,
    ),
    Mutant(
        "reference: three sinks instead of four",
        "vllm_tova/reference.py",
        "_keep(positions < SINKS, positions, budget, exact=True)",
        "_keep(positions < SINKS - 1, positions, budget, exact=True)",
        BY_HAND,
    ),
    Mutant(
        "reference: H2O's recent window one token wider",
        "vllm_tova/reference.py",
        "recent = positions > positions.max() - budget // 2",
        "recent = positions >= positions.max() - budget // 2",
        BY_HAND,
    ),
]

#: The half-precision table's statistics and verdicts (benchmarks/half_stats.py), pinned by
#: their unit tests (record only, as the reference's).
HALF_STATS = ("tests/unit/test_half_stats.py",)
HALF_STATS_MUTANTS = [
    Mutant(
        "half precision: p99 |Δ| computed as the max",
        "benchmarks/half_stats.py",
        "return float(np.quantile(values, 0.99))",
        "return float(np.max(values))",
        HALF_STATS,
    ),
    Mutant(
        "half precision: Δ logprob not absolute",
        "benchmarks/half_stats.py",
        "parts.append(np.abs(np.asarray(a.logprobs, dtype=np.float64) - np.asarray(b.logprobs, dtype=np.float64)))",
        "parts.append(np.asarray(a.logprobs, dtype=np.float64) - np.asarray(b.logprobs, dtype=np.float64))",
        HALF_STATS,
    ),
    Mutant(
        "half precision: compared against the wrong dtype's rows",
        "benchmarks/half_stats.py",
        "lambda c: c._replace(dtype=BASELINE_DTYPE),",
        'lambda c: c._replace(dtype="float16"),',
        HALF_STATS,
    ),
    Mutant(
        "half precision: perplexity gap judged one-sided",
        "benchmarks/half_stats.py",
        "return abs(self.ppl_gap) <= PPL_BOUND",
        "return self.ppl_gap <= PPL_BOUND",
        HALF_STATS,
    ),
    Mutant(
        "FP8 quality: the FP8 cache compared against float32 instead of its default-cache twin",
        "benchmarks/half_stats.py",
        "lambda c: c._replace(kv_cache_dtype=FP8_CACHE_BASE),",
        "lambda c: c._replace(kv_cache_dtype=FP8_CACHE_BASE, dtype=BASELINE_DTYPE),",
        HALF_STATS,
    ),
    Mutant(
        "FP8 quality: stock's FP8 gap left out of TOVA's bound",
        "benchmarks/half_stats.py",
        "return abs(self.stock.ppl_gap) + FP8_PPL_SLACK",
        "return FP8_PPL_SLACK",
        HALF_STATS,
    ),
    Mutant(
        "FP8 quality: a failed FP8 row does not fail the page",
        "benchmarks/half_report.py",
        "    passed = passed and all(v.passed is not False for v in fp8_rows)\n",
        "",
        HALF_STATS,
    ),
    Mutant(
        "FP8 quality: the job leaves the engine's cache at its default",
        "benchmarks/ppl_job.py",
        '        argv += ["--kv-cache-dtype", config.kv_cache_dtype]\n',
        "        pass\n",
        HALF_STATS,
    ),
]


#: The FP8 paths, caught by the FP8 kernel cases in Triton's interpreter (record only, about
#: 60 s each; CI runs ``MUTANTS``).
FP8_TESTS = ("tests/kernels/test_triton_kernels.py", "-k", "fp8")
INTERPRETED = (("TRITON_INTERPRET", "1"),)
_KERNELS = "vllm_tova/attention/triton_kernels.py"
_CUDA_BACKEND = "vllm_tova/attention/triton_backend.py"
FP8_MUTANTS = [
    Mutant(
        "FP8 decode: cached K read without its scale",
        _KERNELS,
        "cached_scale = scale_log2 * tl.load(k_scale) if FP8 else scale_log2",
        "cached_scale = scale_log2",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 decode: cached V read without its scale",
        _KERNELS,
        "acc = acc * tl.load(v_scale)  # V's scale, once for the split's cached entries",
        "acc = acc",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 decode: new token quantized without dividing by the scale",
        _KERNELS,
        "scaled = tl.math.div_rn(x.to(tl.float32), tl.load(scale_ptr))",
        "scaled = x.to(tl.float32)",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 decode: new token's V stored with K's scale",
        _KERNELS,
        "v_new = _quantize(v_new, v_scale, value_cache.dtype.element_ty)",
        "v_new = _quantize(v_new, k_scale, value_cache.dtype.element_ty)",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 decode: new token attended unquantized",
        _KERNELS,
        "k_new = _as_stored(k_new, k_scale, key_cache.dtype.element_ty)",
        "k_new = k_new",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 chunk: retained entries gathered as raw bytes",
        _CUDA_BACKEND,
        "packed_k[c.old_dst] = fp8.read(flat_k, c.old_slots, k_scale, key.dtype)",
        "packed_k[c.old_dst] = flat_k[c.old_slots].to(key.dtype)",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 chunk: compaction copies the dequantized values, not the e4m3 bytes",
        _CUDA_BACKEND,
        "source_k, source_v, flat_k, flat_v,",
        "packed_k, packed_v, flat_k, flat_v,",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 format: quantize without saturating",
        "vllm_tova/attention/fp8.py",
        "return (values.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(STORAGE).view(torch.uint8)",
        "return (values.float() / scale).to(STORAGE).view(torch.uint8)",
        FP8_TESTS, INTERPRETED,
    ),
    Mutant(
        "FP8 torch backend: new tokens attended unquantized",
        "vllm_tova/attention/torch_backend.py",
        "key, value = fp8.as_stored(key, scales[0]), fp8.as_stored(value, scales[1])",
        "key, value = key, value",
        FP8_TESTS, INTERPRETED,
    ),
]


#: The FP8 mutants' own baseline: their tests on the unmutated tree.
UNMUTATED_FP8 = Mutant("unmutated tree, FP8 tests", "", "", "", FP8_TESTS, INTERPRETED)

#: Server faults that only a run under load shows, and the soak test that must catch each
#: (record only, ~3 min each: ``--soak``; CI runs the soak test itself once).
SOAK_TESTS = ("tests/serve/test_soak.py",)
SOAK_MUTANTS = [
    Mutant(
        "one KV block kept by every aborted request (cancelled or reset streams)",
        "vllm_tova/kv_manager.py",
        "    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs) -> int:\n",
        "    def free(self, request_id: str) -> None:\n"
        "        request = self.requests.get(request_id) if self.requests is not None else None\n"
        "        blocks = self.req_to_blocks.get(request_id)\n"
        "        if request is not None and request.status.name == 'FINISHED_ABORTED' and blocks:\n"
        "            blocks.pop()\n"
        "        super().free(request_id)\n\n"
        "    def get_num_blocks_to_allocate(self, request_id, num_tokens, *args, **kwargs) -> int:\n",
        SOAK_TESTS,
    ),
    Mutant(
        "a prompt chunk cut short by the step's token budget is scheduled anyway (outputs depend on the batch)",
        "vllm_tova/scheduler.py",
        "return wanted if num_new_tokens >= wanted else 0",
        "return min(wanted, num_new_tokens)",
        SOAK_TESTS,
    ),
    Mutant(
        "unknown kv_* keys ignored (prefix test never matches)",
        "vllm_tova/config.py",
        "key.startswith(KEY_PREFIX) and key not in KEYS",
        "key.startswith(KEY_PREFIX + '_') and key not in KEYS",
        SOAK_TESTS,
    ),
    Mutant(
        "the front end keeps 8 MiB per request",
        "vllm_tova/patches/input_processor.py",
        "        check_extra_args(params.extra_args, settings)",
        "        check_extra_args(params.extra_args, settings)\n"
        "        _validate_params.__dict__.setdefault('kept', []).append(b'x' * (8 << 20))",
        SOAK_TESTS,
    ),
]


@dataclass
class Outcome:
    mutant: Mutant | None  # None: the unmutated tree
    failures: list[str]  # pytest's "FAILED <test> - <first line>" lines
    summary: str
    seconds: float

    @property
    def caught(self) -> bool:
        """A test failed on the mutant; an error that stops pytest itself (collection,
        import) proves nothing about the tests and is not a catch."""
        return any(line.startswith("FAILED ") for line in self.failures)


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored files)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def apply(mutant: Mutant, tree: Path) -> None:
    if not mutant.old:  # a baseline: nothing to plant
        return
    path = tree / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:  # the source moved on: a mutant that patches nothing would prove nothing
        raise RuntimeError(f"{mutant.name}: {mutant.path} holds {count} copies of {mutant.old!r}")
    path.write_text(text.replace(mutant.old, mutant.new))


def run(mutant: Mutant | None, tests: tuple[str, ...] | None = None) -> Outcome:
    """Run the mutant's tests (or ``tests``) on a copy of the tree with it applied (None: the
    fast tests, or ``tests``, on the tree as it is)."""
    tests = list(tests) if tests else FAST_TESTS if mutant is None else list(mutant.tests)
    with tempfile.TemporaryDirectory(prefix="tova-mutant-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if mutant is not None:
            apply(mutant, tree)
        # A wide terminal, so pytest's summary keeps each failure's message on its line.
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "400"}
        env.update(mutant.env if mutant is not None else ())
        command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
        start = time.monotonic()
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.monotonic() - start
    lines = done.stdout.splitlines()
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if done.returncode != 0 and not failures:  # collection or usage error: show it
        failures = [f"ERROR (pytest exit {done.returncode}) " + (lines[-1] if lines else done.stderr[-300:])]
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line), "")
    return Outcome(mutant, failures, summary.strip("= "), seconds)


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def render(outcomes: list[Outcome], command: str, tests: list[str] | tuple[str, ...] = tuple(FAST_TESTS)) -> str:
    baseline, mutants = outcomes[0], outcomes[1:]
    lines = [
        "# Mutation check: planted bugs and the tests that catch them",
        "",
        f"- command: `{command}`",
        f"- commit: {_commit()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {_machine()}",
        f"- tests: {', '.join(f'`{t}`' for t in tests)}",
        f"- unmutated tree, the same tests: {baseline.summary} ({baseline.seconds:.0f} s)",
        f"- mutants caught: {sum(o.caught for o in mutants)}/{len(mutants)}",
        "",
    ]
    for o in mutants:
        assert o.mutant is not None
        verdict = "**caught**" if o.caught else "**NOT CAUGHT**"
        lines += [
            f"## {o.mutant.name}: {verdict}",
            "",
            f"`{o.mutant.path}`: `{o.mutant.old}` → `{o.mutant.new}`",
            "",
            f"tests run: `{' '.join(o.mutant.tests)}`" + "".join(f" with {k}={v}" for k, v in o.mutant.env),
            "",
            f"{o.summary} ({o.seconds:.0f} s). Failing tests:" if o.caught else f"{o.summary} ({o.seconds:.0f} s).",
            "",
            *[f"- `{line[:400]}`" for line in o.failures],
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"default {RECORD} ({SOAK_RECORD} with --soak, {FP8_RECORD} with --fp8)",
    )
    parser.add_argument("--soak", action="store_true", help="the soak's mutants, against tests/serve/test_soak.py")
    parser.add_argument("--fp8", action="store_true", help="the FP8 mutants, against the FP8 kernel cases")
    args = parser.parse_args(argv)
    if args.fp8:  # the baseline needs the interpreter too, so it is a mutant that plants nothing
        tests, out, planned = FP8_TESTS, args.out or FP8_RECORD, [UNMUTATED_FP8, *FP8_MUTANTS]
    else:
        tests = SOAK_TESTS if args.soak else tuple(FAST_TESTS)
        out = args.out or (SOAK_RECORD if args.soak else RECORD)
        planned = [None, *(SOAK_MUTANTS if args.soak else [*MUTANTS, *REFERENCE_MUTANTS, *HALF_STATS_MUTANTS, *FP8_MUTANTS])]
    outcomes = []
    for mutant in planned:
        outcome = run(mutant, tests if mutant is None else None)
        name = "unmutated tree" if mutant is None else mutant.name
        print(f"{name}: {'caught' if outcome.caught else 'not caught'} ({outcome.summary})", flush=True)
        for line in outcome.failures:
            print(f"    {line[:200]}", flush=True)
        outcomes.append(outcome)
    if outcomes[0].caught:
        print("the unmutated tree fails its own tests: fix that first", file=sys.stderr)
        return 1
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m tests.mutations", *given])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(outcomes, command, tests) + "\n")
    print(f"wrote {out}")
    return 0 if all(o.caught for o in outcomes[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
