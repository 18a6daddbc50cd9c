"""The backends' settings: provider accounts, packing thresholds and backend plugins.

Read from the environment (``QKAN_`` prefix) or, for accounts, the SDKs' own
config files; the API and the workers both read them through ``accounts()``.

Secrets are ``SecretStr``: they print as ``**********``, and ``redact`` scrubs
them from any message before it can reach a log, a response or the database.
"""

import logging
import os
from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderAccounts(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QKAN_", env_file=None, extra="ignore")

    ibm_token: SecretStr | None = Field(None, description="IBM Quantum API key; unset → the saved Qiskit account")
    ibm_channel: str = Field("ibm_quantum_platform", description="IBM Quantum channel")
    ibm_instance: str | None = Field(None, description="IBM Quantum instance (CRN or name)")
    braket_s3_bucket: str | None = Field(None, description="S3 bucket for Amazon Braket task results")
    braket_s3_prefix: str = Field("qkan", description="Key prefix inside that bucket")
    pack_max_readout_error: float = Field(0.03, description="pack=auto: largest read-out error of a qubit used")
    pack_max_sx_error: float = Field(1e-3, description="pack=auto: largest √X error of a qubit used")
    pack_min_t2_us: float = Field(50.0, description="pack=auto: shortest T2 (µs) of a qubit used")
    pack_max_width: int = Field(32, description="pack=auto: most template copies per circuit")
    backend_plugins: str = Field("", description="Comma-separated modules that register extra backends")

    def secrets(self) -> list[str]:
        """Every secret value that must never be shown, including the AWS keys boto3 reads."""
        values = [self.ibm_token.get_secret_value() if self.ibm_token else ""]
        values += [os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "QISKIT_IBM_TOKEN")]
        return [v for v in values if len(v) >= 6]


@lru_cache
def accounts() -> ProviderAccounts:
    return ProviderAccounts()


def redact(message: str) -> str:
    """``message`` with every configured secret replaced by ``***``."""
    for secret in accounts().secrets():
        message = message.replace(secret, "***")
    return message


class RedactSecrets(logging.Filter):
    """A logging filter that scrubs secrets from messages and tracebacks before any handler writes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not accounts().secrets():
            return True
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def redact_logs(*loggers: logging.Logger) -> None:
    """Put ``RedactSecrets`` on every handler of ``loggers`` (default: the root logger)."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
