"""The studio list's search and orderings, shared by the list page and the API so that both find and sort alike."""

import shlex

from django.db.models import F

SEARCH_KEYS = {
    "author": "author__username",
    "username": "author__username",
    "ce": "compute_environment__name",
    "computeenvname": "compute_environment__name",
    "status": "status",
}

# Each ordering the list offers: its name in URLs and the API, what the page calls it, and the columns. The last
# column is unique, so that pages neither repeat nor skip a studio.
ORDERINGS = {
    "newest": ("Newest first", (F("created").desc(), F("pk").desc())),
    "oldest": ("Oldest first", (F("created").asc(), F("pk").asc())),
    "name": ("Name", (F("name").asc(),)),
    "lastUsed": ("Last used", (F("last_activity").desc(nulls_last=True), F("created").desc(), F("pk").desc())),
}
DEFAULT_ORDERING = "newest"


class UnknownOrdering(ValueError):
    def __init__(self, name):
        super().__init__(f"Unknown ordering {name!r}; order by {', '.join(ORDERINGS)}.")


def search(studios, query):
    """Filter by name words and ``key:value`` terms (author:, ce:, status: and their newer spellings)."""
    try:
        terms = shlex.split(query)
    except ValueError:
        terms = query.split()
    for term in terms:
        key, sep, value = term.partition(":")
        if sep and key.lower() in SEARCH_KEYS:
            studios = studios.filter(**{SEARCH_KEYS[key.lower()]: value})
        else:
            studios = studios.filter(name__icontains=term)
    return studios


def ordered(studios, name):
    """``studios`` in the ordering ``name`` (empty: the default); UnknownOrdering for any other."""
    if name and name not in ORDERINGS:
        raise UnknownOrdering(name)
    return studios.order_by(*ORDERINGS[name or DEFAULT_ORDERING][1])
