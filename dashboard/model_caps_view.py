"""Per-model caps in the admin API: list, set (create or replace) and remove them
(/api/v1/model_budgets). The caps themselves are ledger/model_caps.py."""

from __future__ import annotations

from aiohttp import web

from dashboard.auth import ADMINS, READERS, allow
from dashboard.jsonio import json_response, read_body
from dashboard.render import admin_state, change
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
