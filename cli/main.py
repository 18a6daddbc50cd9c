"""Entry point of ``qkan-orch``: argument parsing and one-line errors."""

import argparse
import sys
from collections.abc import Callable, Sequence

from qkan_orch.client.api import ApiError
from qkan_orch.models.errors import InputError


class _Parser(argparse.ArgumentParser):
    """One-line errors. A subcommand whose flags need heavy imports (torch, the backends) passes ``flags=`` to
    add them only when it is parsed or its help shown: commands that only talk to the service start fast."""

    def __init__(self, *args, flags: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._flags = flags

    def _add_flags(self) -> None:
        if self._flags is not None:
            flags, self._flags = self._flags, None
            flags(self)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._add_flags()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_flags()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_flags()
        return super().format_help()

    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from qkan_orch.cli.commands import add_commands
    from qkan_orch.cli.compare import add_compare
    from qkan_orch.cli.demo import add_demo
    from qkan_orch.cli.extend import add_extend
    from qkan_orch.cli.prune import add_prune
    from qkan_orch.cli.service_commands import add_service_commands

    parser = _Parser(prog="qkan-orch", description="Run trained QKAN models on quantum backends.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_demo(sub)
    add_commands(sub)
    add_service_commands(sub)
    add_compare(sub)
    add_extend(sub)
    add_prune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"qkan-orch: error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"qkan-orch: error: {exc} (HTTP {exc.status} {exc.code})", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except OSError as exc:
        print(f"qkan-orch: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
