"""Finding parcels for a person: the console's one search box over the parcel book's rows.

Read-only questions on `parcels` (owned by `depot.store.book`, which writes it); kept here so
the book's module stays the projection's, and the console's search is one function a bench
can time. A search matches, case-insensitively and anywhere in the text, the parcel id, the
recipient's name, the merchant and the address. There is no postcode column: an import has no
postcode field (`depot.imports`), so the postcode is inside the free-text address ("Damrak 1,
1012 LG Amsterdam"); the address is therefore also compared with its spaces taken out, so
"1012LG" and "1012 lg" both find that parcel.

The columns have no text index (a LIKE with a leading wildcard could not use one anyway): a
search reads the parcels table once, which at 10,000 parcels is a few milliseconds on either
database. What keeps a page small is the limit: a page of at most `MAX_PAGE` rows, and a count.

Must never: write, or put the searched text into SQL other than as a parameter.
"""

from __future__ import annotations

from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

MAX_PAGE = 100
MAX_QUERY = 80  # longer than any id, name or postcode a person types
_COLUMNS = (
    "id, state, attempts, van, stop, locker, compartment, next_action, merchant, recipient, "
    "address, updated_ns"
)


def _pattern(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, its own % _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(query: str, state: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    text = query.strip().lower()[:MAX_QUERY]
    if text:
        like = _pattern(text)
        squeezed = _pattern(text.replace(" ", ""))
        clauses.append(
            "(lower(id) LIKE ? ESCAPE '\\' OR lower(recipient) LIKE ? ESCAPE '\\' "
            "OR lower(merchant) LIKE ? ESCAPE '\\' OR lower(address) LIKE ? ESCAPE '\\' "
            "OR replace(lower(address), ' ', '') LIKE ? ESCAPE '\\')"
        )
        params += [like, like, like, like, squeezed]
    if state:
        clauses.append("state = ?")
        params.append(state)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def find_parcels(
    conn: Conn, query: str, *, state: str | None = None, limit: int = MAX_PAGE, offset: int = 0
) -> tuple[int, list[Row]]:
    """(how many parcels match, one page of them): rows of (id, state, attempts, van, stop,
    locker, compartment, next_action, merchant, recipient, address, updated_ns), the most
    recently changed first. An empty query lists every parcel (in `state`, if given)."""
    where, params = _where(query, state)
    total = int(conn.execute("SELECT count(*) FROM parcels" + where, params).fetchone()[0])
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM parcels{where} ORDER BY updated_ns DESC, id LIMIT ? OFFSET ?",
        [*params, max(1, min(limit, MAX_PAGE)), max(0, offset)],
    ).fetchall()
    return total, rows
