"""Integration tests: the relay under real gunicorn, driven over the network."""
