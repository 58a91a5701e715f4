"""Ask a running `rslm serve` (or any OpenAI-compatible server) the held-out questions and report
the share of answers in the trained shape, with every answer verbatim.

    .venv/bin/rslm serve --port 8000 &                                   # the champion
    .venv/bin/rslm serve --base .rslm/models/SmolLM2-... --port 8001 &   # its base, no adapter
    .venv/bin/python tests/bench/heldout_via_serve.py --url http://127.0.0.1:8000/v1
    .venv/bin/python tests/bench/heldout_via_serve.py --url http://127.0.0.1:8001/v1 --system-from-framework

The system prompt is the served model's own unless --system-from-framework sends the framework's
(a bare base has none)."""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tasks.adapters.ops.config_files import load_framework, load_model  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.config import HeldOutSet  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.metrics import is_degenerate, is_structured  # noqa: E402 - importable only after the sys.path lines above


def ask(url: str, messages: list[dict], max_tokens: int) -> str:
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - a loopback URL the user gives
        return json.loads(response.read())["choices"][0]["message"]["content"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's /v1 base URL")
    parser.add_argument("--heldout", default=str(REPO / "configs/probes/heldout/devops.yaml"))
    parser.add_argument("--framework", default=str(REPO / "configs/frameworks/devops.yaml"))
    parser.add_argument("--system-from-framework", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    system = load_framework(args.framework).system_prompt if args.system_from_framework else None
    rows = []
    for q in load_model(HeldOutSet, args.heldout).questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q.question}]
        answer = ask(args.url, messages, args.max_tokens)
        rows.append({"question": q.question, "answer": answer, "structured": is_structured(answer),
                     "degenerate": is_degenerate(answer)})
        print(f"{'✓' if rows[-1]['structured'] else '✗'} {q.question}\n    {' '.join(answer.split())}", flush=True)
    shaped = sum(r["structured"] for r in rows) / len(rows)
    print(json.dumps({"url": args.url, "questions": len(rows), "structured": shaped,
                      "degenerate": sum(r["degenerate"] for r in rows) / len(rows)}))


if __name__ == "__main__":
    main()
