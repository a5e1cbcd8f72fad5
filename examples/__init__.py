"""Runnable example workflows: mint, transfer and payout on an EVM chain, Bitcoin
payouts (``btc_payout``), an approval with a timeout, a 30-day subscription, and a
Starlette web service in front of the approval (``webservice``)."""
