"""The scoring engine measured against the reward-model code users write today.

One run, one table. Every row scores the same texts; every ratio is taken inside
the run against a reference timed right before and right after the row (so load
from other processes hits both alike), and the median over repeats is reported.
On a CPU the run uses one torch thread (``--threads``) and "seconds" are the
process's CPU time: on a shared machine a second thread mostly waits for a core
that another process holds, and wall-clock time counts that wait (the JSON keeps
the wall-clock seconds too). On a GPU they are wall-clock seconds.

Baselines, written plainly with transformers (no auq inside):

* ``TRL-style 1 RM``       — ``AutoModel`` + ``nn.Linear`` head, batches of ``--batch-size``
  in the caller's order, each padded to its longest (TRL's scoring per generation batch);
* ``K separate RMs``       — K deep copies, each with its own head, scored one after the
  other in the same caller-order padded batches (a hand-built reward ensemble);
* ``PEFT K adapters, loop`` — one ``peft`` model with K LoRA adapters, ``set_adapter``
  in a Python loop: one full backbone pass per adapter (RewardUQ-style).

auq rows: ``auq 1 RM`` (one linear head, the reference of every ratio), every
``uq=`` method, length bucketing off (``scoring={"bucketing": False}``), and on a
decoder's best-of-n workload prefix sharing off. Heads are marked fitted
(``rm.head.fitted_.fill_(True)``) without training: rewards come from the random
initialisation, which does not change the cost. The feature cache is off.

Workloads: ``pairs`` — (prompt, response) rows whose token counts follow a
lognormal mix (median 64, sigma 0.8, clipped to [8, 512]: the 99.5th percentile is
512), drawn at stratified quantiles and shuffled; ``best-of-n`` — n = 16 responses
per prompt, prompts 4x longer than responses (decoders only: prefix sharing needs
a causal model); ``fixed-512`` — 512-token rows for the MFU figure (GPU only).
Texts are built from the built-in data's words to a target token count and the
realised counts are printed.

Columns: sequences/s and tokens/s (tokens of the texts, padding excluded); time
relative to ``auq 1 RM`` and to ``TRL-style 1 RM``; the method's cost bound (in
one-model forwards) and time / bound; ``run/r`` = tokens the forwards ran per
member pass, padding included, over the tokens of the texts (rows that share a
prompt: tokens run without padding, the prefix once);
the parameter bytes the scorer holds (unique storages of parameters and buffers);
peak resident memory during its calls (the kernel's own peak, reset per call via
``/proc/self/clear_refs``; where that is missing a psutil sampler, else
``ru_maxrss``) and its rise over the memory before the call; on GPU, peak
allocated memory and the model-FLOP utilisation 2·params·tokens/time (non-embedding
parameters of one model) over a measured bf16 matmul peak.

Default sizes (``SIZES``) keep a CPU run near 15 minutes on 2 shared cores: 256 pairs
on tiny, 48 on MiniLM, 12 on the 100M decoder (which skips the hand-built ensembles
and the bucketing row: those cost ~10 forwards and are measured on the other two,
and 12 rows make two batches), best-of-16 over 8 and 2 prompts.

    python benchmarks/bench_scoring.py             # tiny, MiniLM, 100M decoder (~15 min, 2 cores)
    python benchmarks/bench_scoring.py --quick     # CI smoke run (tiny backbone only)
    python benchmarks/bench_scoring.py --backbones minilm --methods heads,partial,mc_dropout
    python benchmarks/bench_scoring.py --device cuda --backbones minilm,decoder100m,decoder1b \\
        --out benchmarks/results/bench_scoring_h100.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import transformers
from _common import device_name, synchronize
from torch import nn

import auq
from auq.data.builtin import load_builtin_preferences
from auq.utils.defaults import default_backbone_path

UQ_METHODS = ("heads", "laplace", "pyro", "lora", "partial", "deep", "mc_dropout")
COMPARISONS = ("trl", "separate", "peft_loop", "bucketing", "prefix")
ALL_BACKBONES = ("tiny", "minilm", "decoder100m", "decoder1b")
GPU_ONLY = ("decoder1b",)
K, K_HEADS, TOP_LAYERS = 5, 8, 1  # ensemble size, head-ensemble size, partial's copied layers
BEST_OF_N = 16
MAX_LENGTH = 512
DEVICE = torch.device("cpu")  # set by main()
PEAK_FLOPS: float | None = None  # measured bf16 matmul FLOP/s on a GPU
#: what "seconds" are: the process's CPU time on a one-thread CPU run (time spent waiting
#: for a core that other processes hold does not count), else wall-clock time
CLOCK: Callable[[], float] = time.perf_counter

#: per backbone: pairs scored, best-of-n prompts (x16 responses) and their token lengths,
#: repeats of the rows that cost about one model (K-forward rows: --repeats-costly)
SIZES = {
    "tiny": {"n_pairs": 256, "n_prompts": 8, "prompt_tokens": 128, "response_tokens": 32},
    "minilm": {
        "n_pairs": 48,
        "n_prompts": 0,
        "prompt_tokens": 0,
        "response_tokens": 0,
        "repeats": 5,
    },
    "decoder100m": {
        "n_pairs": 12,
        "n_prompts": 2,
        "prompt_tokens": 96,
        "response_tokens": 24,
        # ~10 one-model forwards each, measured on tiny and MiniLM; 12 rows make 2 batches
        "skip": ("separate", "peft_loop", "bucketing"),
    },
    "decoder1b": {"n_pairs": 512, "n_prompts": 16, "prompt_tokens": 256, "response_tokens": 64},
}
QUICK_SIZES = {"tiny": {"n_pairs": 32, "n_prompts": 2, "prompt_tokens": 48, "response_tokens": 12}}


# -----------------------------------------------------------------------------
# backbones: built from configs (random weights) or the packaged MiniLM


def build_backbone(name: str, root: Path, dtype: torch.dtype) -> Path:
    """A local model directory for ``name`` (GPT-2-style decoders share MiniLM's tokenizer)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    minilm = default_backbone_path()
    if name == "minilm":
        return minilm
    shape = {  # n_embd, n_layer, n_head: ~2M (mostly embeddings), ~108M and ~1.27B parameters
        "tiny": (64, 2, 2),
        "decoder100m": (1024, 6, 16),
        "decoder1b": (2048, 24, 16),
    }[name]
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        n_embd=shape[0],
        n_layer=shape[1],
        n_head=shape[2],
        n_positions=1024,
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):  # a 1B model initialises in seconds on the GPU
        model = GPT2Model(config).to(dtype)
    path = root / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -----------------------------------------------------------------------------
# workloads: texts of a target token count


@dataclass
class Workload:
    name: str
    prompts: list[str]
    responses: list[str]
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))  # realised tokens per row

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def describe(self) -> str:
        q = np.percentile(self.lengths, [50, 90, 100]).astype(int)
        return (
            f"{self.name}: {self.n} rows, {self.tokens} tokens (median {q[0]}, p90 {q[1]}, "
            f"max {q[2]})"
        )


class TextMaker:
    """Texts of exactly n WordPiece tokens from the built-in data's words."""

    def __init__(self, tokenizer, seed: int = 0):
        data = load_builtin_preferences(300, seed=0)
        text = " ".join([*data.prompts, *data.chosen, *data.rejected]).lower()
        words = sorted(set(re.findall(r"[a-z]+", text)))
        counts = [len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]]
        self.words = np.array(words)
        self.counts = np.array(counts)
        self.single = self.words[self.counts == 1]
        self.rng = np.random.default_rng(seed)

    def text(self, n_tokens: int) -> str:
        out, left = [], max(int(n_tokens), 1)
        while left > 0:  # WordPiece splits on spaces: token counts add up word by word
            i = self.rng.integers(len(self.words))
            if self.counts[i] > left:
                out.append(self.single[self.rng.integers(len(self.single))])
                left -= 1
            else:
                out.append(self.words[i])
                left -= self.counts[i]
        return " ".join(out)


def pairs_workload(maker: TextMaker, n: int) -> Workload:
    """Lognormal token counts (median 64, sigma 0.8, in [8, 512]) at stratified quantiles."""
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    total = np.clip(np.round(64 * np.exp(0.8 * z)), 8, 512).astype(int) - 3  # less [CLS], [SEP]s
    maker.rng.shuffle(total)  # the caller's order is random in length
    prompt = np.maximum(1, np.round(0.4 * total)).astype(int)
    prompts = [maker.text(p) for p in prompt]
    responses = [" " + maker.text(max(t - p, 1)) for t, p in zip(total, prompt, strict=True)]
    return Workload("pairs", prompts, responses)


def best_of_n_workload(maker: TextMaker, n_prompts: int, prompt_tokens: int, response_tokens: int):
    """n_prompts prompts x 16 responses; responses vary in length (0.5x to 1.5x)."""
    prompts, responses = [], []
    for _ in range(n_prompts):
        prompt = maker.text(prompt_tokens)
        for _ in range(BEST_OF_N):
            length = maker.rng.integers(response_tokens // 2, response_tokens * 3 // 2 + 1)
            prompts.append(prompt)
            responses.append(" " + maker.text(length))
    return Workload("best-of-n", prompts, responses)


def fixed_workload(maker: TextMaker, n: int, length: int = 512) -> Workload:
    """n decoder rows of exactly ``length`` tokens ([CLS] prompt response [SEP])."""
    prompts = [maker.text(length // 4) for _ in range(n)]
    responses = [" " + maker.text(length - length // 4 - 2) for _ in range(n)]
    return Workload(f"fixed-{length}", prompts, responses)


# -----------------------------------------------------------------------------
# the baselines a user writes today (plain transformers + peft)


def pool(hidden: torch.Tensor, mask: torch.Tensor, encoder: bool) -> torch.Tensor:
    """Mean over real tokens (encoders) or the last real token (decoders, right padding)."""
    if encoder:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]


class TRLStyleScorer:
    """K reward models (AutoModel + linear head) scored one after the other.

    Batches of ``batch_size`` rows in the caller's order, each padded to its longest:
    K = 1 is TRL's reward scoring; K > 1 a hand-built ensemble of K deep copies.
    """

    def __init__(self, path: Path, n_models: int, *, max_length: int, device, dtype):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.models = [base] + [copy.deepcopy(base) for _ in range(n_models - 1)]
        d = base.config.hidden_size
        self.heads = [nn.Linear(d, 1).to(device, dtype) for _ in range(n_models)]
        self.encoder = base.config.model_type == "bert"
        self.max_length, self.device = max_length, device
        self.padded_tokens = 0

    def batches(self, prompts, responses, batch_size):
        for i in range(0, len(prompts), batch_size):
            p, r = prompts[i : i + batch_size], responses[i : i + batch_size]
            texts = (p, r) if self.encoder else ([a + b for a, b in zip(p, r, strict=True)],)
            enc = self.tokenizer(
                *texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            yield {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def score(self, prompts, responses, batch_size):
        batches = list(self.batches(prompts, responses, batch_size))
        self.padded_tokens = sum(b["input_ids"].numel() for b in batches)
        rewards = []
        for model, head in zip(self.models, self.heads, strict=True):
            out = []
            for batch in batches:
                hidden = model(**batch).last_hidden_state
                out.append(head(pool(hidden, batch["attention_mask"], self.encoder)).squeeze(-1))
            rewards.append(torch.cat(out))
        return torch.stack(rewards).float().cpu()  # (K, N)

    @property
    def modules(self):
        return [*self.models, *self.heads]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Every nn.Linear / Conv1D except the pooler (the layers auq's LoRA members adapt)."""
    from transformers.pytorch_utils import Conv1D

    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | Conv1D) and "pooler" not in name
    ]


class PeftLoopScorer(TRLStyleScorer):
    """One PEFT model with K LoRA adapters (r=8, alpha=16), ``set_adapter`` in a loop."""

    def __init__(self, path: Path, n_adapters: int, *, max_length: int, device, dtype):
        from peft import LoraConfig, get_peft_model

        super().__init__(path, 1, max_length=max_length, device=device, dtype=dtype)
        base = self.models[0]
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=linear_layer_names(base),
            fan_in_fan_out=base.config.model_type == "gpt2",  # GPT-2's Conv1D layers
        )
        self.names = [f"member_{k}" for k in range(n_adapters)]
        self.model = get_peft_model(base, config, adapter_name=self.names[0])
        for name in self.names[1:]:
            self.model.add_adapter(name, config)
        self.model.to(device).eval()
        d = base.config.hidden_size
        self.heads = [nn.Linear(d, 1).to(device, dtype) for _ in range(n_adapters)]

    @torch.inference_mode()
    def score(self, prompts, responses, batch_size):
        batches = list(self.batches(prompts, responses, batch_size))
        self.padded_tokens = sum(b["input_ids"].numel() for b in batches)
        rewards = []
        for name, head in zip(self.names, self.heads, strict=True):
            self.model.set_adapter(name)  # one full backbone pass per adapter
            out = []
            for batch in batches:
                hidden = self.model(**batch).last_hidden_state
                out.append(head(pool(hidden, batch["attention_mask"], self.encoder)).squeeze(-1))
            rewards.append(torch.cat(out))
        return torch.stack(rewards).float().cpu()

    @property
    def modules(self):
        return [self.model, *self.heads]


# -----------------------------------------------------------------------------
# auq models


def method_options(uq: str) -> dict:
    return {
        "heads": {"n_members": K_HEADS},
        "laplace": {},
        "pyro": {"head_options": {"num_steps": 10}},
        "lora": {"n_members": K, "member_options": {"r": 8}},
        "partial": {"n_members": K, "member_options": {"n_top_layers": TOP_LAYERS}},
        "deep": {"n_members": K},
        "mc_dropout": {"n_passes": K},
        "one": {"n_members": 1},
    }[uq]


def auq_model(path: Path, uq: str, *, max_length: int, device, dtype) -> auq.RewardModel:
    rm = auq.RewardModel.from_backbone(
        path,
        uq="heads" if uq == "one" else uq,
        max_length=max_length,
        device=device,
        dtype=dtype,
        scoring={"feature_cache": False},
        **method_options(uq),
    )
    rm.head.fitted_.fill_(True)  # timing only: the random initial head costs the same
    return rm


def cost_bound(uq: str, n_layers: int) -> float:
    """One-model forwards a method needs at least (its cost relative to one reward model)."""
    if uq in ("heads", "laplace", "pyro", "one"):
        return 1.0
    if uq == "partial":
        return (n_layers - TOP_LAYERS + K * TOP_LAYERS) / n_layers
    return float(K)  # lora, deep: K members; mc_dropout: T = K passes


# -----------------------------------------------------------------------------
# measurement: memory, parameter bytes, interleaved timing


def param_bytes(modules) -> int:
    """Bytes of the unique storages of every parameter and buffer (shared ones once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory of a block: the kernel's VmHWM reset per block (exact), else a
    psutil sampler thread (every 1 ms), else ``ru_maxrss`` (a lifetime peak: rises only)."""

    def __init__(self):
        self.method = "ru_maxrss"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            try:
                import psutil

                self._proc = psutil.Process()
                self.method = "psutil"
            except ImportError:
                pass
        try:  # malloc_trim gives freed memory back, so that a call's rise is its own
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None

    def _hwm(self) -> int:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM"))
        return int(line.split()[1]) * 1024

    def run(self, fn) -> tuple[float, float, int, int]:
        """(seconds, wall seconds, peak bytes, bytes before) of one call of ``fn``."""
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        before = {"VmHWM": _rss, "psutil": lambda: self._proc.memory_info().rss}.get(
            self.method, self._maxrss
        )()
        peak = [before]
        if self.method == "VmHWM":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        stop = threading.Event()
        if self.method == "psutil":

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], self._proc.memory_info().rss)
                    time.sleep(0.001)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        seconds, wall = timed_call(fn)
        stop.set()
        if self.method == "VmHWM":
            peak[0] = self._hwm()
        elif self.method == "psutil":
            sampler.join()
        else:
            peak[0] = self._maxrss()
        return seconds, wall, peak[0], before

    @staticmethod
    def _maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_call(fn) -> tuple[float, float]:
    """(seconds by :data:`CLOCK`, wall-clock seconds) of one call of ``fn``."""
    synchronize(DEVICE)
    start, wall = CLOCK(), time.perf_counter()
    fn()
    synchronize(DEVICE)
    return CLOCK() - start, time.perf_counter() - wall


@dataclass
class Case:
    """One row: a scorer of the whole workload and what it holds."""

    name: str
    method: str
    score: Callable[[], object]
    modules: list
    bound: float | None = None  # forwards of one model it needs (auq methods)
    run_tokens: Callable[[], float] | None = None  # tokens run per member pass, last call
    repeats: int = 1
    warmup: Callable[[], object] | None = None
    batch: int = 0  # rows per batch (items per micro-batch for auq)


class Interleaved:
    """Times cases between calls of a reference: ratio = t / mean(ref before, ref after)."""

    def __init__(self, ref: Case, memory: PeakMemory):
        self.ref, self.memory = ref, memory
        self.ref.warmup()
        self.ref_calls = [self._call(ref)]

    def _call(self, case: Case) -> dict:
        """One timed call: seconds, host memory, GPU memory and tokens run."""
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats(DEVICE)
        seconds, wall, peak, before = self.memory.run(case.score)
        return {
            "seconds": seconds,
            "wall": wall,
            "peak": peak,
            "rise": peak - before,
            "gpu": torch.cuda.max_memory_allocated(DEVICE) if DEVICE.type == "cuda" else None,
            "run_tokens": case.run_tokens() if case.run_tokens else None,  # before the next call
        }

    def measure(self, case: Case) -> dict:
        case.warmup()
        calls, ratios = [], []
        for _ in range(case.repeats):
            before_ref = self.ref_calls[-1]["seconds"]
            calls.append(self._call(case))
            self.ref_calls.append(self._call(self.ref))
            ratios.append(calls[-1]["seconds"] / ((before_ref + self.ref_calls[-1]["seconds"]) / 2))
        return summarise(case, calls, ratios)

    def ref_row(self) -> dict:
        row = summarise(self.ref, self.ref_calls, [1.0] * len(self.ref_calls))
        first = self.ref_calls[0]  # memory while the reference was the only model loaded
        row["peak_rss_bytes"], row["rss_rise_bytes"] = first["peak"], first["rise"]
        return row


def summarise(case: Case, calls: list[dict], ratios: list[float]) -> dict:
    """A row: medians of time and ratio, peaks of memory."""
    gpu = [c["gpu"] for c in calls if c["gpu"] is not None]
    return {
        "case": case.name,
        "method": case.method,
        "batch_size": case.batch,
        "seconds": statistics.median(c["seconds"] for c in calls),
        "wall_seconds": statistics.median(c["wall"] for c in calls),
        "ratio_auq_1rm": statistics.median(ratios),
        "bound": case.bound,
        "run_tokens": calls[-1]["run_tokens"],
        "param_bytes": param_bytes(case.modules),
        "peak_rss_bytes": max(c["peak"] for c in calls),
        "rss_rise_bytes": max(c["rise"] for c in calls),
        "gpu_peak_bytes": max(gpu) if gpu else None,
        "repeats": len(calls),
        "ratios": ratios,
    }


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (8192^3, best of 10)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = min(timed_call(lambda: a @ b)[1] for _ in range(10))
    return 2 * 8192**3 / best


def non_embedding_params(model: nn.Module) -> int:
    """Parameters of one model less its embedding tables (lookups, not matmuls)."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embeddings


# -----------------------------------------------------------------------------
# one backbone: its cases, each interleaved with auq 1 RM


def with_scoring(rm: auq.RewardModel, fn: Callable, options: dict) -> Callable:
    """``fn`` with ``rm.scoring`` changed by ``options`` for its duration."""
    if not options:
        return fn

    def run():
        saved = rm.scoring
        rm.scoring = saved.replace(**options)
        try:
            return fn()
        finally:
            rm.scoring = saved

    return run


def auq_case(rm, label, method, work, batch, *, bound=None, repeats=1, **scoring) -> Case:
    """A row scoring ``work`` with ``rm.score`` (``scoring``: options changed for the row)."""

    def run_tokens() -> float:
        stats = rm.last_scoring_stats
        if stats.n_prefix_shared:  # padded_tokens counts each continuation's attention span
            return stats.real_tokens  # tokens run, prefixes once, padding not counted
        return stats.padded_tokens / rm.backbone.rows_per_item  # per member pass

    return Case(
        label,
        method,
        with_scoring(rm, lambda: rm.score(work.prompts, work.responses, batch_size=batch), scoring),
        [rm],
        bound,
        run_tokens,
        repeats,
        with_scoring(rm, lambda: rm.score(work.prompts[:4], work.responses[:4]), scoring),
        batch,
    )


def plain_case(scorer: TRLStyleScorer, label, method, work, batch, *, repeats=1) -> Case:
    """A row scoring ``work`` with a baseline scorer."""
    return Case(
        label,
        method,
        lambda: scorer.score(work.prompts, work.responses, batch),
        scorer.modules,
        None,
        lambda: scorer.padded_tokens,
        repeats,
        lambda: scorer.score(work.prompts[:4], work.responses[:4], batch),
        batch,
    )


def plan_cases(work, ref_rm, path: Path, n_layers: int, args, r1: int, wanted) -> list[Callable]:
    """Factories of the rows of one workload (each builds its models when called).

    ``wanted``: the methods and comparisons to run. Rows costing about one model run
    ``r1`` times, rows costing K forwards ``args.repeats_costly`` times.
    """
    bs, rk = args.batch_size, args.repeats_costly
    opts = {"max_length": MAX_LENGTH, "device": DEVICE, "dtype": args.torch_dtype}

    def trl(n):
        return TRLStyleScorer(path, n, max_length=MAX_LENGTH, device=DEVICE, dtype=args.torch_dtype)

    def peft_loop(batch):
        scorer = PeftLoopScorer(
            path, K, max_length=MAX_LENGTH, device=DEVICE, dtype=args.torch_dtype
        )
        label = f"PEFT {K} adapters, set_adapter loop" + (
            f" @ batch {batch}" if batch != bs else ""
        )
        return plain_case(scorer, label, "peft_loop", work, batch, repeats=rk)

    def method(uq, batch=bs):
        count = {"heads": f" K={K_HEADS}", "laplace": "", "pyro": "", "mc_dropout": f" T={K}"}
        label = f"auq {uq}{count.get(uq, f' K={K}')}"
        if uq == "partial":
            label += f", top {TOP_LAYERS} of {n_layers}"
        if batch != bs:
            label += f" @ batch {batch}"
        bound = cost_bound(uq, n_layers)
        rm = auq_model(path, uq, **opts)
        return auq_case(rm, label, uq, work, batch, bound=bound, repeats=r1 if bound < 2 else rk)

    plan: list[Callable] = []
    if work.name == "fixed-512":  # the MFU workload: one reward model, two ways
        plan.append(lambda: plain_case(trl(1), "TRL-style 1 RM", "trl", work, bs, repeats=r1))
        return plan
    if work.name == "best-of-n":
        plan.append(
            lambda: auq_case(
                ref_rm,
                "auq 1 RM, prefix sharing off",
                "prefix",
                work,
                bs,
                repeats=r1,
                prefix_sharing=False,
            )
        )
        if "trl" in wanted:
            plan.append(lambda: plain_case(trl(1), "TRL-style 1 RM", "trl", work, bs, repeats=rk))
        return plan
    if "trl" in wanted:
        plan.append(lambda: plain_case(trl(1), "TRL-style 1 RM", "trl", work, bs, repeats=r1))
    if "bucketing" in wanted:
        plan.append(
            lambda: auq_case(
                ref_rm,
                "auq 1 RM, bucketing off",
                "bucketing",
                work,
                bs,
                repeats=r1,
                bucketing=False,
            )
        )
    if "separate" in wanted:
        label = f"{K} separate RMs (TRL-style)"
        plan.append(lambda: plain_case(trl(K), label, "separate", work, bs, repeats=rk))
    if "peft_loop" in wanted:
        plan.append(lambda: peft_loop(bs))
    for uq in UQ_METHODS:
        if uq in wanted:
            plan.append(lambda uq=uq: method(uq))
    if DEVICE.type == "cuda" and bs != 8 and "lora" in wanted:  # the GPU goal's batch size
        plan.append(lambda: method("lora", batch=8))
        if "peft_loop" in wanted:
            plan.append(lambda: peft_loop(8))
    return plan


def run_backbone(name, path, workloads: list[Workload], args, repeats, methods, memory) -> list:
    """Every row of one backbone, printed as it is measured."""
    config = transformers.AutoConfig.from_pretrained(path)
    rows: list[dict] = []
    for work in workloads:
        print(f"\n[{name}] {work.describe()}", flush=True)
        ref_rm = auq_model(
            path, "one", max_length=MAX_LENGTH, device=DEVICE, dtype=args.torch_dtype
        )
        flops = 2 * non_embedding_params(ref_rm.backbone.model)  # per token
        ref = auq_case(ref_rm, "auq 1 RM", "one", work, args.batch_size, bound=1.0)
        timer = Interleaved(ref, memory)
        ref_run = timer.ref_calls[0]["run_tokens"]
        measured = []
        for make in plan_cases(
            work, ref_rm, path, config.num_hidden_layers, args, repeats, methods
        ):
            case = make()
            measured.append(timer.measure(case))
            print(format_row(finish(measured[-1], name, work, flops, ref_run)), flush=True)
            del case
            free_memory()
        rows.append(finish(timer.ref_row(), name, work, flops, ref_run))
        print(format_row(rows[-1]), flush=True)
        rows += measured
        del timer, ref, ref_rm
        free_memory()
    return rows


def finish(row: dict, backbone: str, work: Workload, flops_per_token: int, ref_run) -> dict:
    """Add the workload's figures to a measured row.

    ``ratio_bound`` compares time per token run (per member pass, padding included)
    with the reference's, over the bound: a method is neither charged nor credited
    for micro-batches that pad more or less than the reference's (the engine's
    token budget counts K rows for members, so their buckets differ).
    ``ratio_bound_raw`` is the plain time ratio over the bound.
    """
    row.update(backbone=backbone, workload=work.name, n_items=work.n, tokens=work.tokens)
    row["seq_per_s"] = work.n / row["seconds"]
    row["tok_per_s"] = work.tokens / row["seconds"]
    row["run_per_real"] = None if row["run_tokens"] is None else row["run_tokens"] / work.tokens
    row["ratio_trl"] = None
    if row["bound"] and row["run_tokens"] and ref_run:
        row["ratio_bound_raw"] = row["ratio_auq_1rm"] / row["bound"]
        row["ratio_bound"] = row["ratio_bound_raw"] * ref_run / row["run_tokens"]
    if PEAK_FLOPS and row["method"] in ("one", "trl"):
        row["mfu"] = flops_per_token * row["tok_per_s"] / PEAK_FLOPS
    return row


def free_memory() -> None:
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


# -----------------------------------------------------------------------------
# the table and the goals


def mib(x) -> str:
    return "—" if x is None else f"{x / 2**20:,.0f}"


def format_row(r: dict) -> str:
    def num(x, fmt):
        return "—" if x is None else format(x, fmt)

    bound, over = r.get("bound"), r.get("ratio_bound")
    cells = [
        f"{r['backbone']:<11}",
        f"{r['workload']:<9}",
        f"{r['case']:<40}",
        f"{r['seq_per_s']:>8.1f}",
        f"{r['tok_per_s']:>8.0f}",
        f"{r['ratio_auq_1rm']:>6.2f}",
        f"{num(r.get('ratio_trl'), '.2f'):>6}",
        f"{num(bound, '.2f'):>5}",
        f"{num(over, '.2f'):>5}",
        f"{num(r.get('run_per_real'), '.2f'):>5}",
        f"{mib(r['param_bytes']):>7}",
        f"{mib(r['peak_rss_bytes']):>7}",
        f"{mib(r['rss_rise_bytes']):>6}",
    ]
    if DEVICE.type == "cuda":
        cells += [f"{mib(r['gpu_peak_bytes']):>7}", f"{num(r.get('mfu'), '.1%'):>6}"]
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "backbone   ",
    "workload ",
    f"{'case':<40}",
    "  seq/s ",
    "   tok/s",
    "×auq 1",
    "×TRL 1",
    "bound",
    "×bnd ",
    "run/r",
    "par MiB",
    "RSS MiB",
    "+MiB  ",
]


def print_table(rows: list[dict]) -> None:
    header = HEADER + (["GPU MiB", "MFU   "] if DEVICE.type == "cuda" else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
    for r in rows:
        print(format_row(r))
    print(
        LEGEND
        + (
            "\nGPU MiB: peak allocated; MFU: model-FLOP utilisation"
            if DEVICE.type == "cuda"
            else ""
        )
    )


LEGEND = """\
×auq 1 / ×TRL 1: time over auq's / the TRL-style one reward model on the same workload;
bound: one-model forwards the method needs; ×bnd: its time per token run (per member pass,
padding included) over auq 1 RM's, over the bound; run/r: tokens run per member pass over
the texts' tokens; par MiB: parameter and buffer bytes held; RSS MiB: peak resident memory
while the row ran (the reference model resident too); +MiB: its rise over the call's start"""


def add_trl_ratios(rows: list[dict]) -> None:
    """Each row's time over the TRL-style 1 RM's of its workload, through the shared reference."""
    for r in rows:
        trl = find(rows, r["backbone"], r["workload"], "trl")
        r["ratio_trl"] = r["ratio_auq_1rm"] / trl["ratio_auq_1rm"] if trl else None


def find(rows: list[dict], backbone: str, workload: str, method: str, batch=None) -> dict | None:
    """The first row of ``method`` (at ``batch`` rows per batch, if given)."""
    for r in rows:
        if (r["backbone"], r["workload"], r["method"]) == (backbone, workload, method):
            if batch is None or r["batch_size"] == batch:
                return r
    return None


@dataclass
class Goal:
    """A goal: a figure per backbone, compared with a threshold on the backbones it judges."""

    text: str
    figure: Callable[[list[dict], str], float | None]
    op: str  # "<=", ">=", or "info" (shown, not judged)
    threshold: float | None = None
    percent: bool = False
    judge: Callable[[list[dict], str], bool] = lambda rows, b: b != "tiny"
    why: str = "tiny: per-call overheads dominate a 2M-parameter model"


def goal_list(batch_size: int) -> list[Goal]:
    gpu = DEVICE.type == "cuda"

    def ratio(workload, method):
        return lambda rows, b: (r := find(rows, b, workload, method)) and r["ratio_auq_1rm"]

    def over_bound(method):
        def figure(rows, b):
            r = find(rows, b, "pairs", method)
            return r and r["ratio_bound"]

        return figure

    def lora_vs_loop(per_token: bool):
        def figure(rows, b):
            batch = 8 if gpu else batch_size
            lora = find(rows, b, "pairs", "lora", batch)
            loop = find(rows, b, "pairs", "peft_loop", batch)
            if not (lora and loop):
                return None
            raw = lora["ratio_auq_1rm"] / loop["ratio_auq_1rm"]
            # per token run (per member pass): auq's buckets pad less than PEFT's caller order
            return raw * loop["run_tokens"] / lora["run_tokens"] if per_token else raw

        return figure

    def mfu(rows, b):
        return (r := find(rows, b, "fixed-512", "one")) and r.get("mfu")

    def param_ratio(method):
        def figure(rows, b):
            one, other = find(rows, b, "pairs", "one"), find(rows, b, "pairs", method)
            return one and other and other["param_bytes"] / one["param_bytes"]

        return figure

    def enough_batches(rows, b):  # caller-order batches can only differ from buckets if many
        r = find(rows, b, "pairs", "one")
        return r is not None and r["n_items"] >= 6 * batch_size

    few = f"judged where the pairs workload has >= 6 batches of {batch_size}"
    goals = [
        Goal(f"{uq} <= 1.05x one reward model", ratio("pairs", uq), "<=", 1.05)
        for uq in ("heads", "laplace", "pyro")
    ]
    goals += [
        Goal(
            "bucketing >= 1.5x the throughput of caller-order batches (auq, bucketing off)",
            ratio("pairs", "bucketing"),
            ">=",
            1.5,
            judge=enough_batches,
            why=few,
        ),
        Goal(
            "  the same against TRL-style caller-order batches",
            ratio("pairs", "trl"),
            ">=",
            1.5,
            judge=enough_batches,
            why=few,
        ),
        Goal("partial within 1.15x of its bound", over_bound("partial"), "<=", 1.15),
        Goal("mc_dropout within 1.15x of T forwards", over_bound("mc_dropout"), "<=", 1.15),
        Goal("lora within 1.15x of K forwards", over_bound("lora"), "<=", 1.15),
        Goal(
            "lora batched <= 0.8x the PEFT set_adapter loop (GPU, batch 8; per token run, "
            "so bucketing does not count)"
            if gpu
            else "lora batched not slower than the PEFT set_adapter loop (CPU; per token run, "
            "so bucketing does not count)",
            lora_vs_loop(True),
            "<=",
            0.8 if gpu else 1.0,
        ),
        Goal(
            "  lora batched / PEFT loop as timed (auq buckets, PEFT runs in caller order)",
            lora_vs_loop(False),
            "info",
        ),
        Goal(
            "prefix sharing >= 2x over unshared (best-of-16, prompts 4x responses)",
            ratio("best-of-n", "prefix"),
            ">=",
            2.0,
        ),
        Goal(
            "MFU >= 40% for the >=1B decoder, bf16, 512-token rows (GPU)",
            mfu,
            ">=",
            0.40,
            percent=True,
        ),
    ]
    held = {"heads": f"heads (K={K_HEADS}, more than K=5) hold", "laplace": "laplace holds"}
    held["lora"] = f"lora (K={K}) holds"
    goals += [
        Goal(f"{text} <= 1.3x the parameter bytes of one RM", param_ratio(uq), "<=", 1.3,
             judge=lambda rows, b: True, why="")
        for uq, text in held.items()
    ]  # fmt: skip
    comparison = f"  for comparison: {K} separate RMs (hand-built) hold"
    return [*goals, Goal(comparison, param_ratio("separate"), "info")]


def goals(rows: list[dict], batch_size: int) -> list[dict]:
    """Each goal's figure per backbone and whether it is met where judged.

    Where no backbone qualifies (a ``--quick`` run has only tiny), the goal is judged
    on every backbone that has the figure, and says so.
    """
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    out = []
    for goal in goal_list(batch_size):
        figures = {b: v for b in backbones if (v := goal.figure(rows, b)) not in (None, False)}
        on = [b for b in figures if goal.judge(rows, b)]
        note = goal.why if set(on) != set(figures) else ""
        if goal.op == "info":
            on, note = [], ""
        elif figures and not on:
            on, note = list(figures), f"only {', '.join(figures)} ran: judged on it"
        met = None
        if goal.op != "info" and on:
            t = goal.threshold
            met = all(figures[b] <= t if goal.op == "<=" else figures[b] >= t for b in on)
        out.append(
            {
                "goal": goal.text,
                "op": goal.op,
                "threshold": goal.threshold,
                "figures": figures,
                "judged_on": on,
                "note": note,
                "met": met,
                "percent": goal.percent,
            }
        )
    return out


def print_goals(goal_rows: list[dict]) -> None:
    print("\ngoals (ratios within this run; verdict on the backbones in brackets):")
    for g in goal_rows:
        if g["op"] == "info":
            verdict = "info"
        else:
            verdict = {True: "met", False: "NOT MET", None: "not measured"}[g["met"]]
        unit = "{:.1%}" if g["percent"] else "{:.2f}x"
        figures = ", ".join(f"{b} {unit.format(v)}" for b, v in g["figures"].items())
        judged = f" [{', '.join(g['judged_on'])}]" if g["op"] != "info" and g["judged_on"] else ""
        note = f" ({g['note']})" if g["note"] else ""
        print(f"  {verdict:>12}  {g['goal']}: {figures or '-'}{judged}{note}")


# -----------------------------------------------------------------------------


def source_version() -> dict:
    """The auq code measured: its commit and any uncommitted changes under auq/."""
    root = Path(auq.__file__).parents[1]

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=60)
        return out.stdout if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    changed = git("diff", "HEAD", "--name-only", "--", "auq").split()
    changed += git("ls-files", "--others", "--exclude-standard", "--", "auq").split()
    diff = git("diff", "HEAD", "--", "auq")
    digest = hashlib.sha1(diff.encode()).hexdigest()[:12] if changed else None
    return {"commit": commit, "uncommitted": changed, "diff_sha1": digest}


def describe_version(version: dict) -> str:
    if not version:
        return f"auq {auq.__version__}"
    text = f"auq at {version['commit']}"
    if version["uncommitted"]:
        files = ", ".join(version["uncommitted"])
        text += f" + uncommitted changes (diff sha1 {version['diff_sha1']}): {files}"
    return text


def make_workloads(name: str, tokenizer, size: dict, methods: set[str]) -> list[Workload]:
    """The workloads of one backbone, with their realised token counts."""
    maker = TextMaker(tokenizer, seed=0)
    encoder = name == "minilm"
    workloads = [pairs_workload(maker, size["n_pairs"])]
    if not encoder and "prefix" in methods:
        bon = best_of_n_workload(
            maker, size["n_prompts"], size["prompt_tokens"], size["response_tokens"]
        )
        workloads.append(bon)
    if name == "decoder1b":
        workloads.append(fixed_workload(maker, size["n_pairs"] // 4))
    for work in workloads:
        if encoder:  # a sentence pair, as auq and the baselines encode it
            enc = tokenizer(work.prompts, work.responses)
        else:  # prompt + response as one string
            enc = tokenizer([p + r for p, r in zip(work.prompts, work.responses, strict=True)])
        work.lengths = np.array([len(ids) for ids in enc["input_ids"]])
    return workloads


def main() -> None:
    global DEVICE, PEAK_FLOPS, CLOCK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=None, help=", ".join(ALL_BACKBONES))
    parser.add_argument(
        "--methods",
        default=None,
        help="uq methods and comparisons: trl, separate, peft_loop, bucketing, prefix "
        "(default: all; decoder100m skips separate, peft_loop and bucketing, for time)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats of rows costing ~1 model (3; MiniLM 5)"
    )
    parser.add_argument("--repeats-costly", type=int, default=1, help="repeats of K-forward rows")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (8; GPU 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU: 1)")
    parser.add_argument("--n-pairs", type=int, default=None, help="rows of the pairs workload")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, few texts, 1 repeat")
    parser.add_argument("--out", default=None, help="write rows and goals as JSON here")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    gpu = DEVICE.type == "cuda"
    given = None if args.methods is None else {m.strip() for m in args.methods.split(",")} - {""}
    unknown = sorted((given or set()) - {*COMPARISONS, *UQ_METHODS})
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}")
    default = "tiny" if args.quick else "tiny,minilm,decoder100m" + (",decoder1b" if gpu else "")
    backbones = (args.backbones or default).split(",")
    for b in backbones:
        if b not in ALL_BACKBONES:
            parser.error(f"unknown backbone {b!r}; valid: {', '.join(ALL_BACKBONES)}")
        if b in GPU_ONLY and not gpu:
            parser.error(f"{b} runs on a GPU only (--device cuda)")
    if args.quick:
        args.repeats = args.repeats_costly = 1
    if not gpu:  # one thread: on a shared machine a second one mostly waits for a busy core
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    if not gpu and torch.get_num_threads() == 1:
        CLOCK = time.process_time
    args.batch_size = args.batch_size or (32 if gpu else 8)
    args.torch_dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside libraries
    memory = PeakMemory()
    version = source_version()  # auq's modules are imported: this is the code that runs
    PEAK_FLOPS = matmul_peak(DEVICE) if gpu else None

    started = time.perf_counter()
    rows: list[dict] = []
    sizes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backbones:
            size = dict((QUICK_SIZES if args.quick else SIZES)[name])
            size["n_pairs"] = args.n_pairs or size["n_pairs"]
            path = build_backbone(name, Path(tmp), args.torch_dtype)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            methods = given or {*COMPARISONS, *UQ_METHODS} - set(size.get("skip", ()))
            workloads = make_workloads(name, tokenizer, size, methods)
            repeats = args.repeats or size.get("repeats", 3)
            sizes[name] = {
                "workloads": [w.describe() for w in workloads],
                "repeats": repeats,
                "skipped": sorted({*COMPARISONS, *UQ_METHODS} - methods),
            }
            rows += run_backbone(name, path, workloads, args, repeats, methods, memory)
            if path.is_relative_to(tmp):
                shutil.rmtree(path)  # a 1B decoder takes gigabytes of disk
    add_trl_ratios(rows)
    goal_rows = goals(rows, args.batch_size)

    print(
        f"\nbench_scoring on {device_name(DEVICE)}, {args.torch_dtype}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}; batch size "
        f"{args.batch_size}; {torch.get_num_threads()} CPU thread(s); K-forward rows "
        f"repeated {args.repeats_costly}x; "
        f"seconds by {'process CPU time' if CLOCK is time.process_time else 'wall clock'}; "
        f"peak memory by {memory.method}; {time.perf_counter() - started:.0f} s wall in all"
    )
    print(describe_version(version))
    if PEAK_FLOPS:
        print(f"measured bf16 matmul peak {PEAK_FLOPS / 1e12:.0f} TFLOP/s")
    for name, described in sizes.items():
        skipped = ", ".join(described["skipped"]) or "none"
        for text in described["workloads"]:
            print(
                f"  {name:<11} {text}; rows costing ~1 model repeated {described['repeats']}x; "
                f"not run: {skipped}"
            )
    print()
    print_table(rows)
    print_goals(goal_rows)
    if args.out:
        result = {
            "benchmark": "bench_scoring",
            "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "auq_version": version,
            "device": device_name(DEVICE),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": str(args.torch_dtype),
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "repeats_costly": args.repeats_costly,
            "clock": "process_time" if CLOCK is time.process_time else "perf_counter",
            "memory_method": memory.method,
            "matmul_peak_flops": PEAK_FLOPS,
            "sizes": sizes,
            "rows": rows,
            "goals": goal_rows,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
