"""Stripe: the only package of the service that imports `stripe`.

`client` holds the `PaymentProvider` implementation on one `StripeClient`; `webhook`
verifies and reads Stripe's event deliveries; `limits` says what Stripe will charge;
`sandbox` is a Stripe-compatible server for tests, benchmarks and `make run`.
"""
