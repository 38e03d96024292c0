"""Worker web views: an account's state as the owning worker holds it.

``/accounts/{account_id}/`` is routed with faust's table_route to the worker that
owns the account's partition, so any worker (or `paystream account show`) can ask.
"""

from __future__ import annotations

from typing import Any

from faust import web

from agents.rules import AccountState
from streams.app import accounts, app


def account_view(state: AccountState) -> dict[str, Any]:
    """A JSON-friendly view: balances and open holds (money stays in integer minor units)."""
    return {
        "account_id": state.account_id,
        "status": state.status,
        "home_currency": state.home_currency,
        "balances": {
            currency: {
                "available_minor": b.available_minor,
                "held_minor": b.held_minor,
                "total_minor": b.total_minor,
            }
            for currency, b in sorted(state.balances.items())
        },
        "holds": [
            {
                "payment_id": p.payment_id,
                "status": p.status,
                "amount_minor": p.amount_minor,
                "currency": p.currency,
                "held_minor": p.settled_amount_minor,
                "held_currency": p.settled_currency,
                "expires_at_ms": p.expires_at_ms,
            }
            for p in state.payments.values()
            if p.status in ("AUTHORIZED", "REVIEW")
        ],
        "payments": len(state.payments),
        "idempotency_keys": len(state.idempotency),
    }


@app.page("/accounts/{account_id}/")
@app.table_route(table=accounts, match_info="account_id")
async def get_account(view: web.View, request: web.Request, account_id: str) -> web.Response:
    raw = accounts.data.get(account_id.encode())
    if raw is None:
        return view.json({"account_id": account_id, "found": False}, status=404)
    body = account_view(AccountState.from_bytes(raw))
    body["found"] = True
    return view.json(body)


@app.page("/fraud/")
async def get_fraud(view: web.View, request: web.Request) -> web.Response:
    """This worker's fraud scoring: the champion, the shadow and how often they agree."""
    from agents.authorize import fraud_stage, model_watcher

    stage = fraud_stage
    shadow = stage.shadow_stats
    return view.json(
        {
            "champion": stage.champion.describe(),
            "shadow": stage.shadow.describe() if stage.shadow is not None else None,
            "shadow_stats": shadow.to_dict() if shadow is not None else None,
            "scored": stage.scored,
            "model_calls": stage.model_calls,
            "loaded": model_watcher.loaded,
            "refused": model_watcher.refused[-10:],
        }
    )
