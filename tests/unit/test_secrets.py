"""URLs as /health and the log show them: credentials masked, the rest as given."""

import pytest

from handlers.secrets import shown_url


@pytest.mark.parametrize("given, shown", [
    ("ws://user:hunter2@127.0.0.1:18299/feed?apiKey=SEKRET", "ws://***@127.0.0.1:18299/feed?apiKey=***"),
    ("ws://TOKEN@host/", "ws://***@host/"),  # a key as the user name
    ("wss://socket.polygon.io/stocks", "wss://socket.polygon.io/stocks"),
    ("ws://h:1880/ws/projection_bpp?format=json&token=abc&x", "ws://h:1880/ws/projection_bpp?format=json&token=***&x"),
    ("ws://h/?access_token=a&api_key=b&SECRET=c&passwd=d&sig=e&jwt=f", "ws://h/?access_token=***&api_key=***&SECRET=***&passwd=***&sig=***&jwt=***"),
    ("ws://h/?api%4Bey=1", "ws://h/?api%4Bey=***"),  # the name as the server reads it
    ("ws://[::1]:9/x#frag", "ws://[::1]:9/x"),
    ("ws://h:99999/", "***"),  # does not parse: nothing of it
])
def test_credentials_in_a_url_are_masked_and_the_rest_kept(given, shown):
    assert shown_url(given) == shown
