"""The console's pages, one module per page (each with its `routes()`), and the customers'
tracking page."""

from __future__ import annotations

from starlette.routing import BaseRoute

from depot.web.pages import card, customer, exceptions, fleet, lockers, parcels, today


def routes() -> list[BaseRoute]:
    return [
        *today.routes(),
        *fleet.routes(),
        *customer.routes(),
        *card.routes(),
        *exceptions.routes(),
        *parcels.routes(),
        *lockers.routes(),
    ]
