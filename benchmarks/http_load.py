"""A small HTTP load generator: POST request bodies with C connections, report latency.

    python -m benchmarks.http_load URL BODIES.jsonl --concurrency C [--requests N]

Each line of BODIES.jsonl is one JSON request body, sent in turn (cycling when N is
larger). Prints one JSON object: requests, seconds, qps, p50_ms, p99_ms, errors. Runs in
its own process so that the client does not share a GIL with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import numpy as np


async def load(url: str, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    errors: list[int] = []
    todo = iter(range(requests))
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            for n in todo:
                start = time.perf_counter()
                async with session.post(url, data=bodies[n % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors.append(r.status)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "seconds": seconds,
        "qps": requests / seconds,
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=0, help="default: one per body")
    args = parser.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = [line.strip() for line in f if line.strip()]
    result = asyncio.run(load(args.url, bodies, args.concurrency, args.requests or len(bodies)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
