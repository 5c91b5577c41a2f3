"""``featx backbones``: the table of backbones, their taps and where their weights come from."""

from __future__ import annotations

from featx.cli.parser import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "backbones", "list the backbones, their taps and weight sources")
    p.set_defaults(func=run)


def run(args) -> int:
    from featx.backbones.registry import list_backbones

    rows = [("name", "input", "code dim", "taps", "weights", "offline")]
    for b in list_backbones():
        rows.append((b.name, str(b.input_size), str(b.code_dim), ",".join(b.tap_names), b.source,
                     "yes" if b.offline else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
