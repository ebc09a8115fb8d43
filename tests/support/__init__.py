"""Test support for the integration suite: a fake upstream feed, a gunicorn launcher, real clients.

Nothing here imports the relay's code: the suite talks to the relay only over
the network, the way its users do.
"""
