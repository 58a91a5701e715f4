"""`rslm serve` as a real process, and concurrent clients against it: latency p50/p95, completion
tokens/s and status codes. Used by `make bench` (its `serving` section) and by tests/test_serve.py."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx

QUESTIONS = ["Why put a load balancer in front of two web servers?", "Why keep database backups in another region?",
             "Why use a bastion host instead of public SSH on every instance?", "Why rotate TLS certificates automatically?"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(serve_args: list[str], env: dict[str, str], log: Path, start_timeout_s: float = 120):
    """`rslm serve ARGS` on a free loopback port until the block ends: (base URL, process)."""
    port = free_port()
    with log.open("wb") as handle:
        process = subprocess.Popen([str(Path(sys.executable).parent / "rslm"), "serve", *serve_args, "--port", str(port)],
                                   env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rslm serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def concurrent_load(url: str, token: str | None, clients: int, requests_each: int, max_tokens: int,
                    timeout_s: float = 600) -> dict:
    """`clients` threads, released together, each sending `requests_each` chat requests in turn.
    Status -1 is a request that got no HTTP answer (a timeout or a dropped connection)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    results: list[dict] = []
    gate = threading.Barrier(clients)

    def client(index: int) -> None:
        gate.wait()
        for n in range(requests_each):
            body = {"messages": [{"role": "user", "content": QUESTIONS[(index + n) % len(QUESTIONS)]}],
                    "max_tokens": max_tokens}
            began = time.monotonic()
            try:
                response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s)
                usage = response.json().get("usage", {}) if response.status_code == 200 else {}
                results.append({"status": response.status_code, "seconds": time.monotonic() - began,
                                "tokens": usage.get("completion_tokens", 0),
                                "retry_after": response.headers.get("retry-after")})
            except httpx.HTTPError as error:
                results.append({"status": -1, "seconds": time.monotonic() - began, "tokens": 0, "error": repr(error)})

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s * requests_each + 60)
    wall = time.monotonic() - began
    answered = [r["seconds"] for r in results if r["status"] == 200]
    return {"clients": clients, "requests": clients * requests_each, "returned": len(results),
            "hung_threads": sum(t.is_alive() for t in threads), "wall_s": wall,
            "status": dict(Counter(r["status"] for r in results)), "results": results,
            "p50_s": statistics.median(answered) if answered else None,
            "p95_s": statistics.quantiles(answered, n=20)[-1] if len(answered) > 1 else (answered or [None])[0],
            "completion_tokens_per_s": sum(r["tokens"] for r in results) / wall}


def bench_serving(workdir: Path, base: Path, max_tokens: int = 64) -> dict:
    """SmolLM2 (no adapter) behind `rslm serve`: 1 and 8 concurrent clients, then a burst of 64
    against the default queue (16 waiting, 120 s): who is answered, who is refused, and how fast."""
    out = {"max_tokens": max_tokens}
    with running_server(["--base", str(base)], {"RSLM_HOME": str(workdir / "serve-home")},
                        workdir / "serve.log") as (url, process):
        concurrent_load(url, None, 1, 1, max_tokens)  # warm
        rss_before = rss_mib(process.pid)
        for clients, each in ((1, 8), (8, 2)):
            run = concurrent_load(url, None, clients, each, max_tokens)
            out[f"clients_{clients}"] = {k: v for k, v in run.items() if k != "results"}
        burst = concurrent_load(url, None, 64, 1, max_tokens)
        refused = [r["seconds"] for r in burst["results"] if r["status"] == 503]
        out["burst_64"] = {**{k: v for k, v in burst.items() if k != "results"},
                           "refused_within_s": max(refused) if refused else None}
        out["rss_growth_mib"] = rss_mib(process.pid) - rss_before
    return out


def serving_markdown(s: dict) -> list[str]:
    lines = ["## Serving (`rslm serve`, SmolLM2 without an adapter)", "",
             f"max_tokens {s['max_tokens']}; one generation at a time, up to 16 waiting, 120 s wait timeout", "",
             "| clients | requests | status codes | p50 s | p95 s | completion tokens/s |", "|---|---|---|---|---|---|"]
    for key in ("clients_1", "clients_8", "burst_64"):
        r = s[key]
        p50 = f"{r['p50_s']:.2f}" if r["p50_s"] is not None else "-"
        p95 = f"{r['p95_s']:.2f}" if r["p95_s"] is not None else "-"
        lines.append(f"| {r['clients']} | {r['requests']} | {r['status']} | {p50} | {p95} | "
                     f"{r['completion_tokens_per_s']:.1f} |")
    burst = s["burst_64"]
    lines += ["", f"64-client burst: refusals came within {burst['refused_within_s'] or 0:.1f} s; "
                  f"{burst['hung_threads']} clients left hanging; server RSS grew {s['rss_growth_mib']:.0f} MiB", ""]
    return lines
