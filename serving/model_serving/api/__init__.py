"""The HTTP surface: the ASGI app (app), request and response documents (payloads), and the
service layer (service) that maps tickers to loaded models, readiness and reloads.
Imports loading and engines; nothing imports it except __main__.
"""
