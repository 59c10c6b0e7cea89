"""The long fuzz run: the properties of ``tests/test_fuzz.py`` with many more examples.

    .venv/bin/python benchmarks/fuzz_long.py --examples 100000            # every property
    .venv/bin/python benchmarks/fuzz_long.py --examples 20000 -k "tlv or suit"
    .venv/bin/python benchmarks/fuzz_long.py --seed 1234 --examples 100000  # repeat a run
    .venv/bin/python benchmarks/fuzz_long.py --atheris senml_cbor --runs 2000000  # coverage-guided

Hypothesis mode (the default) runs pytest on ``tests/test_fuzz.py`` with
``TINYMLAAS_FUZZ_EXAMPLES`` set to ``--examples`` for every property: random bytes,
structure-aware generators and mutations of the corpus's valid inputs, fed to every
parser that meets the network or a file (CoAP to the real server's /rd, /bs and /dp over loopback,
Bootstrap-Request queries, Bootstrap-Discover answers, a device's Bootstrap interface,
codecs, link format, Register/Update, Send, device responses, DDF XML, SUIT
envelopes, key files, YAML config, .tflite), plus ten datagrams an example of mutated
DTLS handshakes and noise at the CoAPS port (``tests/test_fuzz_dtls.py``). The corpus replay and the large-payload
checks do not grow with examples and are left out. Each run draws a fresh seed and
prints it; ``--seed`` repeats a run. At 100,000 examples expect a few hours on two
cores (the CoAP properties are the slowest, ~10 ms an example).

Atheris mode (optional: ``pip install atheris``; nothing else needs it) runs
libFuzzer's coverage-guided search on one sans-I/O target, seeded from
``tests/corpus/<target>``; new inputs go to a scratch folder (``--work``), crashes to
``crash-*`` files in the current folder. ``--list`` names the targets.

Either way a failure is a bug: the input, minimised by hypothesis or libFuzzer, raised
something other than the parser's documented error, or cost more than a second of CPU.
Fix the parser, then add the input as ``tests/corpus/<parser>/found-<what>.<ext>``
(``coap`` entries are JSON, see ``tests/corpus/make_corpus.py``) so that every test
run replays it.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
NOT_SCALED = "not corpus_replays and not large_hostile and not corpus_covers and not valid_to_start_with"

TARGETS = {
    "link_format": "link format as a Register payload, a Discover answer (decode, accessors, object list)",
    "register": "Register/Update: the payload with a few fixed queries",
    "text": "text/plain decode at every path",
    "opaque": "opaque decode at every path",
    "tlv": "OMA TLV decode at every path",
    "senml_json": "SenML JSON decode, composite, paths, timestamped",
    "senml_cbor": "SenML CBOR decode, composite, paths, timestamped",
    "oma_json": "OMA JSON decode, timestamped",
    "lwm2m_cbor": "LwM2M CBOR decode, composite",
    "send": "a Send (/dp) payload in SenML JSON, SenML CBOR and LwM2M CBOR",
    "ddf": "DDF XML",
    "suit": "SUIT envelope: parse and verify",
    "pem": "key file (public and private)",
    "config": "YAML configuration file",
    "tflite": ".tflite flatbuffer",
}
CORPUS_OF = {"register": "link_format", "opaque": "text", "send": "senml_cbor"}


def hypothesis_run(args: argparse.Namespace, extra: list[str]) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    selection = NOT_SCALED if not args.k else f"({args.k}) and {NOT_SCALED}"
    command = [sys.executable, "-m", "pytest", str(TESTS / "test_fuzz.py"), str(TESTS / "test_fuzz_dtls.py"),
               "-q", "-p", "no:cacheprovider",
               f"--hypothesis-seed={seed}", "--hypothesis-show-statistics", "-k", selection, *extra]
    environment = dict(os.environ, TINYMLAAS_FUZZ_EXAMPLES=str(args.examples),
                       FUZZ_DTLS_DATAGRAMS=str(max(1500, 10 * args.examples)), FUZZ_DTLS_SEED=str(seed))
    print(f"fuzz_long: {args.examples} examples per property, seed {seed}", flush=True)
    print("  " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT, env=environment)


def atheris_run(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        import atheris
    except ImportError:
        print("fuzz_long: --atheris needs the atheris package (pip install atheris); "
              "the hypothesis mode needs nothing extra", file=sys.stderr)
        return 2
    sys.path[:0] = [str(TESTS), str(ROOT)]
    with atheris.instrument_imports(include=["ipso_objects", "lwm2m_server"]):
        import test_fuzz as f
    from lwm2m_server.core.operations import OperationError
    from lwm2m_server.core.responses import decode_response
    from lwm2m_server.core.registration import RegistrationError, parse_register, parse_update

    scratch = Path(tempfile.mkdtemp(prefix="fuzz-config-"))

    def register(data: bytes) -> None:
        for parse in (parse_register, parse_update):
            f.bounded(lambda: parse(("ep=fuzz", "lt=60", "lwm2m=1.1"), data, 40), RegistrationError)

    def send(data: bytes) -> None:
        for content_format in (110, 112, 11544):
            f.bounded(lambda: f.parse_send(data, content_format, f.REGISTRY), OperationError)
        for request in f.DEVICE_REQUESTS:
            f.bounded(lambda: decode_response(request, "2.05", 112, data, f.REGISTRY))

    checks = {
        "link_format": f.decode_links,
        "register": register,
        **{name: (lambda module: lambda data: f.decode_everything(module, data))(f.CODECS[name])
           for name in ("text", "opaque", "tlv", "senml_json", "senml_cbor", "oma_json", "lwm2m_cbor")},
        "send": send,
        "ddf": lambda data: f.bounded(lambda: f.load_ddf(data, source="fuzz.xml"), f.DdfError),
        "suit": f.check_envelope,
        "pem": lambda data: (f.bounded(lambda: f.load_public_key(data), f.SuitError),
                             f.bounded(lambda: f.load_private_key(data), f.SuitError)),
        "config": lambda data: f.check_config(scratch, data),
        "tflite": f.check_model,
    }
    check = checks[args.atheris]
    work = Path(args.work or tempfile.mkdtemp(prefix=f"fuzz-{args.atheris}-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = TESTS / "corpus" / CORPUS_OF.get(args.atheris, args.atheris)
    print(f"fuzz_long: atheris on {args.atheris}; new inputs in {work}, seeds from {seeds}", flush=True)
    argv = [sys.argv[0], str(work), str(seeds), f"-runs={args.runs}", f"-max_len={args.max_len}",
            "-timeout=10", *extra]
    atheris.Setup(argv, check)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000, help="examples per property (hypothesis mode)")
    parser.add_argument("--seed", type=int, help="hypothesis seed, to repeat a run")
    parser.add_argument("-k", help="pytest -k expression choosing properties, e.g. 'tlv or suit'")
    parser.add_argument("--atheris", choices=sorted(TARGETS), help="coverage-guided run of one target instead")
    parser.add_argument("--runs", type=int, default=1_000_000, help="atheris: inputs to try (-1: no limit)")
    parser.add_argument("--max-len", type=int, default=4096, help="atheris: longest input in bytes")
    parser.add_argument("--work", help="atheris: folder for the inputs it finds (default: a new temporary one)")
    parser.add_argument("--list", action="store_true", help="list the atheris targets")
    args, extra = parser.parse_known_args()
    if args.list:
        for name, what in TARGETS.items():
            print(f"{name:12} {what}")
        return 0
    if args.atheris:
        return atheris_run(args, extra)
    return hypothesis_run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
