"""The trust rule of dirty-bitmap incremental backups (`binome.backup.incremental.decide`)."""

from __future__ import annotations

from binome.backup.incremental import (
    STOPPED,
    BitmapRecord,
    LiveBitmap,
    LiveDrive,
    PreviousBackup,
    Restored,
    decide,
)

BITMAP = "binome-backup-aaaa"
RECORD = BitmapRecord(node="n1", instance="boot:123:456", bitmap=BITMAP,
                      volumes={"virtio0": "local:100/vm-100-disk-0.qcow2",
                               "virtio1": "local:100/vm-100-disk-1.raw"})
PREVIOUS = PreviousBackup("vzdump-qemu-100-2026_12_06-10_00_00.binome", 1_000, RECORD)


def drives(*bitmaps: LiveBitmap, second: tuple[LiveBitmap, ...] | None = None
           ) -> list[LiveDrive]:
    return [LiveDrive("virtio0", "local:100/vm-100-disk-0.qcow2", bitmaps),
            LiveDrive("virtio1", "local:100/vm-100-disk-1.raw",
                      bitmaps if second is None else second)]


def test_same_node_same_qemu_same_bitmap_is_trusted() -> None:
    decision = decide(PREVIOUS, node="n1", instance="boot:123:456",
                      drives=drives(LiveBitmap(BITMAP)))
    assert decision.reason is None and decision.drive_reasons == {}
    assert decision.trusted("virtio0") and decision.trusted("virtio1")
    assert decision.recorded_bitmap == BITMAP


def test_guest_wide_reasons_in_order() -> None:
    live = drives(LiveBitmap(BITMAP))
    assert decide(None, node="n1", instance="i", drives=live, storage="bk").reason == \
        "no previous backup on storage 'bk'"
    stopped = PreviousBackup(PREVIOUS.name, 1_000, None)
    assert "has no dirty bitmap" in str(decide(stopped, node="n1", instance="i",
                                               drives=live).reason)
    failed = PreviousBackup(PREVIOUS.name, 1_000, RECORD, verify_failed=True)
    assert decide(failed, node="n1", instance=RECORD.instance, drives=live).reason == \
        f"previous backup {PREVIOUS.name} failed verification"
    restored = Restored("bk:backup/vzdump-qemu-100-x.binome", 1_500.0)
    assert decide(PREVIOUS, node="n1", instance=RECORD.instance, drives=live,
                  restored=restored).reason == \
        "guest restored from bk:backup/vzdump-qemu-100-x.binome since the previous backup"
    # a restore older than the previous backup is already covered by it
    old = Restored("bk:backup/x", 500.0)
    assert decide(PREVIOUS, node="n1", instance=RECORD.instance, drives=live,
                  restored=old).reason is None
    moved = decide(PREVIOUS, node="n2", instance="other", drives=live)
    assert moved.reason == "guest moved from n1 to n2"
    assert not moved.trusted("virtio0")
    assert decide(PREVIOUS, node="n1", instance="boot:999:1", drives=live).reason == \
        "QEMU restarted since the previous backup"


def test_drive_reasons() -> None:
    ok = LiveBitmap(BITMAP)
    cases = [
        (drives(ok, second=()), "bitmap missing on virtio1"),
        (drives(ok, second=(LiveBitmap("binome-backup-later"),)),
         "belongs to a later backup"),
        (drives(ok, second=(LiveBitmap(BITMAP, inconsistent=True),)),
         "bitmap inconsistent on virtio1"),
        (drives(ok, second=(LiveBitmap(BITMAP, busy=True),)), "bitmap busy on virtio1"),
        (drives(ok, second=(LiveBitmap(BITMAP, recording=False),)),
         "left disabled by an interrupted backup"),
    ]
    for live, expected in cases:
        decision = decide(PREVIOUS, node="n1", instance=RECORD.instance, drives=live)
        assert decision.reason is None
        assert decision.trusted("virtio0"), expected
        assert expected in decision.drive_reasons["virtio1"], decision.drive_reasons
        assert decision.why_full("virtio1") == decision.drive_reasons["virtio1"]
    # someone else's bitmaps are ignored; ours still counts
    live = drives(LiveBitmap("other-tool"), LiveBitmap(BITMAP))
    assert decide(PREVIOUS, node="n1", instance=RECORD.instance, drives=live).drive_reasons \
        == {}


def test_volume_changes_and_new_disks() -> None:
    live = [LiveDrive("virtio0", "local:100/vm-100-disk-2.qcow2", (LiveBitmap(BITMAP),)),
            LiveDrive("scsi0", "local:100/vm-100-disk-3.qcow2", (LiveBitmap(BITMAP),))]
    decision = decide(PREVIOUS, node="n1", instance=RECORD.instance, drives=live)
    assert "another volume" in decision.drive_reasons["virtio0"]
    assert decision.drive_reasons["scsi0"] == "scsi0 is not in the previous backup"


def test_record_round_trip_and_garbage() -> None:
    again = BitmapRecord.from_json(RECORD.to_json())
    assert again == RECORD
    chained = BitmapRecord("n1", "i", BITMAP, {}, previous=PREVIOUS.name)
    assert BitmapRecord.from_json(chained.to_json()) == chained
    for bad in (b"", b"[]", b"{}", b'{"node": "n1"}', b"\xff"):
        assert BitmapRecord.from_json(bad) is None
    assert LiveBitmap.from_qmp({"name": BITMAP, "recording": True, "busy": False,
                                "granularity": 65536, "count": 0}) == LiveBitmap(BITMAP)
    assert LiveBitmap.from_qmp({"name": "x", "recording": False, "inconsistent": True}) == \
        LiveBitmap("x", recording=False, inconsistent=True)


def test_a_stopped_guest_trusts_the_bitmaps_stored_in_its_images() -> None:
    """No QEMU runs: the bitmap in the image (recording, not `in-use`) is the evidence,
    whichever QEMU process recorded it; the guest-wide rules still apply."""
    image = LiveBitmap.from_image({"name": BITMAP, "flags": ["auto"],
                                   "granularity": 4 << 20})
    assert image == LiveBitmap(BITMAP)
    live = drives(image, second=())
    decision = decide(PREVIOUS, node="n1", instance=STOPPED, drives=live)
    assert decision.reason is None and decision.trusted("virtio0")
    assert decision.drive_reasons == {"virtio1": "bitmap missing on virtio1"}
    # a QEMU that died with the image open leaves the bitmap `in-use`
    crashed = LiveBitmap.from_image({"name": BITMAP, "flags": ["in-use", "auto"]})
    assert decide(PREVIOUS, node="n1", instance=STOPPED, drives=drives(crashed)
                  ).drive_reasons["virtio0"] == "bitmap inconsistent on virtio0"
    disabled = LiveBitmap.from_image({"name": BITMAP, "flags": []})
    assert "left disabled" in decide(PREVIOUS, node="n1", instance=STOPPED,
                                     drives=drives(disabled)).drive_reasons["virtio0"]
    assert decide(PREVIOUS, node="n2", instance=STOPPED, drives=live).reason == \
        "guest moved from n1 to n2"
    # a stopped backup's record never vouches for a running QEMU's bitmap
    stopped_record = BitmapRecord(node="n1", instance=STOPPED, bitmap=BITMAP,
                                  volumes=RECORD.volumes)
    after_stop = PreviousBackup(PREVIOUS.name, 1_000, stopped_record)
    assert decide(after_stop, node="n1", instance="boot:123:456",
                  drives=drives(LiveBitmap(BITMAP))).reason == \
        "QEMU restarted since the previous backup"
