"""The depot's web port: the JSON API (`depot.web.api`), the operators' console
(`depot.web.console`), the customers' pages, and who may see what (`depot.web.auth`)."""

from depot.web.server import DepotWeb, build_app

__all__ = ["DepotWeb", "build_app"]
