"""Per-model caps in the admin API: list, set (create or replace) and remove them
(/api/v1/model_budgets); and their forms on the developer, team and organization pages, with
the running grants of the same scope (templates/_model_caps.html). The caps themselves are
ledger/model_caps.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.render import admin_state, change, field, form, redirect_back, see_other, url
from ledger import grants
from ledger.model_caps import ModelCaps
from ledger.money import parse_usd


@allow(*READERS)
async def list_model_budgets(request: web.Request) -> web.Response:
    state = admin_state(request)
    return json_response({"data": await state.db(ModelCaps(state.catalog).all)})


@allow(*ADMINS)
async def set_model_budget(request: web.Request) -> web.Response:
    """{scope, target, period, models: ["opus"], amount_usd | amount_micros, mode}."""
    state, body = admin_state(request), await read_body(request)
    amount = body.whole("amount_micros") if not body.absent("amount_micros") else \
        parse_usd(body.figure("amount_usd"))
    row = await change(request, ModelCaps(state.catalog).set, body.text("scope"),
                       body.text("target", ""), body.text("period", "monthly"),
                       body.texts("models"), amount, body.text("mode", "estimate"))
    return json_response(row, 201)


@allow(*ADMINS)
async def delete_model_budget(request: web.Request) -> web.Response:
    state = admin_state(request)
    await change(request, ModelCaps(state.catalog).delete, request.match_info["budget_id"])
    return json_response({"deleted": request.match_info["budget_id"]})


# -- the forms on the developer, team and teams (organization) pages -----------------------


async def limits_context(request: web.Request, scopes: list[tuple[str, str]]) -> dict[str, Any]:
    """The per-model caps and running grants of these (scope, scope_id) pairs, for
    templates/_model_caps.html."""
    state = admin_state(request)
    wanted = set(scopes)
    model_caps = [c for c in await state.db(ModelCaps(state.catalog).all)
                  if (c["scope"], c["scope_id"]) in wanted]
    running = [g for g in await state.db(grants.active, state.catalog, datetime.now(UTC))
               if (g["scope"], g["scope_id"]) in wanted]
    return {"model_caps": model_caps, "running_grants": running}


async def _set_from_form(request: web.Request, scope: str, ref: str) -> None:
    data = await form(request)
    models = [m for m in re.split(r"[\s,]+", field(data, "models", limit=1000)) if m]
    try:
        amount = parse_usd(field(data, "amount", limit=20))
    except ValueError:
        raise ValueError("the amount is in dollars, e.g. 50 or 12.50") from None
    await change(request, ModelCaps(admin_state(request).catalog).set, scope, ref,
                 field(data, "period", "monthly"), models, amount,
                 field(data, "mode", "estimate"))


@allow(*ADMINS)
async def set_developer_model_cap(request: web.Request) -> web.StreamResponse:
    developer_id = request.match_info["developer_id"]
    await _set_from_form(request, "developer", developer_id)
    return see_other(request, url(request, "developer", developer_id=developer_id)
                     .with_fragment("model-caps"), "Model cap saved.")


@allow(*ADMINS)
async def set_team_model_cap(request: web.Request) -> web.StreamResponse:
    """The team's pool on some models, or each member's (scope team_member)."""
    team_id = request.match_info["team_id"]
    scope = (await form(request)).get("scope")
    await _set_from_form(request, "team_member" if scope == "team_member" else "team",
                         team_id)
    return see_other(request, url(request, "team", team_id=team_id)
                     .with_fragment("model-caps"), "Model cap saved.")


@allow(*ADMINS)
async def set_org_model_cap(request: web.Request) -> web.StreamResponse:
    await _set_from_form(request, "org", "")
    return see_other(request, url(request, "teams").with_fragment("model-caps"),
                     "Model cap saved.")


@allow(*ADMINS)
async def delete_model_cap(request: web.Request) -> web.StreamResponse:
    await change(request, ModelCaps(admin_state(request).catalog).delete,
                 request.match_info["budget_id"])
    return redirect_back(request, "Model cap removed.", "ok")
