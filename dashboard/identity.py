"""Who is asking: the role every route is checked against, and the name changes are audited as.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every role a route can name. `developer` is a developer signed in with a gateway key.
ROLES = ("anonymous", "developer", "finance", "admin")


@dataclass(frozen=True)
class Identity:
    role: str
    name: str = ""  # account name, developer name, or admin API key label
    actor: str = ""  # as written to admin_audit
    developer_id: str = ""  # developer sessions only
    team_id: str = ""
    key_id: str = ""  # the gateway key (developer) or admin API key used

    @property
    def can_change(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Identity("anonymous")
