"""`flask --app wsgi record URL FILE` and `flask --app wsgi replay FILE`: capture a live feed, serve it again."""

import time

import click
import gevent
import orjson
import websocket
from flask import Flask, current_app
from flask.cli import with_appcontext

from handlers.capture import CaptureError, capture_line, read_capture, replay_offsets_s
from webapp.feedserver import FeedServer


def register_commands(app: Flask) -> None:
    """Add `record` and `replay` to the app's `flask` command line."""
    app.cli.add_command(record)
    app.cli.add_command(replay)


def say(message: str) -> None:
    click.echo(message, err=True)


@click.command("record")
@click.argument("url")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, allow_dash=True))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: until the feed closes or Ctrl-C).")
@click.option("--frames", "max_frames", type=click.IntRange(min=1), default=None,
              help="Stop after this many frames.")
@with_appcontext
def record(url: str, file: str, duration: float | None, max_frames: int | None) -> None:
    """Capture the feed at URL to FILE as JSON lines, one frame per line with its receive time (ms).

    UPSTREAM_INIT is sent after connecting (Polygon: auth, then subscribe) and
    UPSTREAM_HEADERS go with the handshake, exactly as the relay does.
    """
    settings = current_app.extensions["relayhouse"].settings
    if not url.startswith(("ws://", "wss://")):
        raise click.BadParameter("must be a ws:// or wss:// URL", param_hint="URL")
    headers = [f"{k}: {v}" for k, v in settings.upstream_headers]
    try:
        ws = websocket.create_connection(url, header=headers, timeout=settings.upstream_connect_timeout_s,
                                         skip_utf8_validation=True)
    except (OSError, websocket.WebSocketException) as exc:
        raise click.ClickException(f"could not connect to {url}: {exc}") from None
    ws.settimeout(None)  # a quiet feed is not an error; --duration sets a deadline below
    for message in settings.upstream_init:
        ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())
    stop_at = time.monotonic() + duration if duration else None
    count = 0
    say(f"recording {url} to {file} (Ctrl-C to stop)")
    with click.open_file(file, "wb") as out:
        try:
            while max_frames is None or count < max_frames:
                if stop_at is not None:
                    remaining = stop_at - time.monotonic()
                    if remaining <= 0:
                        break
                    ws.settimeout(remaining)
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    break
                except websocket.WebSocketConnectionClosedException:
                    say("the feed closed the connection")
                    break
                recv_ms = int(time.time() * 1000)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    say("the feed closed the connection")
                    break
                if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    continue  # recv_data answers pings itself
                out.write(capture_line(data, opcode == websocket.ABNF.OPCODE_BINARY, recv_ms))
                out.flush()  # a killed recorder still leaves whole lines
                count += 1
        except KeyboardInterrupt:
            pass
        finally:
            ws.close()
    say(f"recorded {count} frames")


@click.command("replay")
@click.argument("file", type=click.File("rb"))
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Pace multiplier: 2 plays twice as fast as recorded.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to serve on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--loop", is_flag=True, help="Start over after the last frame, forever.")
@click.option("--honour-subscriptions", is_flag=True,
              help="Act as a Polygon upstream: answer auth, and send each peer only the topics it "
                   "subscribed to (for UPSTREAM_SUBSCRIBE=polygon).")
def replay(file, speed: float, port: int, host: str, loop: bool, honour_subscriptions: bool) -> None:
    """Serve a capture as an upstream WebSocket feed, at the recorded pace times --speed.

    Playing starts when the first peer (the relay) connects; every connected
    peer gets every frame. Without --loop the server stays up, silent, after
    the last frame, so the relay stays connected; Ctrl-C stops it.
    """
    try:
        frames = read_capture(file)
    except CaptureError as exc:
        raise click.ClickException(f"{file.name}: {exc}") from None
    if not frames:
        raise click.ClickException(f"{file.name}: no frames")
    offsets = replay_offsets_s(frames, speed)
    server = FeedServer(host=host, port=port, honour_subscriptions=honour_subscriptions)
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    say(f"serving {len(frames)} frames ({offsets[-1]:.1f} s at speed {speed:g}) "
        f"at ws://{host}:{server.port}/feed; waiting for a peer")
    try:
        while not server.peer_count:
            gevent.sleep(0.02)
        passes = 0
        while True:
            started = time.monotonic()
            for frame, offset in zip(frames, offsets, strict=True):
                wait_s = started + offset - time.monotonic()
                gevent.sleep(max(0.0, wait_s))  # sleep(0) too: the peers' writers need their turn
                server.broadcast(frame.payload if frame.binary else frame.text)
            passes += 1
            say(f"replayed {len(frames)} frames (pass {passes}) to {server.peer_count} peer(s)")
            if not loop:
                break
        while True:
            gevent.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
