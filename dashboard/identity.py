"""Who is asking: the role every route is checked against, and the name changes are audited as.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every role a route can name. `developer` is a developer signed in with a gateway key or
# through the identity provider; `team_lead` administers one team (its `team_id`) only.
ROLES = ("anonymous", "developer", "team_lead", "finance", "admin")


@dataclass(frozen=True)
class Identity:
    role: str
    name: str = ""  # account name, developer name or email, or admin API key label
    actor: str = ""  # as written to admin_audit
    developer_id: str = ""  # developer sessions only
    team_id: str = ""  # a developer's team; the team a team lead administers
    key_id: str = ""  # the gateway key (developer) or admin API key used

    @property
    def can_change(self) -> bool:
        return self.role == "admin"

    def manages(self, team_id: str | None) -> bool:
        """May change the caps and keys of this team's members: an admin, or its lead."""
        return self.role == "admin" or (self.role == "team_lead" and bool(team_id)
                                         and team_id == self.team_id)

    def reads(self, team_id: str | None) -> bool:
        """May read this team's pages and reports: staff, or its lead."""
        return self.role in ("admin", "finance") or self.manages(team_id)


ANONYMOUS = Identity("anonymous")
