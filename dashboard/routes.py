"""Every route of the admin app, in two tables. Who may use each is declared on its handler
(`@allow`); tests/test_dashboard_routes.py walks these tables with every role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from dashboard import (
    access,
    activity,
    api,
    api_managed,
    api_models,
    api_reports,
    budgets,
    developers,
    managed,
    me,
    overview,
    reports_view,
    rollout,
    signin,
    spend_limits,
    system,
    teams,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler, str]  # method, path, handler, name

PAGE_ROUTES: tuple[Route, ...] = (
    ("GET", "/", overview.overview, "overview"),
    ("GET", "/signin", signin.signin_page, "signin"),
    ("POST", "/signin", signin.signin, "signin_account"),
    ("POST", "/signin/key", signin.signin_key, "signin_key"),
    ("POST", "/signout", signin.signout, "signout"),
    ("GET", "/me", me.me, "me"),
    ("GET", "/teams", teams.teams, "teams"),
    ("POST", "/teams", teams.create_team, "create_team"),
    ("GET", "/teams/{team_id}", teams.team, "team"),
    ("POST", "/teams/{team_id}/budget", teams.set_team_budget, "set_team_budget"),
    ("POST", "/teams/{team_id}/limits", teams.set_team_limits, "set_team_limits"),
    ("POST", "/teams/{team_id}/models", teams.set_team_models, "set_team_models"),
    ("POST", "/teams/{team_id}/models/clear", teams.clear_team_models, "clear_team_models"),
    ("POST", "/org/budget", budgets.set_org_budget, "set_org_budget"),
    ("POST", "/org/models", teams.set_org_models, "set_org_models"),
    ("POST", "/org/models/clear", teams.clear_org_models, "clear_org_models"),
    ("POST", "/budgets/{budget_id}/delete", budgets.delete_budget, "delete_budget"),
    ("GET", "/developers", developers.developers, "developers"),
    ("POST", "/developers", developers.create_developer, "create_developer"),
    ("GET", "/developers/{developer_id}", developers.developer, "developer"),
    ("POST", "/developers/{developer_id}/keys", developers.issue_key, "issue_key"),
    ("POST", "/developers/{developer_id}/budget", developers.set_developer_budget,
     "set_developer_budget"),
    ("POST", "/developers/{developer_id}/limits", developers.set_developer_limits,
     "set_developer_limits"),
    ("POST", "/keys/{key_id}/revoke", developers.revoke_key, "revoke_key"),
    ("POST", "/keys/{key_id}/expire", developers.expire_key, "expire_key"),
    ("GET", "/requests", activity.requests_log, "requests"),
    ("GET", "/reports", reports_view.reports_page, "reports"),
    ("GET", "/reports.csv", reports_view.reports_csv, "reports_csv"),
    ("GET", "/reports.parquet", reports_view.reports_parquet, "reports_parquet"),
    ("GET", "/rollout", rollout.rollout, "rollout"),
    ("GET", "/rollout/managed-settings.json", rollout.managed_settings_file,
     "managed_settings"),
    ("GET", "/managed", managed.managed_page, "managed"),
    ("GET", "/managed/{scope}", managed.edit_managed, "managed_edit"),
    ("POST", "/managed/{scope}/preview", managed.preview_managed, "managed_preview"),
    ("POST", "/managed/{scope}", managed.save_managed, "managed_save"),
    ("POST", "/managed/{scope}/delete", managed.delete_managed, "managed_delete"),
    ("GET", "/settings", system.settings_page, "settings"),
    ("POST", "/settings/reload-providers", system.reload_providers, "reload_providers"),
    ("GET", "/audit", activity.audit, "audit"),
    ("GET", "/access", access.access, "access"),
    ("POST", "/access/users", access.create_user, "create_user"),
    ("POST", "/access/users/{name}/password", access.reset_password, "reset_password"),
    ("POST", "/access/users/{name}/disabled", access.set_user_disabled, "set_user_disabled"),
    ("POST", "/access/keys", access.create_admin_key, "create_admin_key"),
    ("POST", "/access/keys/{key_id}/revoke", access.revoke_admin_key, "revoke_admin_key"),
)

_V1 = "/api/v1"
API_ROUTES: tuple[Route, ...] = (
    ("GET", f"{_V1}/teams", api.list_teams, "api.teams"),
    ("POST", f"{_V1}/teams", api.create_team, "api.create_team"),
    ("GET", f"{_V1}/developers", api.list_developers, "api.developers"),
    ("POST", f"{_V1}/developers", api.create_developer, "api.create_developer"),
    ("GET", f"{_V1}/keys", api.list_keys, "api.keys"),
    ("POST", f"{_V1}/keys", api.issue_key, "api.issue_key"),
    ("POST", f"{_V1}/keys/{{key_id}}/revoke", api.revoke_key, "api.revoke_key"),
    ("POST", f"{_V1}/keys/{{key_id}}/expire", api.expire_key, "api.expire_key"),
    ("GET", f"{_V1}/budgets", api.list_budgets, "api.budgets"),
    ("POST", f"{_V1}/budgets", api.set_budget, "api.set_budget"),
    ("DELETE", f"{_V1}/budgets/{{budget_id}}", api.delete_budget, "api.delete_budget"),
    ("GET", f"{_V1}/rate_limits", api.list_limits, "api.rate_limits"),
    ("PUT", f"{_V1}/rate_limits", api.set_limits, "api.set_limits"),
    ("GET", f"{_V1}/audit", api.list_audit, "api.audit"),
    ("GET", f"{_V1}/users", api.list_users, "api.users"),
    ("POST", f"{_V1}/users", api.create_user, "api.create_user"),
    ("POST", f"{_V1}/users/{{name}}/password", api.set_password, "api.set_password"),
    ("POST", f"{_V1}/users/{{name}}/disable", api.disable_user, "api.disable_user"),
    ("POST", f"{_V1}/users/{{name}}/enable", api.enable_user, "api.enable_user"),
    ("GET", f"{_V1}/admin_keys", api.list_admin_keys, "api.admin_keys"),
    ("POST", f"{_V1}/admin_keys", api.issue_admin_key, "api.issue_admin_key"),
    ("POST", f"{_V1}/admin_keys/{{key_id}}/revoke", api.revoke_admin_key,
     "api.revoke_admin_key"),
    ("GET", f"{_V1}/usage", api_reports.usage, "api.usage"),
    ("GET", f"{_V1}/usage/totals", api_reports.usage_totals, "api.usage_totals"),
    ("GET", f"{_V1}/usage/top", api_reports.top, "api.usage_top"),
    ("GET", f"{_V1}/usage/cache", api_reports.cache, "api.usage_cache"),
    ("GET", f"{_V1}/usage/forecast", api_reports.forecast, "api.usage_forecast"),
    ("GET", f"{_V1}/requests", api_reports.requests_log, "api.requests"),
    ("GET", f"{_V1}/requests.parquet", api_reports.requests_parquet, "api.requests_parquet"),
    ("GET", f"{_V1}/managed_settings", api_managed.list_managed, "api.managed_settings"),
    ("GET", f"{_V1}/managed_settings/{{scope}}", api_managed.get_managed,
     "api.managed_setting"),
    ("PUT", f"{_V1}/managed_settings/{{scope}}", api_managed.put_managed,
     "api.put_managed_setting"),
    ("DELETE", f"{_V1}/managed_settings/{{scope}}", api_managed.delete_managed,
     "api.delete_managed_setting"),
    ("POST", f"{_V1}/managed_settings/{{scope}}/preview", api_managed.preview_managed,
     "api.preview_managed_setting"),
    ("GET", f"{_V1}/allowed_models", api_models.list_allowed_models, "api.allowed_models"),
    ("PUT", f"{_V1}/allowed_models/{{scope}}", api_models.put_allowed_models,
     "api.put_allowed_models"),
    ("DELETE", f"{_V1}/allowed_models/{{scope}}", api_models.delete_allowed_models,
     "api.delete_allowed_models"),
    ("GET", f"{_V1}/organizations/spend_limits", spend_limits.list_spend_limits,
     "api.spend_limits"),
    ("POST", f"{_V1}/organizations/spend_limits", spend_limits.set_spend_limit,
     "api.set_spend_limit"),
    ("GET", f"{_V1}/organizations/spend_limits/{{spend_limit_id}}",
     spend_limits.get_spend_limit, "api.spend_limit"),
    ("DELETE", f"{_V1}/organizations/spend_limits/{{spend_limit_id}}",
     spend_limits.delete_spend_limit, "api.delete_spend_limit"),
)


def add_routes(app: web.Application, routes: tuple[Route, ...]) -> None:
    for method, path, handler, name in routes:
        if method == "GET":
            app.router.add_get(path, handler, name=name)  # answers HEAD too
        else:
            app.router.add_route(method, path, handler, name=name)
