"""Registration storm and soak benchmark (issue 12): a large fleet registers at once,
then keeps updating for a while; the server's RSS is sampled throughout.

    python benchmarks/soak.py                          # 10,000 devices, a 10-minute soak
    python benchmarks/soak.py --devices 2000 --soak 60 # a smaller, shorter look

The server and the devices are those of ``speed.py`` (a fresh server process on an
ephemeral loopback port, SQLite in a temporary folder; raw-UDP devices in another
process, discovery reads answered 4.04). Figures, each beside a baseline of the same
run:

1. Register: ``--devices`` Registers, ``--concurrency`` in flight, from the first to
   the last 2.01, and until every discovery has settled; baseline: the bare aiocoap
   server of ``speed.py`` answering the same Registers (time ratio, lower is better).
2. Soak: every device sends an Update every ``--update-interval`` s (spread evenly)
   for ``--soak`` s. The server's VmRSS is read from ``/proc`` every ``--sample`` s
   (no garbage collection forced: what an operator would see). Baseline: the RSS right
   after registration; figures: the last sample, the largest, and the growth per
   minute fitted over the second half of the soak (flat means it no longer grows).
   Server CPU ms per Update.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from processes import vm_rss
from speed import check, server_and_fleet


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares growth of RSS in bytes per minute."""
    if len(samples) < 2:
        return 0.0
    times, values = [t for t, _ in samples], [v for _, v in samples]
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    return 0.0 if spread == 0 else sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread * 60


async def register(kind: str, args: argparse.Namespace):
    async with server_and_fleet(kind, "notfound", args.devices, args, f"soak-{kind}") as (server, fleet):
        done = await fleet.ask("register", args.concurrency, timeout=900)
        check(done, args.devices, f"{kind} Register", "2.01")
        figures = {"register_s": done["seconds"], "retransmissions": done["retransmissions"]}
        if kind != "lwm2m":
            return figures
        settled = await server.ask("profiles", args.devices, 600, timeout=900)
        figures["settled_s"] = settled["last"] - done["began"]
        figures["rss_registered"] = vm_rss(server.pid)
        samples: list[tuple[float, int]] = []
        soaking = asyncio.ensure_future(fleet.ask("soak", args.soak, args.update_interval, args.concurrency,
                                                  timeout=args.soak + 600))
        cpu, start = server.cpu(), time.monotonic()
        while not soaking.done():
            samples.append((time.monotonic() - start, vm_rss(server.pid)))
            print(f"  {samples[-1][0]:6.0f} s  RSS {samples[-1][1] / 1e6:7.1f} MB", flush=True)
            await asyncio.wait([soaking], timeout=args.sample)
        soaked = soaking.result()
        updates = soaked["codes"].get("2.04", 0)
        figures.update(
            updates=updates, update_codes=soaked["codes"], skipped=soaked["skipped"],
            update_cpu_ms=(server.cpu() - cpu) / max(updates, 1) * 1e3,
            rss_last=samples[-1][1], rss_max=max(v for _, v in samples),
            growth_per_minute=slope_per_minute(samples[len(samples) // 2:]))
        return figures


async def main(args: argparse.Namespace) -> None:
    print(f"soak: {args.devices} devices ({args.concurrency} in flight), Updates every {args.update_interval:g} s "
          f"for {args.soak:g} s, RSS every {args.sample:g} s; {os.cpu_count()} CPUs", flush=True)
    bare = await register("bare", args)
    print(f"bare aiocoap: {args.devices} Registers in {bare['register_s']:.1f} s", flush=True)
    ours = await register("lwm2m", args)
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    print("\n  figure                      server           baseline                 ratio   target")
    print(f"  {args.devices} Registers answered    {ours['register_s']:.1f} s"
          f"{'':10}{bare['register_s']:.1f} s bare aiocoap{'':7}x{ours['register_s'] / bare['register_s']:.2f}"
          f"   <= 20 s")
    print(f"  ... and discovery settled   {ours['settled_s']:.1f} s")
    print(f"  RSS after the soak          {mb(ours['rss_last'])}{'':8}{mb(ours['rss_registered'])} registered"
          f"{'':5}x{ours['rss_last'] / ours['rss_registered']:.2f}   <= 300 MB, flat")
    print(f"  RSS largest                 {mb(ours['rss_max'])}")
    print(f"  RSS growth, second half     {ours['growth_per_minute'] / 1e6:+.2f} MB/min")
    print(f"  Updates                     {ours['updates']} answered 2.04 ({ours['update_codes']}, "
          f"{ours['skipped']} skipped: previous still in flight), {ours['update_cpu_ms']:.3f} ms server CPU each")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000, help="simulated devices")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight")
    parser.add_argument("--soak", type=float, default=600, help="seconds of Updates")
    parser.add_argument("--update-interval", type=float, default=60, help="seconds between a device's Updates")
    parser.add_argument("--sample", type=float, default=10, help="seconds between RSS samples")
    parser.add_argument("--log-level", default="warning", help="server log level")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_arguments())))
