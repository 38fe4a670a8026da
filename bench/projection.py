"""Projection throughput: NxM mask + projection of every target of a BERT-base encoder.

Setup: 12 layers x (query, key, value, attention output: [768, 768]; FFN1 [3072, 768];
FFN2 [768, 3072]) = 72 fp32 weights, 84.9M values, random N(0, 0.02). ``--quick``: one
small layer. For each pattern, one timed call of a case is a full pass over all
weights; the cases are timed in alternation:

``floor``            one read-and-write pass, ``torch.abs(w, out=buf)`` into preallocated buffers
``nxmlab``           the reference path: ``NxM.check`` + the rank-by-counting mask + ``masked_fill``
                    (what ``nxm_mask``/``project`` ran before the kernels; still the CUDA path).
                    ``nxm_mask``/``project`` now dispatch to ``kernel`` on CPU.
``kernel``           ``nxmlab.kernels.compiled_nxm_mask_and_project`` (torch.compile, bit-identical)
``kernel_eager``     ``nxmlab.kernels.eager_nxm_mask_and_project`` (no compiler)
``torch_ao_mask``    ``torch.ao.pruning.WeightNormSparsifier(sparsity_level=1.0,
                     sparse_block_shape=(1, n), zeros_per_block=n - m).step()`` (masks only)
``torch_ao``         the same step, then every parametrized ``module.weight`` (mask * weight)
``asp_mask``         NVIDIA ASP ``create_mask(w, "m4n2_1d")``: ``mn_1d_best``, re-implemented
                     (all C(n, m) 1-D patterns, ``|W| @ patterns.T``, argmax, gather)
``asp``              the same, then ``w * mask`` (ASP multiplies the mask in)

Everything is reported as a ratio: the cases against ``floor``, the kernel against
the others. glibc's allocator is told (``mallopt``) to keep freed memory, so that
repeated passes reuse pages instead of page-faulting fresh ones; the cost of fresh
pages is measured separately first (``alloc_floor``: ``torch.abs(w)`` with every
output of the pass kept alive) and reported in the notes.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn

from .common import REPO_ROOT, alternate, fmt_ratio, machine_info, paired_ratio, summary, table, target

NAME = "projection"

FULL = {"layers": 12, "hidden": 768, "intermediate": 3072, "patterns": ["4:2", "4:1", "8:2"], "rounds": 7,
        "warmup": 1, "profile_rounds": 5, "thread_counts": [1, 2], "thread_rounds": 11}
QUICK = {"layers": 1, "hidden": 128, "intermediate": 512, "patterns": ["4:2", "4:1", "8:2"], "rounds": 2,
         "warmup": 1, "profile_rounds": 2, "thread_counts": [1, 2], "thread_rounds": 2}

#: The issue #30 goal for the 4:2 kernel at every thread count (the target is 2.0x).
THREAD_TARGET, THREAD_GOAL = 2.0, 1.5


# --------------------------------------------------------------------------- weights
def encoder_weights(layers: int, hidden: int, intermediate: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The NxMTransformer targets of a BERT encoder: 6 Linear weights per layer."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"query": (hidden, hidden), "key": (hidden, hidden), "value": (hidden, hidden),
              "attn_out": (hidden, hidden), "ffn1": (intermediate, hidden), "ffn2": (hidden, intermediate)}
    return {f"layer.{i}.{part}": torch.randn(shape, generator=g) * 0.02
            for i in range(layers) for part, shape in shapes.items()}


# ------------------------------------------------------------------------ NVIDIA ASP
def asp_patterns(n: int, m: int) -> torch.Tensor:
    """ASP's ``compute_valid_1d_patterns``: the distinct permutations of m ones and n - m zeros.

    Built as ASP builds them (a set of permutations; its iteration order decides ties).
    """
    base = [1.0] * m + [0.0] * (n - m)
    return torch.tensor(list(set(itertools.permutations(base))), dtype=torch.float32)


def asp_create_mask(weight: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """ASP's ``create_mask(w, "m4n2_1d")`` -> ``mn_1d_best`` for a 2-D weight, re-implemented.

    Groups of n along the input dim; the pattern maximising the kept ``|w|`` sum wins
    (``argmax`` of ``|W| @ patterns.T``); the mask is returned in the weight's dtype.
    """
    n = patterns.shape[1]
    t = weight.float().contiguous()
    mask = torch.ones_like(t, dtype=torch.int32).view(-1, n)
    pmax = torch.argmax(torch.matmul(t.view(-1, n).abs(), patterns.t()), dim=1)
    mask[:] = patterns[pmax]
    return mask.view(weight.shape).to(weight.dtype)


# ----------------------------------------------------------------------- torch.ao
def ao_sparsifier(weights: dict[str, torch.Tensor], n: int, m: int):
    """A prepared ``WeightNormSparsifier`` over Linear modules sharing ``weights``' storage."""
    from torch.ao.pruning import WeightNormSparsifier

    model = nn.ModuleList()
    for w in weights.values():
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")  # no init: the weight is ours
        lin.weight = nn.Parameter(w, requires_grad=False)
        model.append(lin)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, n), zeros_per_block=n - m)
    sparsifier.prepare(model, config=[{"tensor_fqn": f"{i}.weight"} for i in range(len(model))])
    return sparsifier, model


def ao_masks(model) -> list[torch.Tensor]:
    return [lin.parametrizations.weight[0].mask for lin in model]


# ---------------------------------------------------------------------------- malloc
def keep_freed_memory() -> str:
    """Ask glibc to keep freed memory (no ``mmap`` per big tensor, no trimming)."""
    if not sys.platform.startswith("linux"):
        return "not linux: allocator left as is"
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok1 = libc.mallopt(m_mmap_threshold, 1 << 30)
        ok2 = libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        return f"glibc mallopt(M_MMAP_THRESHOLD=1 GiB)={ok1}, mallopt(M_TRIM_THRESHOLD=2 GiB)={ok2}"
    except OSError as exc:
        return f"mallopt unavailable ({exc})"


# ----------------------------------------------------------------------- fresh pages
def _fresh_pages_child(cfg: dict[str, Any]) -> dict[str, list[float]]:
    """``floor`` vs ``alloc_floor`` (every output of the pass kept alive) in this new process."""
    torch.set_num_threads(int(cfg["threads"]))
    ws = list(encoder_weights(cfg["layers"], cfg["hidden"], cfg["intermediate"]).values())
    bufs = [torch.empty_like(w) for w in ws]

    def floor():
        for w, b in zip(ws, bufs):
            torch.abs(w, out=b)

    def alloc_floor():
        outs = [torch.abs(w) for w in ws]
        del outs

    return alternate({"floor": floor, "alloc_floor": alloc_floor}, rounds=cfg["rounds"], warmup=cfg["warmup"])


def measure_fresh_pages(cfg: dict[str, Any]) -> dict[str, list[float]] | None:
    cmd = [sys.executable, "-m", "bench.projection", "--fresh-pages-child",
           json.dumps({**cfg, "threads": torch.get_num_threads()})]
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        for line in reversed(out.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return None


# ------------------------------------------------------------------------------- run
def run(quick: bool = False, **_: Any) -> dict[str, Any]:
    from nxmlab import kernels
    from nxmlab.nxm import NxM, _reference_mask

    def nxm_mask(w, spec):  # the reference path (pre-kernel), whatever the dispatch does
        pattern = NxM.parse(spec)
        pattern.check(w)
        return _reference_mask(w, pattern)

    cfg = dict(QUICK if quick else FULL)
    weights = encoder_weights(cfg["layers"], cfg["hidden"], cfg["intermediate"])
    ws = list(weights.values())
    numel = sum(w.numel() for w in ws)
    bufs = [torch.empty_like(w) for w in ws]
    notes: list[str] = []

    def floor():
        for w, b in zip(ws, bufs):
            torch.abs(w, out=b)

    fresh = measure_fresh_pages(cfg)  # in a new process: this one's allocator state depends on its history
    allocator = keep_freed_memory()

    results: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    for spec in cfg["patterns"]:
        n, m = (int(x) for x in spec.split(":"))
        patterns = asp_patterns(n, m)
        sparsifier, model = ao_sparsifier(weights, n, m)

        tic = time.perf_counter()
        try:
            for w in ws:  # compile (once per pattern) outside the timed rounds
                kernels.compiled_nxm_mask_and_project(w, n, m)
            compiled_ok = True
        except Exception as exc:  # no C++ compiler etc.: time everything else
            compiled_ok = False
            notes.append(f"{spec}: torch.compile failed ({type(exc).__name__}: {exc}); kernel not timed")
        compile_seconds = time.perf_counter() - tic

        def nxmlab_current():
            for w in ws:
                mask = nxm_mask(w, spec)
                w.masked_fill(~mask, 0)

        def kernel():
            for w in ws:
                kernels.compiled_nxm_mask_and_project(w, n, m)

        def kernel_eager():
            for w in ws:
                kernels.eager_nxm_mask_and_project(w, n, m)

        def ao_mask():
            sparsifier.step()

        def ao_full():
            sparsifier.step()
            for lin in model:
                lin.weight  # noqa: B018  (parametrization: mask * original)

        def asp_mask():
            for w in ws:
                asp_create_mask(w, patterns)

        def asp_full():
            for w in ws:
                w * asp_create_mask(w, patterns)

        cases = {"floor": floor, "nxmlab": nxmlab_current, "kernel": kernel, "kernel_eager": kernel_eager,
                 "torch_ao_mask": ao_mask, "torch_ao": ao_full, "asp_mask": asp_mask, "asp": asp_full}
        if not compiled_ok:
            cases["kernel"] = kernel_eager  # keep the structure; flagged in the notes
        times = alternate(cases, rounds=cfg["rounds"], warmup=cfg["warmup"])

        # agreement of the masks with nxmlab's (ties are broken differently)
        agree = {}
        with torch.no_grad():
            sparsifier.step()
            ao = ao_masks(model)
            same_ao = same_asp = 0
            for w, mk in zip(ws, ao):
                ref = nxm_mask(w, spec)
                same_ao += int((mk.bool() == ref).sum())
                same_asp += int((asp_create_mask(w, patterns).bool() == ref).sum())
                got, _ = (kernels.compiled_nxm_mask_and_project if compiled_ok else
                          kernels.eager_nxm_mask_and_project)(w, n, m)
                assert torch.equal(got, ref), "kernel mask differs from nxm_mask"
            agree = {"torch_ao": same_ao / numel, "asp": same_asp / numel, "kernel": 1.0}
        del sparsifier, model  # (not squash_mask: that would prune the shared weights in place)

        ratios = {name: paired_ratio(t, times["floor"]) for name, t in times.items() if name != "floor"}
        kernel_vs = {
            "torch_ao_mask": paired_ratio(times["kernel"], times["torch_ao_mask"]),
            "torch_ao": paired_ratio(times["kernel"], times["torch_ao"]),
            "asp_mask": paired_ratio(times["kernel"], times["asp_mask"]),
            "asp": paired_ratio(times["kernel"], times["asp"]),
            "nxmlab": paired_ratio(times["kernel"], times["nxmlab"]),
        }
        results[spec] = {
            "seconds": {name: summary(t) for name, t in times.items()},
            "ratio_vs_floor": ratios,
            "kernel_vs": kernel_vs,
            "mask_agreement_with_nxmlab": agree,
            "kernel_compile_seconds": compile_seconds,
            "kernel_compiled": compiled_ok,
        }
        k_floor = ratios["kernel"]["median"]
        targets[f"{spec} kernel / floor"] = target(3.0, k_floor)
        targets[f"{spec} kernel / torch_ao (mask + projection)"] = target(1.0, kernel_vs["torch_ao"]["median"], "<")
        targets[f"{spec} kernel / asp (mask + projection)"] = target(1.0, kernel_vs["asp"]["median"], "<")
        targets[f"{spec} reference rank loop (pre-kernel, CUDA path) / floor"] = target(3.0, ratios["nxmlab"]["median"])

        profile[spec] = _profile(ws, spec, n, m, cfg["profile_rounds"], floor, compiled_ok and not quick)

    threads: dict[str, Any] = {}
    if "4:2" in cfg["patterns"] and results.get("4:2", {}).get("kernel_compiled"):
        threads["4:2"] = thread_sweep(ws, bufs, "4:2", cfg["thread_counts"], cfg["thread_rounds"], cfg["warmup"])
        one = threads["4:2"].get("1", {}).get("seconds", {}).get("floor", {}).get("median")
        for count, res in threads["4:2"].items():
            ratio = res["kernel_vs_floor"]["median"]
            # on a free machine more threads never slow the floor (a memory-bound torch.abs)
            # down; when they do, another job holds a core and the parallel loops wait for it
            res["floor_speedup_vs_1_thread"] = one / res["seconds"]["floor"]["median"] if one else None
            res["contended"] = bool(count != "1" and res["floor_speedup_vs_1_thread"] is not None
                                    and res["floor_speedup_vs_1_thread"] < 0.9)
            t = target(THREAD_TARGET, ratio)
            if res["contended"]:
                t["met"] = False
                res["why_void"] = ("not measurable here: the floor ran slower at this thread count than at 1 "
                                f"({res['floor_speedup_vs_1_thread']:.2f}x), so the cores were busy")
                notes.append(f"threads: the {count}-thread figure is void (floor slower than at 1 thread); "
                             "rerun with the cores free.")
            targets[f"4:2 kernel / floor at {count} thread{'s' if count != '1' else ''}"] = t

    fresh_ratio = paired_ratio(fresh["alloc_floor"], fresh["floor"])["median"] if fresh else None
    if fresh_ratio is None:
        fresh_note = "Fresh pages: the child process measuring them failed (see fresh_pages)."
    else:
        fresh_note = (
            f"Fresh pages (measured in a new process, default allocator): writing the {numel * 4 / 1e6:.0f} MB "
            f"of outputs into newly allocated tensors that all stay alive (torch.abs(w) without out=) costs "
            f"{fresh_ratio:.2f}x the floor"
            + " (the excess over 1x is allocation and first-touch page faults). Under glibc's defaults a case "
            "that returns new tensors may or may not pay this, depending on the process's allocation history "
            "(late in a long process the same measurement can read ~1x), so the cases are compared with freed "
            "memory kept (mallopt): steady-state compute + memory traffic.")
    notes += [
        f"threads: {torch.get_num_threads()}; allocator: {allocator}.",
        fresh_note,
        "kernel = nxmlab.kernels.compiled_nxm_mask_and_project: one Inductor C++ loop over groups, "
        "vectorised (cpp.enable_tiling_heuristics=False; by default Inductor refuses to vectorise the "
        "stride-n loads and runs the loop scalar, ~3x slower). It reads the weight once, as 64-bit "
        "chunks, and compares sign-cleared bits as integers; the mask is stored as one packed integer "
        "per group, the projection as the chunks ANDed with the keep mask, and the NaN/Inf check is a "
        "reduction in the same loop (no second pass). After the first call per pattern, dtype and "
        "thread count the compiled graph is called directly, without Dynamo's per-call overhead. "
        "Bit-identical to nxm_mask/project (asserted here and in tests/test_kernels.py).",
        f"threads: the 4:2 kernel against the floor at each of {cfg['thread_counts']} torch threads, "
        f"in this process, {cfg['thread_rounds']} alternated rounds each (issue #30: target <= "
        f"{THREAD_TARGET}x, goal {THREAD_GOAL}x). Both cases run at the same thread count; "
        "a machine with other work on its cores reads higher at 2 threads.",
        "nxmlab (today) = nxm_mask + masked_fill: torch.isfinite(w).all() (allocates a bool tensor, "
        "~10x a sum), w.abs(), then a rank count over the n positions with slices of [G, n] "
        "(2n strided uint8 ops), rank < m, ~mask, masked_fill (see profile).",
        "torch_ao: WeightNormSparsifier with sparsity_level=1.0 makes the tensor mask all zeros and "
        "ORs it with the block mask: pad + F.unfold + topk(k=n-m, smallest) + scatter + F.fold on "
        "w*w (L2 norm), a float32 mask; torch_ao adds the parametrization's mask * weight.",
        "asp: float copy, int32 ones mask, [G, n] @ [n, C(n,m)] matmul, argmax, gather of patterns, "
        "cast to the weight dtype; asp adds w * mask.",
        "mask_agreement_with_nxmlab: fraction of positions where the baseline's mask equals nxm_mask's "
        "(differences come from ties, and float sums for ASP).",
    ]
    k42 = results.get("4:2", {}).get("ratio_vs_floor", {}).get("kernel", {}).get("median")
    if k42 is not None and k42 > 3:
        notes.append("4:2 kernel missed the 3x target: see profile (validation/launch overhead vs the "
                     "kernel itself).")
    return {
        "name": NAME,
        "machine": machine_info(),
        "config": {**cfg, "quick": quick, "targets": len(ws), "values": numel, "dtype": "float32",
                   "init": "N(0, 0.02)", "allocator": allocator},
        "fresh_pages": ({"seconds": {k: summary(v) for k, v in fresh.items()},
                         "alloc_floor_vs_floor": paired_ratio(fresh["alloc_floor"], fresh["floor"]),
                         "where": "a new process, glibc defaults"} if fresh else None),
        "results": results,
        "threads": threads,
        "profile": profile,
        "targets": targets,
        "notes": notes,
    }


def _profile(ws, spec: str, n: int, m: int, rounds: int, floor, kernel_variants: bool) -> dict[str, Any]:
    """Sub-steps of today's nxm_mask + projection and of the kernel call, vs the floor."""
    from nxmlab import kernels
    from nxmlab.nxm import NxM

    pattern = NxM.parse(spec)

    def isfinite_all():
        for w in ws:
            bool(torch.isfinite(w).all())

    def abs_alloc():
        for w in ws:
            w.abs()

    def rank_loop():
        for w in ws:
            a = w.abs().reshape(-1, n)
            rank = torch.zeros(a.shape, dtype=torch.uint8)
            for j in range(n):
                aj = a[:, j:j + 1]
                rank[:, : j + 1] += aj > a[:, : j + 1]
                rank[:, j + 1:] += aj >= a[:, j + 1:]
            rank < pattern.m

    masks = [torch.ones_like(w, dtype=torch.bool) for w in ws]

    def masked_fill():
        for w, mk in zip(ws, masks):
            w.masked_fill(~mk, 0)

    def kernel_nocheck():
        for w in ws:
            kernels.compiled_nxm_mask_and_project(w, n, m, check=False)

    def kernel():
        for w in ws:
            kernels.compiled_nxm_mask_and_project(w, n, m)

    cases = {"floor": floor, "isfinite_all": isfinite_all, "abs": abs_alloc, "rank_loop": rank_loop,
             "masked_fill": masked_fill}
    if kernel_variants:  # (each variant is one more compilation: not in --quick)
        kernel_nocheck()  # compile the check=False variant outside the timed rounds
        cases.update(kernel=kernel, kernel_no_finite_check=kernel_nocheck)
    times = alternate(cases, rounds=rounds, warmup=1)
    return {"ratio_vs_floor": {k: paired_ratio(v, times["floor"])["median"] for k, v in times.items()
                               if k != "floor"},
            "what": "today's nxm_mask = isfinite_all + abs + rank_loop (+ ~mask + masked_fill for the "
                    "projection); kernel_no_finite_check shows the cost of the fused NaN/Inf check"}


def thread_sweep(ws, bufs, spec: str, counts: list[int], rounds: int, warmup: int) -> dict[str, Any]:
    """The kernel against the floor for one pattern at each torch thread count, in this process.

    Both cases run at the same thread count in a round (the floor's ``torch.abs`` is
    parallel too). The kernel compiles once per thread count (Dynamo guards on it),
    outside the timed rounds; the count is restored afterwards.
    """
    from nxmlab import kernels

    n, m = (int(x) for x in spec.split(":"))
    before = torch.get_num_threads()
    out: dict[str, Any] = {}
    try:
        for count in counts:
            torch.set_num_threads(count)

            def floor():
                for w, b in zip(ws, bufs):
                    torch.abs(w, out=b)

            def kernel():
                for w in ws:
                    kernels.compiled_nxm_mask_and_project(w, n, m)

            kernel()  # compile for this thread count
            times = alternate({"floor": floor, "kernel": kernel}, rounds=rounds, warmup=warmup)
            out[str(count)] = {"threads": torch.get_num_threads(),
                               "seconds": {k: summary(v) for k, v in times.items()},
                               "kernel_vs_floor": paired_ratio(times["kernel"], times["floor"])}
    finally:
        torch.set_num_threads(before)
    return out


def summarize(payload: dict[str, Any]) -> str:
    rows = []
    for spec, res in payload["results"].items():
        r = res["ratio_vs_floor"]
        kv = res["kernel_vs"]
        rows.append([spec, fmt_ratio(r["kernel"]["median"]), fmt_ratio(r["kernel_eager"]["median"]),
                     fmt_ratio(r["nxmlab"]["median"]), fmt_ratio(r["torch_ao"]["median"]),
                     fmt_ratio(r["asp"]["median"]), fmt_ratio(kv["torch_ao"]["median"]),
                     fmt_ratio(kv["asp"]["median"]), fmt_ratio(kv["nxmlab"]["median"])])
    head = ["pattern", "kernel/floor", "kernel_eager/floor", "nxmlab/floor", "torch_ao/floor", "asp/floor",
            "kernel/torch_ao", "kernel/asp", "kernel/nxmlab"]
    fresh = (payload.get("fresh_pages") or {}).get("alloc_floor_vs_floor", {}).get("median")
    sweep = "; ".join(f"{count} thread(s): {fmt_ratio(res['kernel_vs_floor']['median'])}"
                      for count, res in (payload.get("threads") or {}).get("4:2", {}).items())
    if sweep:
        head_line = f"4:2 kernel / floor by torch threads, same process: {sweep}\n"
    else:
        head_line = ""
    return head_line + (f"projection ({payload['config']['values'] / 1e6:.1f}M values, {payload['config']['targets']} weights; "
            f"fresh-page output costs {fmt_ratio(fresh)} the floor in a new process)\n" + table(rows, head))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--fresh-pages-child":
    print(json.dumps(_fresh_pages_child(json.loads(sys.argv[2]))))
