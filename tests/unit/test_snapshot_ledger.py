"""The worker's ledger of snapshot bytes still queued for clients (webapp/streams.SnapshotLedger): only
clients with part of their snapshot queued are held, and each leaves once it has drained or closed."""

from __future__ import annotations

from webapp.streams import SnapshotLedger


class Client:
    def __init__(self, left: int) -> None:
        self.left = left
        self.closed = False

    def snapshot_left(self) -> int:
        return self.left


def test_clients_whose_snapshot_went_straight_out_are_not_held():
    ledger = SnapshotLedger(1000, 0)
    ledger.note(Client(0))
    ledger.note(Client(-5))  # the wire's position is past the snapshot's end
    assert ledger.queued() == 0 and not ledger._clients


def test_what_is_queued_is_summed_and_drained_or_closed_clients_leave():
    ledger = SnapshotLedger(1000, 0)
    a, b, c = Client(600), Client(300), Client(200)
    for client in (a, b, c):
        ledger.note(client)
    assert ledger.queued() == 1100
    assert ledger.wait_for_room(lambda: False) is False and ledger.refused == 1  # past it, no time to wait
    a.left = 0
    b.closed = True  # its backlog is dropped with it
    assert ledger.queued() == 200 and ledger._clients == {c}
    assert ledger.wait_for_room(lambda: False) is True


def test_the_ledger_is_pruned_as_it_grows_not_only_when_a_resume_asks():
    ledger = SnapshotLedger(1 << 30, 0)
    clients = [Client(10) for _ in range(1000)]
    for client in clients:
        ledger.note(client)
        client.closed = True  # each gone right after its snapshot: a crowd connecting and leaving
    assert len(ledger._clients) < 200
