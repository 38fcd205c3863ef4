"""``edge models``: the catalogue and what is cached; ``edge models pull NAME``: download one, verified."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from edge.commands._args import nonnegative_int, positive_float

LIST, PULL = "list", "pull"


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256 (64 hex digits)")
    return value


def _cache_option(parser: argparse.ArgumentParser, default=None) -> None:
    parser.add_argument("--cache", type=Path, metavar="DIR", default=default,
                        help="the model cache (default: $EDGEKIT_CACHE, else ~/.cache/edgekit/models)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _cache_option(parser)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    listing = actions.add_parser(LIST, help="the catalogue, and which models are cached where (the default)",
                                 description="the catalogue, and which models are cached where")
    pull = actions.add_parser(PULL, help="download a catalogue model into the cache, checked against its pin",
                              description="download a catalogue model into the cache, checked against its "
                                          "pinned SHA-256 before it is unpacked")
    for sub in (listing, pull):
        # SUPPRESS: `edge models --cache DIR` and `edge models pull NAME --cache DIR` both work
        _cache_option(sub, default=argparse.SUPPRESS)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    pull.add_argument("name", metavar="NAME", help="catalogue name (see edge models)")
    pull.add_argument("--force", action="store_true", help="download again even when it is cached")
    pull.add_argument("--url", help="download from this URL instead (a mirror, or file:// a copy); the pin still "
                                    "applies. $EDGEKIT_MODEL_MIRROR=URL fetches every file from URL/FILE_NAME")
    pull.add_argument("--sha256", type=_sha256, metavar="HEX",
                      help="the SHA-256 to check against, for an entry without a pin (check a copy first)")
    pull.add_argument("--timeout", type=positive_float, metavar="S",
                      help="seconds to connect and to wait for each read (default 30)")
    pull.add_argument("--retries", type=nonnegative_int, metavar="N",
                      help="retries of a transfer that fails without progress (default 4)")


def _list(cache: Path | None) -> None:
    from edge.catalog import CATALOG
    from edge.model_cache import cache_root, cached_model

    rows = [("NAME", "SIZE", "INPUT", "LICENSE", "CACHED")]
    for name in sorted(CATALOG):
        entry = CATALOG[name]
        found = cached_model(name, cache)
        if found:
            cached = f"yes: {found}"
        elif entry.sha256 is None:
            cached = "no (no pinned checksum: pull refuses it)"
        else:
            cached = "no"
        rows.append((name, entry.size_text(), entry.input_text, entry.license, cached))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print()
    for name in sorted(CATALOG):
        print(f"{name}: {CATALOG[name].description}")
    print(f"cache: {cache_root(cache)} (--cache DIR or $EDGEKIT_CACHE to change)")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "models_action", None) == PULL:
        from edge.download import pull

        attempts = None if args.retries is None else args.retries + 1
        model = pull(args.name, cache=args.cache, url=args.url, sha256=args.sha256, force=args.force,
                     timeout=args.timeout, attempts=attempts)
        print(model)  # stdout: the path, for scripts (MODEL=$(edge models pull coco-ssd))
        return 0
    _list(args.cache)
    return 0
