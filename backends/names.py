"""Backend names and the filters over them, without importing any backend (the CLI's cached listing uses them)."""

import difflib
from collections.abc import Iterable

from qkan_orch.models.errors import InputError

KINDS = ("analytic", "simulator", "noisy simulator", "qpu")
PROVIDERS = ("exact", "aer", "emulate", "ibm", "braket", "pennylane")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean a, b, c?`` with the three closest of ``known``, or nothing when none is close:
    a typo should point at the name meant, not at a list of every name."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def provider_of(name: str) -> str:
    return name.split(":", 1)[0]


def check_filters(kind: str | None, provider: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise InputError("kind", f"no backend kind '{kind}'{did_you_mean(kind, KINDS)} (kinds: {', '.join(KINDS)})")
    if provider is not None and provider not in PROVIDERS:
        raise InputError("provider", f"no provider '{provider}'{did_you_mean(provider, PROVIDERS)} "
                         f"(providers: {', '.join(PROVIDERS)})")


def name_matches(name: str, provider: str | None = None, text: str | None = None) -> bool:
    """Whether ``name`` passes the provider and substring filters (both optional, substring case-blind)."""
    return (provider is None or provider_of(name) == provider) and (not text or text.lower() in name.lower())
