"""``paystream submit`` and ``paystream account show``: the producer client from a shell."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

from agents.rules.money import MoneyError, format_money, to_minor
from streams.errors import CommandError
from streams.settings import Settings

KINDS = ("TOPUP", "PAYMENT", "AUTHORIZE", "CAPTURE", "VOID", "REFUND", "PAYOUT")
HTTP_TIMEOUT_S = 10.0


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from streams.client import PaymentClient

    currency = args.currency.upper()
    try:
        amount_minor = to_minor(args.amount, currency)
    except MoneyError as exc:
        raise CommandError(f"--amount {args.amount} --currency {currency}: {exc}") from exc
    with PaymentClient(settings) as client:
        request_id = client.submit(
            args.kind,
            args.payer,
            amount_minor,
            currency,
            counterparty_id=args.payee,
            payment_id=args.payment_id,
            idempotency_key=args.idempotency_key,
        )
        client.flush()
        decision = client.await_decision(request_id, timeout_s=args.timeout)
    print(json.dumps(decision, indent=2, sort_keys=True))
    return 0 if decision["status"] != "DECLINED" else 3


def _cmd_account_show(args: argparse.Namespace, settings: Settings) -> int:
    url = f"{args.worker or f'http://127.0.0.1:{settings.web_port}'}/accounts/{args.account}/"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise CommandError(f"account {args.account} not found on any worker") from exc
        raise CommandError(f"{url}: HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        raise CommandError(
            f"cannot reach a worker at {url}: {exc.reason}; is one running?"
        ) from exc
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    print(f"account {body['account_id']} ({body['status']}, home {body['home_currency']})")
    for currency, balance in body["balances"].items():
        print(
            f"  {currency}: available {format_money(balance['available_minor'], currency)}"
            f"  held {format_money(balance['held_minor'], currency)}"
        )
    for hold in body["holds"]:
        print(
            f"  hold {hold['payment_id']} {format_money(hold['held_minor'], hold['held_currency'])}"
            f" {hold['status']} until {hold['expires_at_ms']}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = subparsers.add_parser(
        "submit", help="submit one payment request and print its decision"
    )
    submit.add_argument("--kind", required=True, choices=KINDS)
    submit.add_argument("--payer", required=True, help="the account the request is keyed by")
    submit.add_argument(
        "--payee", help="payee (PAYMENT/AUTHORIZE) or external account (TOPUP/PAYOUT)"
    )
    submit.add_argument("--amount", required=True, help="major units, e.g. 12.34")
    submit.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    submit.add_argument("--payment-id", help="original payment for CAPTURE, VOID, REFUND")
    submit.add_argument("--idempotency-key")
    submit.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the decision"
    )
    submit.set_defaults(func=_cmd_submit)

    account = subparsers.add_parser("account", help="account state as the workers hold it")
    sub = account.add_subparsers(dest="account_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser("show", help="balances and holds of one account")
    show.add_argument("account")
    show.add_argument("--worker", help="base URL of any worker (default: this host's web port)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_account_show)
