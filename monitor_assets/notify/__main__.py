"""Acknowledge, silence and inspect alerts from the command line (the same state the sensor reads).

    python -m monitor_assets.notify ack --model M [--check C] [--day YYYY-MM-DD] --by NAME --reason TEXT
    python -m monitor_assets.notify silence [--model M] [--check C] --hours H --by NAME --reason TEXT
    python -m monitor_assets.notify unsilence ID --by NAME
    python -m monitor_assets.notify list [deliveries|acknowledgements|silences]

The config comes from $MONITOR_CONFIG and the state file sits beside $MONITOR_WAREHOUSE, as for the
pipeline. An acknowledged alert stays open; its notifications stop. Only alerts already in the outbox
can be acknowledged (anything else is refused): for alerts still to come use a silence, which stops
notifications for a model, a check, or a model's check until it ends (--hours, at most 90 days) or
is lifted. `list` prints times as ISO 8601 UTC dates.
"""

from __future__ import annotations

import argparse
import sys

from monitor_assets.config import ConfigError, load_config
from monitor_assets.notify.actions import acknowledge, lift_silence, silence
from monitor_assets.storage.alert_state import STATE_TABLES, AlertState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.notify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ack = sub.add_parser("ack", help="acknowledge a model's open alerts: they stay open, notifications stop")
    ack.add_argument("--model", required=True)
    ack.add_argument("--check")
    ack.add_argument("--day", help="only this day's alert (default: every day up to today)")
    sil = sub.add_parser("silence", help="no notifications for a model, a check, or both, for a while")
    sil.add_argument("--model")
    sil.add_argument("--check")
    sil.add_argument("--hours", type=float, required=True, help="when it ends (every silence ends)")
    for p in (ack, sil):
        p.add_argument("--by", required=True, help="who decides (recorded)")
        p.add_argument("--reason", required=True, help="why (recorded)")
    lift = sub.add_parser("unsilence", help="lift a silence before it ends")
    lift.add_argument("id", type=int)
    lift.add_argument("--by", required=True)
    show = sub.add_parser("list", help="print a state table as CSV (times as UTC dates)")
    show.add_argument("table", nargs="?", default="deliveries", choices=["deliveries", "acknowledgements", "silences"])
    args = parser.parse_args(argv)
    try:
        config = load_config()
        state = AlertState.for_config(config)
        if args.command == "ack":
            print(acknowledge(config, state, args.model, args.check, args.day, args.by, args.reason))
        elif args.command == "silence":
            print(silence(config, state, args.model, args.check, args.hours, args.by, args.reason))
        elif args.command == "unsilence":
            print(lift_silence(state, args.id, args.by))
        else:
            name = next(k for k in STATE_TABLES if k.endswith(args.table))
            state.listing(name).to_csv(sys.stdout, index=False)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
