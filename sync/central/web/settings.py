"""The console's ``[web]`` config section and what the app is built with.

::

    [web]
    host = "127.0.0.1"            # loopback unless configured
    port = 8080
    tls_cert_file = "tls/web.pem" # both or neither: HTTPS directly (relative paths are under the data dir)
    tls_key_file = "tls/web.key"
    proxy_headers = false         # behind a reverse proxy: trust its X-Forwarded-For/-Proto
    trusted_proxies = ["127.0.0.1"]
    secure_cookies = false        # the proxy speaks HTTPS to browsers (set automatically with tls_*)
    idle_timeout_s = 1800         # a session unused this long ends
    login_max_failures = 5        # per user name within login_window_s: further tries refused
    login_address_max_failures = 20  # per client address within login_window_s
    login_window_s = 900
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.schema import Invalid, Problem, Schema


class WebSection(Schema):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    proxy_headers: bool = False
    trusted_proxies: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=lambda: ["127.0.0.1"],
                                                                        max_length=100)
    secure_cookies: bool = False
    idle_timeout_s: Annotated[int, Field(ge=60, le=7 * 86400)] = 1800
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    login_address_max_failures: Annotated[int, Field(ge=1, le=100_000)] = 20
    login_window_s: Annotated[int, Field(ge=1, le=86400)] = 900

    @model_validator(mode="after")
    def _tls_pair(self) -> WebSection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise Invalid([Problem((missing,), None, "is needed with the other tls_ file: give both for HTTPS, "
                                                     "or neither (plain HTTP on loopback or behind a proxy)")])
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def tls_files(self, data_dir: Path) -> tuple[Path, Path] | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return tuple(p if p.is_absolute() else Path(data_dir) / p  # type: ignore[return-value]
                     for p in (Path(self.tls_cert_file), Path(self.tls_key_file)))


@dataclass
class Settings:
    """What :func:`~linetap.sync.central.web.app.make_app` needs: the store's folder, its config, a clock.

    ``stored`` (index and object store) is opened by the app when not given; tests may pass their own.
    """

    data_dir: Path
    config: Any  # CentralConfig
    clock: Clock = SystemClock()  # noqa: RUF009 (stateless)
    stored: Any = None

    @property
    def web(self) -> WebSection:
        return self.config.web
