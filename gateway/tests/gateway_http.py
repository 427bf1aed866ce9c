"""What every Python test script asks the gateway directly (not through an SDK): a GET
of its JSON API with a bearer token, and a `usage.cost` number as an exact decimal. The
gateway's address comes from SOLROUTER_BASE_URL, as the tests start every script."""

import json
import os
import urllib.request
from decimal import Decimal

BASE = os.environ["SOLROUTER_BASE_URL"]


def get(path, bearer):
    request = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + bearer})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def usd(cost):
    """A usage.cost number as an exact decimal (costs here have at most 12 decimals)."""
    return Decimal(repr(cost)).quantize(Decimal("1e-12"))
