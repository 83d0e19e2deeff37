"""Which caps apply to a developer, and which spend counter each cap is compared with.

A budget caps one developer (`developer`), a team's shared pool (`team`), each member of a
team on their own (`team_member`, compared with the member's own spend) or the organization
(`org`, scope id ''). The proxy's admission (ledger/policy.py), the dashboard's cap lists and
budget bars (dashboard/budgets.py, dashboard/live.py, dashboard/teams.py) and the forecasts
(ledger/reports.py) all follow the functions here.
"""

from __future__ import annotations

from collections.abc import Iterable

Counter = tuple[str, str]  # a spend counter: (developer | team | org, id)

# How a cap's scope is said wherever a cap is named: the proxy's refusal, the dashboard's
# lists, the forecast. `{}` is the developer's or team's name.
_SAID = {"developer": "developer {}", "team": "team {}", "team_member": "each member of {}",
         "org": "organization"}

# The kind of spend counter a budget of each scope is compared with.
COUNTER_OF = {"developer": "developer", "team": "team", "team_member": "developer",
              "org": "org"}


def describe(scope: str, name: str, *, capital: bool = False) -> str:
    """A cap's scope in words: 'developer Ada', 'team platform', 'each member of platform',
    'organization' (with `capital`, to start a line: 'Team platform')."""
    said = _SAID[scope].format(name)
    return said[:1].upper() + said[1:] if capital else said


def applies(scope: str, scope_id: str, developer_id: str, team_id: str) -> bool:
    """Whether a budget on (scope, scope_id) caps a developer of this team: their own cap,
    their team's pool and per-member cap, the organization's."""
    return (scope, scope_id) in {("developer", developer_id), ("team", team_id),
                                 ("team_member", team_id), ("org", "")}


def counter(scope: str, scope_id: str, developer_id: str) -> Counter:
    """The counter a cap that applies to `developer_id` is compared with: a per-member cap
    reads the developer's own spend, the others their scope's."""
    return (COUNTER_OF[scope], developer_id if scope == "team_member" else scope_id)


def counters(scope: str, scope_id: str, members: Iterable[str]) -> list[Counter]:
    """Every counter a cap is compared with, for all it applies to: one per member of the
    team for a per-member cap (the fullest is the one a list shows), else its scope's."""
    if scope == "team_member":
        return [counter(scope, scope_id, member) for member in members]
    return [(COUNTER_OF[scope], scope_id)]
