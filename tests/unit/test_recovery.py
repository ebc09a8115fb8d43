"""Where a starting leader continues: seq, epoch, the range lost in a crash, the reservation, the stream's part."""

from handlers.recovery import RecoveryPlan, plan_recovery

ALONE = {"floor_seq": 0, "floor_epoch": None, "clustered": False, "block": 100, "current_epoch": "NEW"}


def test_nothing_anywhere_starts_a_fresh_seq_space():
    plan = plan_recovery(store_max=0, spool_max=0, reserved=0, stored_epoch=None, local_epoch=None, **ALONE)
    assert plan == RecoveryPlan(last_seq=0, epoch=None, lost=None, reserve_to=100, unwritten_after=0)


def test_a_clean_restart_continues_exactly_after_the_store():
    plan = plan_recovery(store_max=500, spool_max=0, reserved=500, stored_epoch="E1", local_epoch="E1", **ALONE)
    assert (plan.last_seq, plan.epoch, plan.lost, plan.reserve_to) == (500, "E1", None, 600)


def test_after_a_crash_the_reserved_but_unpersisted_seqs_are_lost_never_reused():
    plan = plan_recovery(store_max=480, spool_max=490, reserved=600, stored_epoch="E1", local_epoch="E1", **ALONE)
    assert (plan.last_seq, plan.lost, plan.reserve_to) == (600, (491, 600), 700)


def test_an_unreachable_store_continues_from_local_state_without_claiming_a_loss():
    plan = plan_recovery(store_max=None, spool_max=40, reserved=100, stored_epoch=None, local_epoch="E1", **ALONE)
    assert (plan.last_seq, plan.epoch, plan.lost, plan.unwritten_after) == (100, "E1", None, None)


def test_a_new_cluster_leader_continues_after_the_stream_and_writes_what_the_store_lacks():
    plan = plan_recovery(store_max=70, spool_max=0, reserved=0, floor_seq=90, floor_epoch="S", stored_epoch="OLD",
                         local_epoch=None, current_epoch="NEW", clustered=True, block=100)
    assert plan == RecoveryPlan(last_seq=90, epoch="S", lost=None, reserve_to=None, unwritten_after=70)
