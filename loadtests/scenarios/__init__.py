"""Locust scenarios for onhand (issue #5): users, the flash-sale shape, the run's catalog.

``catalog`` builds the run's catalog over the HTTP API and has no locust import (it can
be used anywhere); ``users`` and ``shape`` import locust, which monkey-patches the
process with gevent: import them only in a locust process (``loadtests/locustfile.py``).
"""
