"""``featx serve``: a web page and JSON API that classify uploaded images with a bundle."""

from __future__ import annotations

from featx.cli.checks import check_file
from featx.cli.options import cache_option, engine_option, port_number, positive_float, positive_int, trust_option
from featx.cli.parser import add_command

MB = 1024 * 1024


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "serve", "a web page and JSON API that classify uploaded images with a bundle")
    p.add_argument("bundle", metavar="BUNDLE",
                   help="model.featx from fit-head, or model.keras from finetune or baseline")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes returned per image")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, metavar="MB",
                   help="largest accepted upload")
    engine_option(p, default="auto", extra="; auto gives about 2x the requests/s on a CPU (converts once)")
    cache_option(p)
    trust_option(p)
    _limit_options(p)
    p.set_defaults(func=run)


def _limit_options(p) -> None:
    """What one upload or client may cost the server: pixels, decode memory, decode slots, time."""
    from featx import serve as defaults  # light: imports no web framework

    p.add_argument("--max-pixels", type=positive_int, default=defaults.SERVE_MAX_PIXELS, metavar="N",
                   help="refuse uploads declaring more pixels than this")
    p.add_argument("--max-decode-mb", type=positive_float, default=defaults.SERVE_DECODE_BUDGET // 2**20,
                   metavar="MB", help="memory one image's decode may need; PNG/TIFF/WebP above it are refused, "
                                      "JPEGs decode at reduced size")
    p.add_argument("--decode-slots", type=positive_int, default=defaults.DECODE_SLOTS, metavar="K",
                   help="images decoded at once over all requests (peak decode memory: K x --max-decode-mb)")
    p.add_argument("--cors", metavar="ORIGIN", default=None,
                   help="also accept POST /predict from pages of ORIGIN, e.g. https://example.org "
                        "(default: same origin only)")
    p.add_argument("--header-timeout", type=positive_float, default=defaults.HEADER_TIMEOUT,
                   metavar="SECONDS", help="time a client has to send its request headers")
    p.add_argument("--body-timeout", type=positive_float, default=defaults.BODY_TIMEOUT, metavar="SECONDS",
                   help="time a client has to send its upload")


def run(args) -> int:
    from featx.serve import serve

    check_file(args.bundle, "BUNDLE")
    serve(args.bundle, host=args.host, port=args.port, top=args.top, max_bytes=int(args.max_upload_mb * MB),
          trust=args.trust_bundle, engine=args.engine, cache_dir=args.cache, max_pixels=args.max_pixels,
          budget=int(args.max_decode_mb * MB), decode_slots=args.decode_slots, cors=args.cors,
          header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    return 0
