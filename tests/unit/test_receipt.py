"""What a POST /publish caller is told when the append does not answer in time: "never" only when it is true."""

import pytest

from webapp.bus.receipt import NoLeader, Receipt, Unconfirmed


def test_a_receipt_never_taken_is_withdrawn_and_says_not_published():
    receipt = Receipt(2)
    with pytest.raises(NoLeader) as caught:
        receipt.seqs(0.01)
    assert not isinstance(caught.value, Unconfirmed)
    assert receipt.withdrawn  # the publisher leaves it out from now on


def test_a_receipt_inside_an_unanswered_append_is_unconfirmed_not_withdrawn():
    receipt = Receipt(2)
    receipt.taken = True
    with pytest.raises(Unconfirmed, match="may still be published"):
        receipt.seqs(0.01)
    assert not receipt.withdrawn


def test_a_set_receipt_gives_consecutive_seqs():
    receipt = Receipt(3)
    receipt.set(41)
    assert receipt.seqs(0.01) == [41, 42, 43]
