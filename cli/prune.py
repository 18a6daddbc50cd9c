"""``qkan-orch prune --older-than 30d``: delete finished jobs (with their rounds, events and results) from the
database directly, like ``keys``; the workers do the same every hour when QKAN_RETENTION_DAYS is set."""

import argparse
import re
from datetime import timedelta

from qkan_orch.models.errors import InputError

_UNITS = {"d": "days", "h": "hours"}


def age(text: str) -> timedelta:
    """``30d`` or ``12h``; anything else an InputError naming ``older-than``."""
    match = re.fullmatch(r"(\d+)([dh])", text.strip())
    if match is None:
        raise InputError("older-than", f"expected a number of days or hours such as 30d or 12h, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def prune_cmd(args: argparse.Namespace) -> int:
    """Refused without a data folder, as ``keys`` is: pruning a database no service reads helps nobody."""
    older_than = age(args.older_than)
    from qkan_orch.service.settings import get_settings
    from qkan_orch.service.store.database import session_scope, upgrade
    from qkan_orch.service.store.retention import prune

    settings = get_settings()
    folder = settings.data_dir.resolve()
    if settings.database_url is None and not folder.is_dir():
        raise InputError("QKAN_DATA_DIR", f"no data folder at {folder}; set QKAN_DATA_DIR to the folder "
                                          "'qkan-orch serve' printed, or run this where serve runs")
    url = settings.resolved_database_url
    upgrade(url)
    with session_scope(url) as session:
        report = prune(session, older_than, dry_run=args.dry_run)
    print(f"{'would delete' if args.dry_run else 'deleted'}: {report}")
    return 0


def add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="delete finished jobs older than a given age, with their rounds, events and "
                                     "results (writes to the database directly)")
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d or 12h; active jobs always stay")
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    p.set_defaults(handler=prune_cmd)
